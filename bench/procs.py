"""Process-group CPU accounting for the benchmark, plus the pure figure helpers it reports with.

A snapshot walks the launcher's process tree (the gateway is the launcher itself; Redis, the
sandbox and the Ray cluster are its descendants) and the load generator, and records each process's
user+system CPU seconds. The CPU of a group over the measured window is the sum of per-process
deltas; a process that appears during the window counts from zero, one that vanishes during it is
lost (psutil cannot read a dead process) and is counted in ``vanished``.

The grouping is pure (``group_processes``) so unit tests drive it with made-up process tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

GATEWAY = "gateway"
SHARD_ACTORS = "actors:shard"
OTHER_ACTORS = "actors:other"
RAY_SYSTEM = "ray-system"
REDIS = "redis"
SANDBOX = "sandbox"
LOADGEN = "loadgen"
OTHER = "other"
GROUPS = (GATEWAY, SHARD_ACTORS, OTHER_ACTORS, RAY_SYSTEM, REDIS, SANDBOX,
          LOADGEN, OTHER)

# Ray worker titles are "ray::<ActorClass>" or "ray::<ActorClass>.<method>" while a call runs.
_SHARD_CLASSES = frozenset({"LiveShardHost"})   # the actors that host the order shards
_GATEWAY_CLASSES = frozenset({"ProxyActor"})          # Ray Serve's HTTP proxy (bench.suite)
_RAY_SYSTEM_TITLES = frozenset({"IDLE", "DashboardAgent", "RuntimeEnvAgent", "ServeController"})
_RAY_SYSTEM_NAMES = frozenset({"gcs_server", "raylet", "plasma_store", "ray"})
_RAY_SYSTEM_PATHS = ("/ray/dashboard/", "/ray/autoscaler/", "/ray/_private/", "/ray/core/")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    name: str
    cmdline: tuple[str, ...]


def _ray_worker_group(title: str) -> str:
    actor = title[len("ray::"):].split(".", 1)[0].split(" ", 1)[0]
    if actor in _SHARD_CLASSES:
        return SHARD_ACTORS
    if actor in _GATEWAY_CLASSES:
        return GATEWAY
    if actor in _RAY_SYSTEM_TITLES:
        return RAY_SYSTEM
    return OTHER_ACTORS


def group_by_name(p: ProcInfo) -> str | None:
    """The group a process's own name or command line says, or None when they say nothing."""
    first = p.cmdline[0] if p.cmdline else ""
    if first.startswith("ray::") or p.name.startswith("ray::"):
        return _ray_worker_group(first if first.startswith("ray::") else p.name)
    if p.name in _RAY_SYSTEM_NAMES:
        return RAY_SYSTEM
    if p.name.startswith("redis-") or first.endswith("redis-server"):
        return REDIS
    joined = " ".join(p.cmdline)
    if "channels.sandbox" in joined:
        return SANDBOX
    if any(part in joined for part in _RAY_SYSTEM_PATHS):
        return RAY_SYSTEM
    if p.name in ("wrk", "locust"):
        return LOADGEN
    return None


def group_processes(procs: Iterable[ProcInfo], launcher_pid: int,
                    loadgen_pids: Iterable[int] = ()) -> dict[int, str]:
    """pid -> group. Explicit roles first, then the name, then the nearest ancestor with a group
    other than the gateway (a child of Redis is Redis); what is left is ``other``."""
    table = {p.pid: p for p in procs}
    loadgen = set(loadgen_pids)
    named: dict[int, str | None] = {}
    for pid, p in table.items():
        if pid == launcher_pid:
            named[pid] = GATEWAY
        elif pid in loadgen:
            named[pid] = LOADGEN
        else:
            named[pid] = group_by_name(p)
    out: dict[int, str] = {}
    for pid in table:
        out[pid] = _inherited(pid, table, named)
    return out


