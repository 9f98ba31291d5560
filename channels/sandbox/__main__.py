"""python -m channels.sandbox --host 127.0.0.1 --port 8091 --seed N [--channels a,b] [knob flags]

Runs every channel's sandbox (or the named ones) in one process on uvloop until SIGINT/SIGTERM,
each under /<channel>/ (Alipay also at the root). The knob flags set every channel's knobs at
start; POST /<channel>/_sandbox/knobs changes one channel's. Prints one line
``sandbox listening on http://HOST:PORT`` once it accepts connections.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop
from aiohttp import web

from channels.sandbox.app import SANDBOXES, create_sandbox_app
from channels.sandbox.engine import SandboxConfig
from channels.sandbox.knobs import Knobs
from core import heap


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ms_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    d = Knobs()
    p = argparse.ArgumentParser(prog="python -m channels.sandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=_names, default=list(SANDBOXES),
                   help="comma-separated channels to serve (default: all)")
    for name in ("latency_ms", "hang_ms", "notify_delay_ms", "payer_confirm_ms",
                 "refund_delay_ms"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("hang_rate", "decline_rate", "commit_then_drop_rate", "error_rate",
                 "followup_error_rate", "notify_drop_rate", "notify_duplicate_rate"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--naive-charge", action="store_true")
    p.add_argument("--notify-retry-ms", type=_ms_list, default=list(d.notify_retry_ms),
                   help="comma-separated delays, e.g. 1000,2000,4000")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    knob_names = [n for n in Knobs.__dataclass_fields__]
    knobs = Knobs().replace({n: getattr(args, n) for n in knob_names})
    return SandboxConfig(seed=args.seed, knobs=knobs)


async def serve(config: SandboxConfig, channels: list[str], host: str, port: int) -> None:
    runner = web.AppRunner(create_sandbox_app(config, channels), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        heap.settle()   # the stand-in for a channel should not pause for its collector either
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
        unknown = sorted(set(args.channels) - set(SANDBOXES))
        if unknown:
            raise ValueError(f"no sandbox for {unknown}; known: {sorted(SANDBOXES)}")
    except ValueError as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 2
    uvloop.run(serve(config, args.channels, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
