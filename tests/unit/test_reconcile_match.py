"""The statement matcher on hand-made statements and orders: every rule and mismatch kind."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timezone

import pytest
from hypothesis import given, strategies as st

from actors.reconcile_match import (Kind, MatchContext, Settlement, covered_until, day_bounds,
                                    match, refund_id_for)
from actors.reconcile_store import created_ms, day_prefix
from channels.base import Statement, StatementKind, StatementLine
from core.ids import make_order_id, make_refund_id
from core.order import Change, CreateOrder, Order
from core.refund import CreateRefund, Refund, RefundStatus
from core.states import Fact, OrderStatus, Rung

DAY = date(2026, 11, 25)
START, END = day_bounds(DAY)
WINDOW_S = 30.0


def oid(n: int, shard: int = 0, at: float = START + 3600, set_name: str = "s0",
        region: str = "local") -> str:
    return make_order_id(region, set_name, shard, int(at * 1000), rand=n)


def order(order_id: str, status: OrderStatus = OrderStatus.PENDING, amount: int = 600,
          currency: str = "CNY", channel: str = "alipay", created_at: float = START + 3600,
          **kw: object) -> Order:
    cmd = CreateOrder("demo-app", "k-" + order_id[-6:], "u1", amount, currency, "gems", channel,
                      "barcode")
    o = replace(Order.new(order_id, cmd, created_at), status=status, **kw)  # type: ignore[arg-type]
    if status is not OrderStatus.PENDING and "resolved_by" not in kw:
        o = replace(o, resolved_by=Rung.SYNC)
    return o


def pay(order_id: str, amount: int = 600, currency: str = "CNY", trade: str = "T1",
        at: float = START + 3700) -> StatementLine:
    return StatementLine(StatementKind.PAYMENT, order_id, trade, amount, currency,
                         datetime.fromtimestamp(at, timezone.utc))


def refund(order_id: str, amount: int, refund_id: str = "R1",
           at: float = START + 7200) -> StatementLine:
    return StatementLine(StatementKind.REFUND, order_id, "T1", amount, "CNY",
                         datetime.fromtimestamp(at, timezone.utc), refund_id=refund_id)


def ctx(covered: float = END, own: frozenset[str] = frozenset()) -> MatchContext:
    return MatchContext("alipay", DAY, "local", "s0", WINDOW_S, covered, own)


def run(lines: list[StatementLine], orders: list[Order], day_orders: list[Order] | None = None,
        **kw: object):
    statement = Statement("alipay", DAY, tuple(lines))
    records = {o.order_id: o for o in orders}
    ids = {x.order_id for x in lines}
    return match(statement, {i: records.get(i) for i in ids},
                 day_orders if day_orders is not None else orders,
                 ctx(**kw))  # type: ignore[arg-type]


def kinds(plan) -> list[tuple[str, str]]:
    return sorted((f.kind.value, f.order_id) for f in plan.findings)


# ---- settling ------------------------------------------------------------------------------------

def test_a_pending_order_the_statement_shows_paid_is_settled_paid() -> None:
    o = order(oid(1))
    plan = run([pay(o.order_id, trade="2026112522001")], [o])
    assert plan.settle == [Settlement(o.order_id, Fact.PAID, "2026112522001", 600, "CNY")]
    assert plan.findings == [] and plan.close == [] and plan.refunds == []


def test_a_succeeded_order_with_its_one_payment_is_matched() -> None:
    o = order(oid(1), OrderStatus.SUCCEEDED)
    plan = run([pay(o.order_id)], [o])
    assert (plan.counts.get("matched"), plan.settle, plan.findings) == (1, [], [])


def test_a_pending_order_past_its_window_with_no_payment_is_closed() -> None:
    due = order(oid(1), created_at=START + 100)
    plan = run([], [], [due])
    assert plan.close == [due] and plan.settle == []


def test_an_open_order_the_statement_does_not_cover_yet_is_left_alone() -> None:
    # fetched at START + 200 s with the window of 30 s: only orders created before START + 170 s
    early = order(oid(1), created_at=START + 100)
    late = order(oid(2), created_at=START + 180)
    late_paid = order(oid(3), OrderStatus.SUCCEEDED, created_at=START + 180)
    plan = run([], [], [early, late, late_paid], covered=START + 200)
    assert plan.close == [early] and plan.confirm == [] and plan.counts["not_due"] == 2


def test_an_open_order_with_a_line_is_never_closed() -> None:
    o = order(oid(1), created_at=START + 100)
    plan = run([pay(o.order_id, amount=700)], [o])   # a mismatching line: reviewed, not closed
    assert plan.close == [] and plan.settle == [] and kinds(plan) == [
        ("amount_mismatch", o.order_id)]


def test_orders_of_other_channels_are_not_touched() -> None:
    o = order(oid(1), channel="wechatpay", created_at=START + 100)
    plan = run([], [], [o])
    assert plan.close == [] and plan.confirm == [] and plan.counts == {}


def test_settled_orders_count_as_already_settled_on_a_rerun() -> None:
    paid = order(oid(1), OrderStatus.SUCCEEDED, resolved_by=Rung.RECONCILE)
    closed = order(oid(2), OrderStatus.CLOSED, resolved_by=Rung.RECONCILE,
                   failure_code="closed_unpaid")
    plan = run([pay(paid.order_id)], [paid, closed])
    assert sorted(o.order_id for o in plan.already_settled) == sorted([paid.order_id,
                                                                      closed.order_id])
    assert plan.settle == [] and plan.close == [] and plan.findings == []


def test_a_succeeded_order_without_a_payment_line_is_confirmed_by_query() -> None:
    o = order(oid(1), OrderStatus.SUCCEEDED)
    plan = run([], [], [o])
    assert plan.confirm == [o] and plan.findings == []


def test_unpaid_final_orders_without_lines_match() -> None:
    failed = order(oid(1), OrderStatus.FAILED)
    closed = order(oid(2), OrderStatus.CLOSED)
    assert run([], [], [failed, closed]).counts == {"matched": 2}


# ---- mismatches ----------------------------------------------------------------------------------

def test_missing_in_paycell_for_an_unknown_order_and_for_a_foreign_id() -> None:
    lost = oid(9)
    plan = run([pay(lost), pay("merchant-own-123")], [])
    assert kinds(plan) == [("missing_in_paycell", lost), ("missing_in_paycell",
                                                            "merchant-own-123")]
    assert "no such order" in next(f.detail for f in plan.findings if f.order_id == lost)
    assert plan.refunds == [] and plan.settle == []


def test_lines_of_another_set_are_counted_not_judged() -> None:
    plan = run([pay(oid(1, set_name="s1")), pay(oid(2, region="eu"))], [])
    assert plan.findings == [] and plan.counts["other_set_lines"] == 2


def test_amount_and_currency_mismatches_are_reported_and_never_applied() -> None:
    a = order(oid(1))
    b = order(oid(2), OrderStatus.SUCCEEDED)
    plan = run([pay(a.order_id, amount=601), pay(b.order_id, currency="USD")], [a, b])
    assert kinds(plan) == sorted([("amount_mismatch", a.order_id),
                                  ("currency_mismatch", b.order_id)])
    f = next(f for f in plan.findings if f.kind is Kind.AMOUNT_MISMATCH)
    assert (f.paycell["amount"], f.channel["amount"]) == (600, 601)
    assert plan.settle == [] and plan.refunds == []


def test_paid_twice_refunds_every_extra_payment_with_a_deterministic_id() -> None:
    o = order(oid(1), OrderStatus.SUCCEEDED)
    lines = [pay(o.order_id, at=START + 3700), pay(o.order_id, at=START + 3800),
             pay(o.order_id, at=START + 3900)]
    plan = run(lines, [o])
    assert kinds(plan) == [("paid_twice", o.order_id)]
    assert [(r.refund_id, r.line_no, r.amount) for r in plan.refunds] == [
        (refund_id_for("alipay", o.order_id, 2), 2, 600),
        (refund_id_for("alipay", o.order_id, 3), 3, 600)]
    again = run(list(reversed(lines)), [o])
    assert [r.refund_id for r in again.refunds] == [r.refund_id for r in plan.refunds]


def test_a_pending_order_paid_twice_is_settled_and_its_extra_payment_refunded() -> None:
    o = order(oid(1))
    plan = run([pay(o.order_id), pay(o.order_id, at=START + 3800)], [o])
    assert [s.fact for s in plan.settle] == [Fact.PAID]
    assert [r.line_no for r in plan.refunds] == [2]


def test_refund_ids_are_short_lowercase_and_distinct() -> None:
    ids = {refund_id_for(ch, oid(n), line) for ch in ("alipay", "wechatpay")
           for n in range(20) for line in (1, 2, 3)}
    assert len(ids) == 120
    assert all(len(i) == 26 and i.startswith("rc") and i.isalnum() and i == i.lower()
               for i in ids)


def test_status_mismatch_is_verified_before_every_payment_is_refunded() -> None:
    o = order(oid(1), OrderStatus.CLOSED, failure_code="closed_unpaid")
    plan = run([pay(o.order_id)], [o])
    assert kinds(plan) == [("status_mismatch", o.order_id)]
    assert plan.refunds == []                          # only after the query says it is paid
    (v,) = plan.verify
    assert [(r.line_no, r.amount, r.kind) for r in v.refunds] == [(1, 600, Kind.STATUS_MISMATCH)]
    assert v.finding.paycell["status"] == "CLOSED"


def test_a_reversed_order_is_not_a_status_mismatch() -> None:
    by_code = order(oid(1), OrderStatus.CLOSED, failure_code="reversed_after_window")
    by_line = order(oid(2), OrderStatus.CLOSED, failure_code="closed_unpaid")
    plan = run([pay(by_code.order_id), pay(by_line.order_id),
                refund(by_line.order_id, 600, "reverse-x")], [by_code, by_line])
    assert plan.findings == [] and plan.verify == [] and plan.counts["reversed"] == 2


def test_paid_on_a_channel_the_order_left_is_refunded() -> None:
    left = order(oid(1), OrderStatus.SUCCEEDED, channel="wechatpay", tried_channels="alipay")
    never = order(oid(2), OrderStatus.SUCCEEDED, channel="wechatpay")
    plan = run([pay(left.order_id), pay(never.order_id)], [left, never])
    assert kinds(plan) == sorted([("paid_on_other_channel", left.order_id),
                                  ("paid_on_other_channel", never.order_id)])
    assert [r.order_id for r in plan.refunds] == [left.order_id]


def refund_record(o: Order, n: int, amount: int, status: RefundStatus = RefundStatus.SUCCEEDED,
                  resolved_by: Rung | None = Rung.SYNC, at: float = START + 7000) -> Refund:
    rid = make_refund_id("local", "s0", 0, int(at * 1000), rand=n)
    r = Refund.new(rid, CreateRefund(o.app_id, o.order_id, f"rf-{n}", amount), o, at)
    return replace(r, status=status, resolved_by=resolved_by if status.is_final else None)


def test_refund_lines_are_matched_against_paycells_refunds() -> None:
    paid = [order(oid(n), OrderStatus.SUCCEEDED) for n in range(1, 8)]
    ok = refund_record(paid[0], 1, 300)
    pending = refund_record(paid[1], 2, 300, RefundStatus.PENDING)
    failed = refund_record(paid[2], 3, 300, RefundStatus.FAILED)
    differs = refund_record(paid[3], 4, 250)
    settled = refund_record(paid[4], 5, 300, resolved_by=Rung.RECONCILE)
    unpaid = order(oid(9), OrderStatus.FAILED)
    records = [ok, pending, failed, differs, settled]
    lines = [refund(r.order_id, 300, r.refund_id) for r in records]
    lines += [refund(paid[5].order_id, 300, "merchant-console-1"),   # not paycell's
              refund(unpaid.order_id, 600, "R9"), refund(oid(4), 50, "R4")]
    statement = Statement("alipay", DAY, tuple(lines))
    orders = {o.order_id: o for o in [*paid, unpaid]}
    plan = match(statement, {x.order_id: orders.get(x.order_id) for x in lines}, [], ctx(),
                 {r.refund_id: r for r in records})
    assert kinds(plan) == sorted([
        ("refund_mismatch", failed.order_id), ("refund_mismatch", differs.order_id),
        ("refund_mismatch", paid[5].order_id), ("refund_mismatch", unpaid.order_id),
        ("refund_mismatch", oid(4))])
    assert [(s.refund_id, s.status) for s in plan.settle_refunds] == [
        (pending.refund_id, RefundStatus.SUCCEEDED)]
    assert (plan.counts["refunds_matched"], plan.counts["refunds_already_settled"]) == (1, 1)


def test_pending_refunds_past_their_window_without_a_line_are_checked() -> None:
    o = order(oid(1), OrderStatus.SUCCEEDED)
    window_s = ctx().refund_window_s
    old = refund_record(o, 1, 100, RefundStatus.PENDING, at=END - window_s - 10)
    young = refund_record(o, 2, 100, RefundStatus.PENDING, at=END - window_s + 10)
    on_bill = refund_record(o, 3, 100, RefundStatus.PENDING, at=START + 10)
    done = refund_record(o, 4, 100)
    statement = Statement("alipay", DAY, (refund(o.order_id, 100, on_bill.refund_id),))
    plan = match(statement, {o.order_id: o}, [], ctx(), {on_bill.refund_id: on_bill},
                 [old, young, on_bill, done])
    assert plan.refund_checks == [old] and plan.counts["refunds_not_due"] == 1
    assert [s.refund_id for s in plan.settle_refunds] == [on_bill.refund_id]


def test_the_reconcilers_own_refunds_are_recognised() -> None:
    o = order(oid(1), OrderStatus.SUCCEEDED)
    rid = refund_id_for("alipay", o.order_id, 2)
    plan = run([pay(o.order_id), refund(o.order_id, 600, rid)], [o], own=frozenset({rid}))
    assert plan.findings == [] and plan.counts["own_refund_lines"] == 1


def test_a_rerun_plans_the_same_findings_and_refunds() -> None:
    """What a second run sees after the first settled: same mismatches, settled ones counted."""
    pending = order(oid(1))
    twice = order(oid(2), OrderStatus.SUCCEEDED)
    lost = oid(3)
    lines = [pay(pending.order_id), pay(twice.order_id), pay(twice.order_id, at=START + 3900),
             pay(lost)]
    first = run(lines, [pending, twice])
    settled = replace(pending, status=OrderStatus.SUCCEEDED, resolved_by=Rung.RECONCILE,
                      history=(Change(START + 4000, "SUCCEEDED", "PAID", "reconcile"),))
    rid = first.refunds[0].refund_id
    second = run(lines + [refund(twice.order_id, 600, rid)], [settled, twice],
                 own=frozenset({rid}))
    assert kinds(first) == kinds(second) == sorted([("paid_twice", twice.order_id),
                                                    ("missing_in_paycell", lost)])
    assert [r.refund_id for r in second.refunds] == [rid]
    assert second.settle == [] and [o.order_id for o in second.already_settled] == [
        pending.order_id]


# ---- days and ids --------------------------------------------------------------------------------

def test_covered_until_is_the_day_end_or_the_fetch_minus_the_lag() -> None:
    assert covered_until(DAY, END + 86_400, 300) == END
    assert covered_until(DAY, START + 1000, 300) == START + 700


@given(st.integers(min_value=0, max_value=86_399_999), st.integers(min_value=0, max_value=10**9))
def test_ids_of_a_day_carry_its_time_and_share_its_prefix(offset_ms: int, rand: int) -> None:
    at_ms = int(START * 1000) + offset_ms
    order_id = make_order_id("local", "s0", 1, at_ms, rand=rand)
    assert created_ms(order_id) == at_ms
    assert order_id.split("_")[4].startswith(day_prefix(DAY))


def test_the_day_prefix_narrows_the_scan() -> None:
    """A coarse filter (the exact one is the id's time): 3 base-36 digits, about 25 days."""
    assert day_prefix(DAY) == "0mw"
    far = make_order_id("local", "s0", 0, int(START * 1000) - 86_400_000 * 40, rand=1)
    assert not far.split("_")[4].startswith(day_prefix(DAY))
    assert created_ms("P_local_s0_0_short123") is None


@pytest.mark.parametrize("fact", [Fact.DECLINED, Fact.WAITING])
def test_settlements_carry_only_paid_or_closed(fact: Fact) -> None:
    with pytest.raises(AssertionError):
        Settlement(oid(1), fact)


# ---- properties ----------------------------------------------------------------------------------

STATUSES = [OrderStatus.PENDING, OrderStatus.SUCCEEDED, OrderStatus.FAILED, OrderStatus.CLOSED]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Order], list[StatementLine]]:
    orders, lines = [], []
    for n in range(draw(st.integers(0, 8))):
        o = order(oid(n), draw(st.sampled_from(STATUSES)), created_at=START + 100 + n)
        orders.append(o)
        for i in range(draw(st.integers(0, 3))):
            amount = draw(st.sampled_from([o.amount, o.amount, o.amount + 1]))
            lines.append(pay(o.order_id, amount=amount, at=START + 3700 + i))
    for n in range(draw(st.integers(0, 2))):
        lines.append(pay(oid(100 + n)))                    # paid, unknown to paycell
    return orders, lines


