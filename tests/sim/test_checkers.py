"""The checkers can fail: a known bug injected into the simulated parts is reported, with the
seed that shows it, and the same seeds pass without it."""
from __future__ import annotations

import pytest

from tests.sim.runner import replay_command, run_many
from tests.sim.world import World, run_seed

pytestmark = pytest.mark.sim

SEEDS_MAX = 200       # a bug shows only in some seeds
LATE_SEEDS_MAX = 100  # the late-write guards matter in a few seeds (first: 14 and 41, Nov 2026)


@pytest.mark.parametrize("bug, kind", [
    ("double_charge", "double_charge"),     # the channel takes a payment's money twice
    ("amnesia", "lost"),                    # Redis acknowledges a new order and drops it
    ("no_fence", "duplicate_key"),          # the commit script lets a key name two orders
])
def test_an_injected_bug_is_reported_with_its_seed(bug: str, kind: str) -> None:
    bugs = frozenset({bug})
    first = next((seed for seed in range(SEEDS_MAX)
                  if kind in {v.kind for v in run_seed(seed, bugs=bugs).violations}), None)
    assert first is not None, f"{bug}: no seed below {SEEDS_MAX} reported {kind}"
    summary = run_many([first], bugs=bugs)
    report = summary.failure_report()
    assert f"seed {first}:" in report and f" {kind} " in report   # (its violations line)
    assert replay_command(first) in report
    # the same seed is clean without the bug: the checker is not simply always failing
    assert run_seed(first).ok


def test_a_seed_replays_identically() -> None:
    a, b = World(7), World(7)
    ra, rb = a.run(), b.run()
    assert ra.trace_hash == rb.trace_hash and a.trace_lines() == b.trace_lines()
    assert ra.stats == rb.stats and ra.faults == rb.faults
    assert run_seed(8).trace_hash != ra.trace_hash


def test_a_seed_replays_identically_in_another_process() -> None:
    """Nothing depends on the interpreter's string hashing or on object addresses."""
    import os
    import subprocess
    import sys
    hashes = set()
    for hash_seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-m", "tests.sim", "--seed", "7"],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed})
        hashes.add(next(line.split()[-1] for line in out.stdout.splitlines()
                        if "trace hash" in line))
    assert hashes == {run_seed(7).trace_hash}


def _first_seed_showing(kind: str, bug: str, with_faults: frozenset[str]) -> int:
    seed = next((seed for seed in range(LATE_SEEDS_MAX) if kind in {
        v.kind for v in run_seed(seed, bugs=frozenset({bug}), with_faults=with_faults).violations}),
        None)
    assert seed is not None, f"{bug}: no seed below {LATE_SEEDS_MAX} reported {kind}"
    return seed


def test_the_final_order_guard_is_what_stops_late_writes() -> None:
    """With Redis running a timed-out command late (the opt-in fault), the commit script's
    guard on final orders is what keeps a late write from overwriting a final status (found by
    `python -m tests.sim --with redis_late --bug no_final_guard`): the first seed that shows it
    without the guard passes with it."""
    late = frozenset({"p_redis_late"})
    seed = _first_seed_showing("final_status_overwritten", "no_final_guard", late)
    assert run_seed(seed, with_faults=late).ok


def test_the_one_way_guard_is_what_stops_late_writes_reopening_doors() -> None:
    """As above, for a PENDING order's one-way fields: a late FAILED write, computed before a
    failover, lands over the record that had moved to the next channel without the guard (found
    by `python -m tests.sim --with redis_late --bug no_one_way_guard`);
    tests/sim/test_late_writes.py scripts the cancel_sent case to its money consequence."""
    late = frozenset({"p_redis_late"})
    seed = _first_seed_showing("one_way_field_regressed", "no_one_way_guard", late)
    assert run_seed(seed, with_faults=late).ok