def _inherited(pid: int, table: Mapping[int, ProcInfo], named: Mapping[int, str | None]) -> str:
    seen: set[int] = set()
    cur = pid
    while cur in table and cur not in seen:
        seen.add(cur)
        group = named[cur]
        if group is not None and (cur == pid or group != GATEWAY):
            return group
        cur = table[cur].ppid
    return OTHER


# ---- snapshots (psutil) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    group: str
    create_time: float
    cpu_s: float          # user + system, seconds


Snapshot = dict[int, Sample]


def snapshot(launcher_pid: int, loadgen_pids: Sequence[int] = (),
             extra_roots: Sequence[int] = ()) -> Snapshot:
    """CPU of the launcher's whole tree, of ``extra_roots`` and their trees (grouped by name:
    a Redis or a sandbox started beside the launcher) and of the load generator processes."""
    import psutil
    procs: list[psutil.Process] = []
    for root_pid in (launcher_pid, *extra_roots):
        try:
            root = psutil.Process(root_pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for pid in loadgen_pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    infos, samples = [], {}
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                infos.append(ProcInfo(proc.pid, proc.ppid(), proc.name(), tuple(proc.cmdline())))
                samples[proc.pid] = (proc.create_time(), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    groups = group_processes(infos, launcher_pid, loadgen_pids)
    return {pid: Sample(groups[pid], ct, cpu) for pid, (ct, cpu) in samples.items()}


def cpu_delta(before: Snapshot, after: Snapshot) -> tuple[dict[str, float], int]:
    """(CPU seconds per group over the window, processes that vanished during it)."""
    out = {g: 0.0 for g in GROUPS}
    for pid, s in after.items():
        b = before.get(pid)
        start = b.cpu_s if b is not None and b.create_time == s.create_time else 0.0
        out[s.group] += max(0.0, s.cpu_s - start)
    vanished = sum(1 for pid, b in before.items()
                   if pid not in after or after[pid].create_time != b.create_time)
    return out, vanished


def read_proc_stat(path: str = "/proc/stat") -> dict[str, int]:
    """The machine's aggregate CPU jiffies (first line of /proc/stat); {} where there is none."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return {}
    if not fields or fields[0] != "cpu":
        return {}
    return {n: int(v) for n, v in zip(names, fields[1:])}


def machine_shares(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """Idle (idle+iowait) and steal shares of all CPU time between two /proc/stat readings."""
    delta = {k: after[k] - before.get(k, 0) for k in after}
    total = sum(delta.values())
    if total <= 0:
        return {}
    return {"idle_share": (delta.get("idle", 0) + delta.get("iowait", 0)) / total,
            "steal_share": delta.get("steal", 0) / total}


# ---- figures ---------------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the smallest value with at least q% of values at or below it).

    ``sorted_values`` must be sorted ascending; an empty sequence gives NaN.
    """
    if not 0 < q <= 100:
        raise ValueError(f"percentile: q must be in (0, 100], got {q}")
    if not sorted_values:
        return math.nan
    rank = math.ceil(q / 100 * len(sorted_values))
    return float(sorted_values[max(rank, 1) - 1])


def us_per_order(cpu_s: Mapping[str, float], orders: int) -> dict[str, float]:
    """CPU microseconds per order for each group and ``total`` (NaN when no order succeeded)."""
    out = {g: (s * 1e6 / orders if orders else math.nan) for g, s in cpu_s.items()}
    total = sum(cpu_s.values())
    out["total"] = total * 1e6 / orders if orders else math.nan
    return out


def fmt_ms(us: float) -> str:
    """A latency given in microseconds, as milliseconds with sensible precision."""
    if math.isnan(us):
        return "n/a"
    ms = us / 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_num(x: float, digits: int = 0) -> str:
    """Thousands-separated; NaN as n/a."""
    if math.isnan(x):
        return "n/a"
    return f"{x:,.{digits}f}"


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(parts).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *[line(r) for r in cells[1:]]])


def log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a process's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
