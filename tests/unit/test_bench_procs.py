"""bench.procs: grouping processes by name and ancestry, CPU deltas, percentiles, formatting."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import procs
from bench.procs import ProcInfo, Sample

LAUNCHER = 100
SITE = "/venv/lib/python3.11/site-packages/ray"


def tree() -> list[ProcInfo]:
    """The process table of one `paycell up` as seen in `ps` on this machine."""
    return [
        ProcInfo(LAUNCHER, 1, "paycell", ("/venv/bin/python3", "/venv/bin/paycell", "up")),
        ProcInfo(101, LAUNCHER, "redis-server", ("redis-server 127.0.0.1:6390",)),
        ProcInfo(102, LAUNCHER, "python3", ("/venv/bin/python3", "-m", "channels.sandbox",
                                            "--port", "8091")),
        ProcInfo(103, LAUNCHER, "gcs_server", (f"{SITE}/core/src/ray/gcs/gcs_server",)),
        ProcInfo(104, LAUNCHER, "python3", ("/venv/bin/python3", f"{SITE}/dashboard/dashboard.py")),
        ProcInfo(105, LAUNCHER, "python3", ("/venv/bin/python3", "-u",
                                            f"{SITE}/_private/log_monitor.py")),
        ProcInfo(106, LAUNCHER, "raylet", (f"{SITE}/core/src/ray/raylet/raylet",)),
        ProcInfo(107, 106, "ray::DashboardAgent", ("ray::DashboardAgent",)),
        ProcInfo(108, 106, "ray::LiveShardHost", ("ray::LiveShardHost",)),
        ProcInfo(109, 106, "ray::LiveShardHos", ("ray::LiveShardHost.process_batch",)),
        ProcInfo(110, 106, "ray::ChannelHost", ("ray::ChannelHost",)),
        ProcInfo(111, 106, "ray::IDLE", ("ray::IDLE",)),
        ProcInfo(112, 106, "ray::Reconciler", ("ray::Reconciler",)),
        ProcInfo(113, 101, "redis-server", ("redis-aof-rewrite",)),   # a fork of Redis
        ProcInfo(114, 102, "sh", ("/bin/sh", "-c", "true")),            # a child of the sandbox
        ProcInfo(115, LAUNCHER, "sh", ("/bin/sh", "-c", "true")),       # the launcher's own child
        ProcInfo(200, 50, "wrk", ("wrk", "-t", "1")),
    ]


def test_every_process_lands_in_its_group() -> None:
    groups = procs.group_processes(tree(), LAUNCHER, loadgen_pids=[200])
    assert groups == {
        100: procs.GATEWAY, 101: procs.REDIS, 102: procs.SANDBOX, 103: procs.RAY_SYSTEM,
        104: procs.RAY_SYSTEM, 105: procs.RAY_SYSTEM, 106: procs.RAY_SYSTEM,
        107: procs.RAY_SYSTEM, 108: procs.SHARD_ACTORS, 109: procs.SHARD_ACTORS,
        110: procs.OTHER_ACTORS, 111: procs.RAY_SYSTEM, 112: procs.OTHER_ACTORS,
        113: procs.REDIS, 114: procs.SANDBOX, 115: procs.OTHER, 200: procs.LOADGEN,
    }


def test_an_unnamed_child_inherits_through_several_generations() -> None:
    table = [ProcInfo(1, 0, "paycell", ()), ProcInfo(2, 1, "raylet", ()),
             ProcInfo(3, 2, "python3", ("x",)), ProcInfo(4, 3, "python3", ("y",))]
    assert procs.group_processes(table, 1)[4] == procs.RAY_SYSTEM


def test_a_parent_loop_does_not_hang() -> None:
    table = [ProcInfo(1, 2, "a", ()), ProcInfo(2, 1, "b", ())]
    assert procs.group_processes(table, launcher_pid=99) == {1: procs.OTHER, 2: procs.OTHER}


def test_the_launcher_pid_wins_over_its_name() -> None:
    table = [ProcInfo(7, 1, "redis-server", ())]
    assert procs.group_processes(table, 7) == {7: procs.GATEWAY}


def test_cpu_delta_counts_new_processes_from_zero_and_reused_pids_as_new() -> None:
    before = {1: Sample(procs.GATEWAY, 10.0, 5.0), 2: Sample(procs.REDIS, 10.0, 1.0),
              3: Sample(procs.SANDBOX, 10.0, 2.0), 4: Sample(procs.SHARD_ACTORS, 10.0, 9.0)}
    after = {1: Sample(procs.GATEWAY, 10.0, 7.5), 2: Sample(procs.REDIS, 10.0, 1.25),
             4: Sample(procs.SHARD_ACTORS, 20.0, 0.5),        # same pid, a new process
             5: Sample(procs.SHARD_ACTORS, 30.0, 0.75)}       # born during the window
    cpu, vanished = procs.cpu_delta(before, after)
    assert cpu[procs.GATEWAY] == 2.5
    assert cpu[procs.REDIS] == 0.25
    assert cpu[procs.SHARD_ACTORS] == 1.25
    assert cpu[procs.SANDBOX] == 0.0
    assert set(cpu) == set(procs.GROUPS)
    assert vanished == 2          # pid 3 is gone; pid 4's old process is gone


def test_machine_shares_from_proc_stat(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    path.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
    before = procs.read_proc_stat(str(path))
    path.write_text("cpu  300 0 150 1300 50 0 0 100 0 0\n")
    after = procs.read_proc_stat(str(path))
    shares = procs.machine_shares(before, after)
    assert shares["idle_share"] == pytest.approx(500 / 900)
    assert shares["steal_share"] == pytest.approx(100 / 900)
    assert procs.read_proc_stat(str(tmp_path / "missing")) == {}
    assert procs.machine_shares(after, after) == {}


@pytest.mark.parametrize("q, expected", [(50, 50), (97, 97), (99, 99), (100, 100), (0.5, 1),
                                         (99.9, 100)])
def test_percentile_is_nearest_rank(q: float, expected: float) -> None:
    values = list(range(1, 101))
    assert procs.percentile(values, q) == expected


def test_percentile_edges() -> None:
    assert procs.percentile([7.0], 50) == 7.0
    assert procs.percentile([1, 2, 3, 4], 50) == 2
    assert procs.percentile([1, 2, 3, 4], 51) == 3
    assert math.isnan(procs.percentile([], 99))
    with pytest.raises(ValueError):
        procs.percentile([1], 0)
    with pytest.raises(ValueError):
        procs.percentile([1], 101)


def test_us_per_order() -> None:
    out = procs.us_per_order({procs.GATEWAY: 2.0, procs.REDIS: 0.5}, orders=1000)
    assert out == {procs.GATEWAY: 2000.0, procs.REDIS: 500.0, "total": 2500.0}
    assert all(math.isnan(v) for v in procs.us_per_order({procs.REDIS: 1.0}, 0).values())


def test_figure_formatting() -> None:
    assert procs.fmt_ms(1234) == "1.23 ms"
    assert procs.fmt_ms(42_400) == "42.4 ms"
    assert procs.fmt_ms(195_000) == "195 ms"
    assert procs.fmt_ms(math.nan) == "n/a"
    assert procs.fmt_num(12345.6) == "12,346"
    assert procs.fmt_num(3.14159, 2) == "3.14"
    assert procs.fmt_num(math.nan) == "n/a"


def test_table_alignment() -> None:
    text = procs.format_table([["gateway", "1.50"], ["redis", "12.25"]], ["group", "cpu s"])
    assert text.splitlines() == ["group    cpu s",
                                 "-------  -----",
                                 "gateway   1.50",
                                 "redis    12.25"]
