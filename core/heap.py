"""Garbage collection for a long-running server process (the gateway, a shard host, the sandbox).

CPython's full collection walks every object the collector tracks, and a server has the whole of
Ray, aiohttp and paycell on its heap from the start: each full collection is a pause for every
order in flight. Once a process is up, `settle` collects and freezes what exists (gc.freeze:
never scanned again; objects without reference cycles are still freed by their reference
counts), so the full collections walk only what the process made since.
"""
from __future__ import annotations

import gc


def settle() -> None:
    gc.collect()
    gc.freeze()