@given(worlds())
def test_a_plan_never_refunds_an_orders_own_payment_and_a_rerun_changes_nothing(
        world: tuple[list[Order], list[StatementLine]]) -> None:
    orders, lines = world
    plan = run(lines, orders)
    by_id = {o.order_id: o for o in orders}
    settled = {s.order_id for s in plan.settle}
    closed = {o.order_id for o in plan.close}
    assert not settled & closed
    for s in plan.settle:
        assert by_id[s.order_id].status is OrderStatus.PENDING and s.amount == 600
    for o in plan.close:
        assert o.status is OrderStatus.PENDING and all(x.order_id != o.order_id for x in lines)
    refund_ids = [r.refund_id for r in plan.refunds] + [r.refund_id for v in plan.verify
                                                        for r in v.refunds]
    assert len(refund_ids) == len(set(refund_ids))
    for r in plan.refunds:
        if by_id[r.order_id].status in (OrderStatus.PENDING, OrderStatus.SUCCEEDED):
            assert r.line_no >= 2 and r.kind is Kind.PAID_TWICE
    # apply the plan as the shards would, the refunds as the channel would, and match again
    after = []
    for o in orders:
        if o.order_id in settled | closed:
            status = OrderStatus.SUCCEEDED if o.order_id in settled else OrderStatus.CLOSED
            o = replace(o, status=status, resolved_by=Rung.RECONCILE,
                        history=(Change(END, status.value, "PAID", "reconcile"),))
        after.append(o)
    refunded = [refund(r.order_id, r.amount, r.refund_id) for r in plan.refunds]
    again = run(lines + refunded, after, own=frozenset(refund_ids))
    assert again.settle == [] and again.close == []
    assert kinds(again) == kinds(plan)
    assert [r.refund_id for r in again.refunds] == [r.refund_id for r in plan.refunds]
    assert {o.order_id for o in again.already_settled} == settled | closed


def test_a_payment_of_an_order_a_cancel_was_sent_for_is_left_to_that_cancel() -> None:
    o = order(oid(1), cancel_sent=True)
    plan = run([pay(o.order_id)], [o])
    assert plan.settle == [] and plan.close == [o] and plan.findings == []
