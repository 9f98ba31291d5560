"""The seeded simulation of shard, store, channels and clock (tests/sim/README.md).

`make test` runs seeds 0..999 (about 30 s); PAYCELL_SIM_SEEDS=100000 runs more,
PAYCELL_SIM_SEED=<n> replays one, PAYCELL_SIM_WITH=redis_late adds an opt-in fault kind. A
failure names each failing seed, its violations and the command that replays it.
"""
from __future__ import annotations

import os

import pytest

from tests.sim.runner import run_many
from tests.sim.swarm import OPT_IN

pytestmark = pytest.mark.sim

DEFAULT_SEEDS = 1000


def _seeds() -> range:
    one = os.environ.get("PAYCELL_SIM_SEED")
    if one:
        return range(int(one), int(one) + 1)
    return range(int(os.environ.get("PAYCELL_SIM_SEEDS", DEFAULT_SEEDS)))


def _with_faults() -> frozenset[str]:
    kinds = frozenset(f"p_{k.strip()}" for k in os.environ.get("PAYCELL_SIM_WITH", "").split(",")
                      if k.strip())
    assert kinds <= OPT_IN, f"PAYCELL_SIM_WITH: unknown kind(s) {sorted(kinds - OPT_IN)}"
    return kinds


def test_every_seed_keeps_every_invariant() -> None:
    seeds = _seeds()
    summary = run_many(seeds, with_faults=_with_faults())
    print("\n" + summary.text())
    assert not summary.failed, summary.failure_report()
    if len(seeds) >= 200:
        # A run that injected nothing or reached no rung would pass without proving anything.
        assert summary.crashes > 0 and summary.orders > 20 * len(seeds)
        for kind in ("redis_fail", "redis_ack_lost", "redis_stall", "redis_outage_refused",
                     "charge_not_sent", "charge_error_before_commit", "charge_commit_then_drop",
                     "charge_hang", "query_fail", "query_slow", "cancel_fail", "cancel_ack_lost",
                     "notify_drop", "notify_dup"):
            assert summary.faults[kind] > 0, f"fault kind {kind} was never injected"
        for status in ("SUCCEEDED", "FAILED", "CLOSED"):
            assert summary.statuses[status] > 0, status
        for rung in ("sync", "notify", "query"):
            assert summary.resolved_by[rung] > 0, rung
