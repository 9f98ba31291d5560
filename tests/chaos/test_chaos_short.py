"""The short form of the chaos run (bench/chaos.py) in the default test run: two runs on their own
stacks (redis-server, the sandbox with naive_charge, paycell up), each with a recorded history, a
seeded fault schedule, a drain and the oracles; the first with a query outage that leaves orders
to batch reconciliation. The long runs: ``python -m bench.chaos``."""
from __future__ import annotations

import pytest

from bench import chaos

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RATE = 30.0          # orders/s: light, the machine has 2 cores shared with the test session
ORACLES = ("lost", "unexpected", "duplicated", "wrong_total", "not_final", "mismatch",
           "divergent_replies")


@pytest.fixture(autouse=True)
def _ray_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _assert_clean(r: dict) -> None:
    assert r["orders"] > 0 and r["acknowledged"] == r["orders"], r["statuses"]
    assert r["stored_orders"] == r["known_to_paycell"] == r["orders"], r
    assert set(ORACLES) <= set(r["violations"])
    assert sum(r["violations"].values()) == 0, r["violation_examples"]
    assert r["reconcile_cycles_to_drain"] <= chaos.DEFAULT_CYCLES


def test_shard_kills_channel_notification_faults_and_a_query_outage_break_no_oracle(
        tmp_path) -> None:
    r = chaos.run_scenario("shard_kill+channel_faults+notify_faults+reconcile", RATE, 15.0,
                           seed=7, work=tmp_path)
    _assert_clean(r)
    f = r["faults"]
    assert f.get("shard_killed", 0) >= 2, f
    assert f.get("channel_hang", 0) + f.get("channel_commit_then_drop", 0) > 0, f
    assert f.get("notifies_dropped", 0) > 0 and f.get("notifies_duplicated", 0) > 0, f
    assert f.get("notify_reordered", 0) > 0, f
    assert r["retries"] > 0, "no shard kill hit a request"
    # the query outage left orders to the third rung, and one reconcile cycle settled them
    assert f.get("query_outage") == 1, f
    assert r["left_for_reconcile"] > 0 and r["reconcile_cycles_to_drain"] >= 1, r
    assert r["resolved_by"].get("reconcile", 0) >= r["left_for_reconcile"] > 0, r["resolved_by"]


def test_redis_killed_and_paused_breaks_no_oracle(tmp_path) -> None:
    r = chaos.run_scenario("redis_kill", RATE, 12.0, seed=3, work=tmp_path)
    _assert_clean(r)
    f = r["faults"]
    assert f.get("redis_killed", 0) + f.get("redis_paused", 0) >= 2, f
    assert r["http_5xx"] + r["no_answer"] > 0, "no Redis fault was seen by a client"
