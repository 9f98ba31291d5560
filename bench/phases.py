"""One measured load phase against a running target: closed loop (wrk) or open loop (Python),
with the CPU of every process group over the phase. Figures come out as ``bench.run.report``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from bench import procs
from bench.load import Load, run_open
from bench.run import POOL_SLACK, measured_window, report, run_wrk, signed_pool, write_pool


class Target(Protocol):
    name: str
    url: str
    sandbox_url: str | None       # its channel sandbox, once started (None: it has none)

    def snapshot(self) -> procs.Snapshot: ...


def _measured(target: Target, go: Callable[[], tuple[Load, float]]) -> dict[str, Any]:
    return report(measured_window(target.url, target.sandbox_url, target.snapshot, go))


CYCLE_POOL = 4096              # requests replayed round and round when the target checks none


def closed(target: Target, conns: int, seconds: float, max_rate: float | None,
           work: Path) -> dict[str, Any]:
    """wrk, ``conns`` connections, pre-signed orders for up to ``max_rate``/s (signed first);
    ``max_rate`` None: a small pool replayed round and round (the bare target checks nothing)."""
    pool_file = work / f"pool-{target.name}-c{conns}.tsv"
    n = CYCLE_POOL if max_rate is None else int(max_rate * seconds * POOL_SLACK) + 1
    write_pool(signed_pool(n, f"{target.name}c{conns}"), pool_file)
    cycle = max_rate is None
    fig = _measured(target, lambda: run_wrk(target.url, conns, 1, seconds, pool_file, cycle))
    fig["conns"] = conns
    return fig


def open_loop(target: Target, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop at ``rate``/s from this process (pre-signed orders)."""
    pool = signed_pool(int(rate * seconds * POOL_SLACK) + 1, f"{target.name}r{rate:.0f}")
    fig = _measured(target, lambda: run_open(target.url, rate, seconds, pool))
    fig["offered_per_s"] = rate
    return fig


def grouped_us(fig: dict[str, Any]) -> dict[str, float]:
    """µs per order for the suite's groups: the actor groups summed as ``actors``."""
    per = fig["cpu_us_per_order"]
    out = {procs.GATEWAY: per[procs.GATEWAY],
           "actors": per[procs.SHARD_ACTORS] + per[procs.OTHER_ACTORS]}
    for g in (procs.RAY_SYSTEM, procs.REDIS, procs.SANDBOX, procs.LOADGEN, procs.OTHER):
        out[g] = per[g]
    out["total"] = per["total"]
    return out
