"""bench.reconcile_day: the day's plan, what reconciling it must report, and the checks."""
from __future__ import annotations

from dataclasses import replace

import pytest

from bench.reconcile_day import (DEFAULT_MIX, FINAL, DayOrder, check_ledger, check_orders,
                                 check_report, expected_reports, kinds_of, parse_mix, plan_day)
from channels.sandbox.engine import Scenario, scenario_for
from core.order import CreateOrder, Order
from core.states import OrderStatus, Rung


def test_the_plan_has_every_kind_and_amounts_that_pick_its_scenario() -> None:
    orders, strays = plan_day(1000, DEFAULT_MIX, seed=5, tag="t")
    k = kinds_of(orders)
    assert (k["lost"], k["notify"], k["declined"], k["unpaid"], k["unknown"], k["twice"],
            k["mismatch"], strays) == (50, 30, 20, 10, 5, 2, 1, 1)
    assert k["paid"] == 1000 - 118 and len({o.key for o in orders}) == 1000
    want = {"paid": Scenario.PAID, "twice": Scenario.PAID, "notify": Scenario.CONFIRM_LATER,
            "lost": Scenario.COMMIT_DROP_SILENT, "unpaid": Scenario.NEVER_CONFIRM,
            "unknown": Scenario.ERROR, "mismatch": Scenario.ERROR, "declined": Scenario.DECLINED}
    assert {o.kind: scenario_for(o.amount) for o in orders} == want
    mismatch = next(o for o in orders if o.kind == "mismatch")
    assert scenario_for(mismatch.channel_amount) is Scenario.PAID
    assert plan_day(1000, DEFAULT_MIX, 5, "t") == (orders, strays)     # seeded


def test_a_mix_names_known_kinds_and_leaves_paid_orders() -> None:
    assert parse_mix("lost=0.2")["lost"] == 0.2
    for bad in ("lost=2", "nope=0.1", "lost=0.5,notify=0.5"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_expected_reports_of_a_small_day() -> None:
    k = {"paid": 10, "twice": 2, "notify": 3, "lost": 4, "unpaid": 1, "unknown": 1,
         "declined": 2, "mismatch": 1}
    first, second, by_kind = expected_reports(k, strays=1)
    assert (first["lines_parsed"], first["matched"], first["settled_paid"],
            first["settled_closed"], first["refunds_sent"], first["mismatches"]) == \
        (10 + 4 + 3 + 4 + 1 + 1, 17, 4, 2, 2, 4)
    assert (second["lines_parsed"], second["refund_lines"], second["already_settled"],
            second["settled_paid"], second["refunds_already_done"]) == (25, 2, 6, 0, 2)
    assert by_kind == {"amount_mismatch": 1, "missing_in_paycell": 1, "paid_twice": 2}
    report = {"run": 1, "status": "complete", "counts": dict(first),
              "mismatches_by_kind": by_kind}
    assert check_report(report, first, by_kind) == []
    assert check_report(dict(report, counts=dict(first, settled_paid=3)), first, by_kind) == \
        ["run 1: settled_paid 3, expected 4"]


def _order(oid: str, status: OrderStatus, rung: Rung | None, trade_no: str = "") -> Order:
    cmd = CreateOrder("demo-app", oid, "u", 100, "CNY", "s", "alipay", "barcode")
    return replace(Order.new(oid, cmd, 0.0), status=status, resolved_by=rung,
                   channel_trade_no=trade_no)


def test_the_order_check_wants_each_kind_decided_by_its_rung() -> None:
    lost = DayOrder("lost", "k1", 106, "P1")
    paid = DayOrder("paid", "k2", 100, "P2")
    good = {"P1": _order("P1", OrderStatus.SUCCEEDED, Rung.RECONCILE, "T1"),
            "P2": _order("P2", OrderStatus.SUCCEEDED, Rung.NOTIFY)}
    assert check_orders([lost, paid], good) == []
    assert check_orders([lost], {"P1": _order("P1", OrderStatus.PENDING, None)}) == \
        ["lost P1: PENDING by None, expected SUCCEEDED by reconcile"]
    assert check_orders([lost], {"P1": _order("P1", OrderStatus.SUCCEEDED, Rung.RECONCILE)}) \
        == ["lost P1: settled without the channel's trade number"]
    assert set(FINAL) == {"paid", "twice", "notify", "lost", "unpaid", "unknown", "declined",
                          "mismatch"}


def test_the_ledger_check() -> None:
    twice = DayOrder("twice", "k", 100, "P1")
    unpaid = DayOrder("unpaid", "k", 103, "P2")
    trades = {"P1": {"status": "PAID", "charges": 2, "refunded_amount": 100, "refund_calls": 1,
                     "total_amount": 100},
              "P2": {"status": "CLOSED", "charges": 0, "cancel_calls": 1}}
    assert check_ledger([twice, unpaid], trades) == []
    trades["P2"]["cancel_calls"] = 2
    assert len(check_ledger([twice, unpaid], trades)) == 1
