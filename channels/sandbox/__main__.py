"""python -m channels.sandbox --host 127.0.0.1 --port 8091 --seed N [knob flags]

Runs the Alipay sandbox on uvloop until SIGINT/SIGTERM. Prints one line
``sandbox listening on http://HOST:PORT`` once it accepts connections.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from channels.sandbox.alipay import SandboxConfig, create_sandbox_app
from channels.sandbox.knobs import Knobs


def _ms_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    d = Knobs()
    p = argparse.ArgumentParser(prog="python -m channels.sandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--app-id", default=SandboxConfig.app_id)
    p.add_argument("--app-public-key", type=Path, default=SandboxConfig.app_public_key_path)
    p.add_argument("--platform-private-key", type=Path,
                   default=SandboxConfig.platform_private_key_path)
    for name in ("latency_ms", "hang_ms", "notify_delay_ms", "payer_confirm_ms"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("hang_rate", "commit_then_drop_rate", "error_rate", "notify_drop_rate",
                 "notify_duplicate_rate"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--naive-charge", action="store_true")
    p.add_argument("--notify-retry-ms", type=_ms_list, default=list(d.notify_retry_ms),
                   help="comma-separated delays, e.g. 1000,2000,4000")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    knob_names = [n for n in Knobs.__dataclass_fields__]
    knobs = Knobs().replace({n: getattr(args, n) for n in knob_names})
    return SandboxConfig(app_id=args.app_id, app_public_key_path=args.app_public_key,
                         platform_private_key_path=args.platform_private_key,
                         seed=args.seed, knobs=knobs)


async def serve(config: SandboxConfig, host: str, port: int) -> None:
    runner = web.AppRunner(create_sandbox_app(config), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        print(f"sandbox listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 2
    uvloop.run(serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
