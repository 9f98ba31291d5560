"""Garbage collection for a long-running server process (the gateway, a shard host, the sandbox).

CPython's full collection walks every object the collector tracks, and a server has the whole of
Ray, aiohttp and paycell on its heap from the start: each full collection is a pause for every
order in flight. Once a process is up, `settle` collects and freezes what exists (gc.freeze:
never scanned again; objects without reference cycles are still freed by their reference
counts), so the full collections walk only what the process made since.

`settle` also starts the process's pause clock (`pauses`): every collection, timed from the
collector's own start and stop callbacks, by generation, in the buckets of PAUSE_BUCKETS_S.
/metrics shows it for the gateway and each shard host (paycell_gc_pause_seconds), and the
benchmarks print what a measured window added to it.
"""
from __future__ import annotations

import gc
import time
from typing import Any

PAUSE_BUCKETS_S = (0.001, 0.005, 0.02, 0.05, 0.2)   # cumulative, as a Prometheus histogram
GENERATIONS = (0, 1, 2)


class PauseClock:
    """Counts and times the collector's pauses of this process (gc.callbacks)."""

    def __init__(self) -> None:
        self._started = 0.0
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        # buckets[gen][i]: pauses of `gen` no longer than PAUSE_BUCKETS_S[i]
        self.buckets = [[0] * len(PAUSE_BUCKETS_S) for _ in GENERATIONS]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        gen = info["generation"]
        self.count[gen] += 1
        self.seconds[gen] += took
        if took > self.max_s[gen]:
            self.max_s[gen] = took
        for i, bound in enumerate(PAUSE_BUCKETS_S):
            if took <= bound:
                self.buckets[gen][i] += 1

    def snapshot(self) -> dict[str, Any]:
        """JSON- and pickle-ready: per generation (as a string key), its collections, seconds,
        longest pause and bucket counts."""
        return {str(g): {"count": self.count[g], "seconds": self.seconds[g],
                         "max_s": self.max_s[g], "buckets": list(self.buckets[g])}
                for g in GENERATIONS}


_clock: PauseClock | None = None   # one per process, as the collector itself


def watch() -> PauseClock:
    """Start this process's pause clock (once; later calls return the same clock)."""
    global _clock
    if _clock is None:
        _clock = PauseClock()
        gc.callbacks.append(_clock)
    return _clock


def pauses() -> dict[str, Any]:
    """The pause clock's snapshot; an empty dict before `watch` (or `settle`) ran."""
    return _clock.snapshot() if _clock is not None else {}


def settle() -> None:
    gc.collect()
    gc.freeze()
    watch()
