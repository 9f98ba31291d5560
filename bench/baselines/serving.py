"""Run an aiohttp app on uvloop until SIGINT/SIGTERM (what every baseline process does)."""
from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Awaitable, Callable

from aiohttp import web

BACKLOG = 1024


def base_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    return p


def add_work_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--sandbox-port", type=int, required=True)
    p.add_argument("--notify-base-url", required=True)


async def wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_app(app: web.Application, host: str, port: int,
                    after_start: Callable[[], Awaitable[None]] | None = None) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=BACKLOG).start()
        if after_start is not None:
            await after_start()
        print(f"listening on http://{host}:{port}", flush=True)
        await wait_for_stop()
    finally:
        await runner.cleanup()
