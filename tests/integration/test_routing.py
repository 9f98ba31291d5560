"""Automatic routing on the real stack: a card channel degrades to 50% declines under steady
load, traffic moves to the healthy one within a bounded time, and comes back after recovery;
no order is charged twice (both sandboxes' ledgers). The session stack runs with a 6 s routing
window (tests/integration/stack.py), so the bounds below follow from it:
  shift:  the degraded channel's window success rate falls under the healthy one's at once
          (the first declines), so within 3 s (1 s granularity, 2 s sustained);
  return: its failures leave the 6 s window, then it ranks first again: within 10 s."""
from __future__ import annotations

import pytest

from bench.routing import drive, phases_for, print_summary

pytestmark = pytest.mark.integration

RATE = 30
SHIFT_BOUND_S = 3
RETURN_BOUND_S = 10


async def test_traffic_leaves_a_declining_channel_and_returns(stack) -> None:
    sandbox_url = stack["settings"].sandbox.url()
    r = await drive(stack["url"], sandbox_url, ("stripe", "paypal"), RATE,
                    phases_for("decline", 4, 8, 12))
    print_summary(r)                                  # shown with -s, and on failure
    steady, degraded, recovered = (r["phases"][p] for p in ("steady", "degraded", "recovered"))
    assert steady["answered"] == steady["orders"] and steady["first_choice_stripe_pct"] >= 80
    assert r["shift_s"] is not None and r["shift_s"] <= SHIFT_BOUND_S, r["per_second"]
    assert degraded["first_choice_stripe_pct"] < 40, r["per_second"]
    assert degraded["failovers"] >= 1                 # declines on stripe were paid on paypal
    assert r["return_s"] is not None and r["return_s"] <= RETURN_BOUND_S, r["per_second"]
    assert r["double_charged"] == [] and r["money_mismatches"] == []
    assert r["pending_after_drain"] == 0
    total = sum(p["orders"] for p in r["phases"].values())
    assert sum(p["succeeded"] for p in r["phases"].values()) == total   # failover paid them all
