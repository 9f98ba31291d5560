"""The chaos oracles on made-up histories, ledgers and stored records (no processes): each one
fires on its violation and stays quiet on a clean run; and the reconcile scenario's timing."""
from __future__ import annotations

from typing import Any

import pytest

from bench import chaos, chaos_drain
from bench.chaos import kinds_of
from bench.chaos_oracles import Attempt, History, check
from core.settings import load_settings


def _order(oid: str, status: str, amount: int = 600, channel: str = "alipay",
           refunded: int = 0) -> dict[str, Any]:
    return {"order_id": oid, "out_trade_no": "k" + oid, "amount": amount, "currency": "CNY",
            "created_at": "t0", "status": status, "channel": channel,
            "refunded_amount": refunded}


def _trade(charges: int, amount: int = 600, refunded: int = 0) -> dict[str, Any]:
    return {"charges": charges, "pay_calls": max(charges, 1), "total_amount": amount,
            "currency": "CNY", "refunded_amount": refunded}


def _run(orders: dict[str, dict[str, Any]], trades: dict[str, dict[str, Any]],
         replies: list[dict[str, Any]] | None = None) -> tuple[History, dict[str, Any]]:
    h = History()
    for o in orders.values():
        key = o["out_trade_no"]
        h.bodies[key] = {}
        h.acked[key] = o
        for n, reply in enumerate(replies or [o], 1):
            h.attempts.append(Attempt(key, "sha", n, 0.0, 0.0, 200, reply))
    books = {"alipay": {"trades": trades}}
    return h, books


def _violations(orders, trades, found=None, replies=None) -> dict[str, int]:
    h, books = _run(orders, trades, replies)
    found = {o["out_trade_no"]: o for o in orders.values()} if found is None else found
    return {k: len(v) for k, v in check(h, found, books).items()}


def test_a_clean_run_has_no_violation() -> None:
    orders = {"a": _order("a", "SUCCEEDED"), "b": _order("b", "FAILED"),
              "c": _order("c", "SUCCEEDED", refunded=600)}
    trades = {"a": _trade(1), "c": _trade(1, refunded=600)}
    assert sum(_violations(orders, trades).values()) == 0


def test_each_oracle_fires_on_its_violation() -> None:
    orders = {"a": _order("a", "SUCCEEDED")}
    assert _violations(orders, {"a": _trade(2)})["duplicated"] == 1
    assert _violations(orders, {"a": _trade(2)})["wrong_total"] == 1
    assert _violations(orders, {"a": _trade(1), "z": _trade(1)})["unexpected"] == 1
    assert _violations(orders, {"a": _trade(1)}, found={})["lost"] == 1
    assert _violations(orders, {})["mismatch"] == 1
    assert _violations({"b": _order("b", "FAILED")}, {"b": _trade(1)})["mismatch"] == 1
    assert _violations({"p": _order("p", "PENDING")}, {})["not_final"] == 1
    flip = [_order("a", "SUCCEEDED"), _order("a", "FAILED")]
    assert _violations(orders, {"a": _trade(1)}, replies=flip)["divergent_replies"] == 1
    other = [_order("a", "SUCCEEDED"), {**_order("a", "SUCCEEDED"), "amount": 700}]
    assert _violations(orders, {"a": _trade(1)}, replies=other)["divergent_replies"] == 1


def test_scenarios_compose_and_unknown_ones_are_refused() -> None:
    assert kinds_of("shard_kill+redis_kill") == {"shard_kill", "redis_kill"}
    assert "node_loss" in kinds_of("mixed") and "mixed" not in kinds_of("mixed")
    with pytest.raises(ValueError):
        kinds_of("shard_kill+nope")


def _stored(o: dict[str, Any], app_id: str = "demo-app") -> dict[str, Any]:
    return {"order_id": o["order_id"], "app_id": app_id, "out_trade_no": o["out_trade_no"],
            "status": o["status"]}


def _unexpected(orders: dict[str, dict[str, Any]], stored: list[dict[str, Any]]) -> int:
    h, books = _run(orders, {oid: _trade(1) for oid in orders})
    found = {o["out_trade_no"]: o for o in orders.values()}
    return len(check(h, found, books, stored, "demo-app")["unexpected"])


def test_stored_orders_no_key_asked_for_are_unexpected() -> None:
    orders = {"a": _order("a", "SUCCEEDED"), "b": _order("b", "SUCCEEDED")}
    clean = [_stored(o) for o in orders.values()]
    assert _unexpected(orders, clean) == 0
    stray = _stored(_order("z", "FAILED"))                        # a key no client sent
    assert _unexpected(orders, clean + [stray]) == 1
    second = {**_stored(orders["a"]), "order_id": "a2"}          # a second order for key "ka"
    assert _unexpected(orders, clean + [second]) == 1
    other_app = _stored(orders["b"], app_id="another-app")       # the key, but another app's
    assert _unexpected(orders, clean + [other_app]) == 1


@pytest.mark.parametrize("duration_s", [chaos.RECONCILE_MIN_S, 15.0, 30.0, 80.0])
def test_the_query_outage_outlasts_the_shortened_ladder(duration_s: float) -> None:
    """reconcile: an order left in doubt when the outage starts is given up by its shard
    (async window, then every cancel) before the outage ends, so the third rung must settle
    it; with paycell's default settings it would not be."""
    at, end = chaos.outage_window(duration_s)
    assert 0 < at < end <= duration_s
    short = chaos_drain.Ladder.of(load_settings(env=chaos.RECONCILE_SETTINGS).orders)
    assert short.gives_up_at(at, 0.0) - chaos_drain.LADDER_SLACK_S < end - 1.0
    default = chaos_drain.Ladder.of(load_settings(env={}).orders)
    assert default.gives_up_at(at, 0.0) > end
