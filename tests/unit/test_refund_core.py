"""The refund lifecycle table, the refund record, the order's refund sums, refund ids on the
wire."""
import itertools
from datetime import date, datetime, timezone

import pytest

from channels.base import (Ack, Capabilities, ChannelResult, ChargeRequest, Notification,
                           NotificationKind, RefundRequest, RefundResult, Statement,
                           StatementKind, StatementLine)
from channels.unionpay import ids as unionpay_ids
from channels.wire_ids import WireIdConnector
from core.ids import (REFUND_ID_RE, from_wire_id, make_order_id, make_refund_id, parse_order_id,
                      parse_refund_id, to_wire_id)
from core.order import CreateOrder, Order
from core.refund import (REFUND_NOOPS, REFUND_TRANSITIONS, CreateRefund, Refund, RefundStatus,
                         apply_refund, reserve, settle)
from core.states import Fact, Outcome, Rung

R = RefundStatus
NOW = 1_764_000_000.0


def test_every_pair_of_the_refund_table_is_a_move_a_noop_or_a_conflict():
    expected_moves = {(R.PENDING, R.SUCCEEDED): R.SUCCEEDED, (R.PENDING, R.FAILED): R.FAILED}
    expected_conflicts = {(R.SUCCEEDED, R.FAILED), (R.FAILED, R.SUCCEEDED)}
    assert REFUND_TRANSITIONS == expected_moves
    assert not set(REFUND_TRANSITIONS) & REFUND_NOOPS
    for status, reported, rung in itertools.product(R, R, Rung):
        d = apply_refund(status, reported, rung)
        if (status, reported) in expected_moves:
            assert (d.outcome, d.status, d.resolved_by) == (
                Outcome.MOVED, expected_moves[(status, reported)], rung)
        elif (status, reported) in expected_conflicts:
            assert (d.outcome, d.status, d.resolved_by) == (Outcome.CONFLICT, status, None)
        else:
            assert (d.outcome, d.status, d.resolved_by) == (Outcome.NOOP, status, None)
        if status.is_final:
            assert d.status is status      # final refunds never move


def paid_order(amount=600):
    cmd = CreateOrder("demo-app", "g-1", "u", amount, "CNY", "gems", "alipay", "barcode")
    order = Order.new("P_local_s0_1_0mhzs5c0000000000000001", cmd, NOW)
    paid, _ = order.learn(Fact.PAID, Rung.SYNC, NOW + 1, channel_trade_no="T1")
    return paid


def test_refund_learns_once_and_round_trips_through_its_record():
    order = paid_order()
    cmd = CreateRefund("demo-app", order.order_id, "r-1", 250, "broken")
    r = Refund.new("R_local_s0_1_0mhzs5c0000000000000009", cmd, order, NOW + 2)
    assert (r.status, r.currency, r.channel, r.fingerprint) == (
        R.PENDING, "CNY", "alipay", cmd.fingerprint())
    same, d = r.learn(R.PENDING, Rung.QUERY, NOW + 3)
    assert same is r and d.outcome is Outcome.NOOP
    failed, d = r.learn(R.FAILED, Rung.SYNC, NOW + 3, failure_code="X", failure_message="no")
    assert failed.to_api()["failure"] == {"code": "X", "message": "no"}
    done, d = r.learn(R.SUCCEEDED, Rung.NOTIFY, NOW + 4, channel_refund_no="CR9",
                      failure_code="ignored")
    assert (done.status, done.resolved_by, done.channel_refund_no, done.failure_code) == (
        R.SUCCEEDED, Rung.NOTIFY, "CR9", "")
    assert Refund.from_record(done.to_record()) == done
    assert Refund.from_record({**done.to_record(), "a_future_field": 1}) == done
    api = done.to_api()
    assert api["created_at"] == "2025-11-24T16:00:02.000Z" and "failure" not in api
    assert (api["status"], api["resolved_by"], api["channel_refund_no"]) == (
        "SUCCEEDED", "notify", "CR9")
    again, d = done.learn(R.FAILED, Rung.QUERY, NOW + 5)
    assert again is done and d.outcome is Outcome.CONFLICT


def test_fingerprint_covers_amount_reason_and_order():
    base = CreateRefund("demo-app", "P_local_s0_1_a", "r", 1, "x")
    assert base.fingerprint() == CreateRefund("demo-app", "P_local_s0_1_a", "r", 1, "x",
                                              received_at=5).fingerprint()
    for other in (CreateRefund("demo-app", "P_local_s0_1_a", "r", 2, "x"),
                  CreateRefund("demo-app", "P_local_s0_1_a", "r", 1, "y"),
                  CreateRefund("demo-app", "P_local_s0_1_b", "r", 1, "x")):
        assert other.fingerprint() != base.fingerprint()


def test_reserve_and_settle_keep_refunded_within_reserved_within_paid():
    order = paid_order(600)
    assert order.paid_at == NOW + 1
    held = reserve(reserve(order, 200), 400)
    assert (held.refund_reserved, held.refunded_amount, held.updated_at) == (
        600, 0, order.updated_at)
    with pytest.raises(AssertionError):
        reserve(held, 1)
    cmd = CreateRefund("demo-app", order.order_id, "a", 200)
    a = Refund.new("R_local_s0_1_a0000000", cmd, order, NOW)
    ok, _ = a.learn(R.SUCCEEDED, Rung.SYNC, NOW + 9)
    after_ok = settle(held, ok, NOW + 9)
    assert (after_ok.refund_reserved, after_ok.refunded_amount, after_ok.updated_at) == (
        600, 200, NOW + 9)
    no, _ = a.learn(R.FAILED, Rung.SYNC, NOW + 9)
    after_no = settle(held, no, NOW + 9)
    assert (after_no.refund_reserved, after_no.refunded_amount) == (400, 0)
    assert Order.from_record(after_ok.to_record()) == after_ok
    old = {k: v for k, v in order.to_record().items() if k != "refund_reserved"}
    assert Order.from_record(old).refund_reserved == 0   # records from before refunds


def test_refund_ids_are_routable_time_ordered_and_fit_32_characters():
    rid = make_refund_id("local", "s0", 1, 1_764_000_000_000, rand=7)
    assert len(rid) == 32 and REFUND_ID_RE.match(rid) and rid.startswith("R_local_s0_1_")
    ref = parse_refund_id(rid)
    assert (ref.region, ref.set_name, ref.shard) == ("local", "s0", 1)
    assert parse_order_id(rid) is None and parse_refund_id(make_order_id("local", "s0", 1, 1)) \
        is None
    later = make_refund_id("local", "s0", 1, 1_764_000_000_001, rand=0)
    assert later > rid
    assert unionpay_ids.embedded_time(rid) == datetime.fromtimestamp(1_764_000_000,
                                                                     tz=timezone.utc)


def test_long_refund_ids_pack_like_order_ids_and_never_collide_with_them():
    rid = make_refund_id("local", "s0", 12, 1_764_000_000_000)     # 33 characters
    oid = "P" + rid[1:]
    assert len(rid) == 33
    rwire, owire = to_wire_id(rid), to_wire_id(oid)
    assert rwire[0] == "V" and owire[0] == "W" and rwire[1:] == owire[1:]
    assert len(rwire) <= 32 and "_" not in rwire
    assert from_wire_id(rwire) == rid and from_wire_id(owire) == oid
    assert from_wire_id("VeryFine") == "VeryFine"   # not a packed id: unchanged
    short = make_refund_id("local", "s0", 1, 1)
    assert to_wire_id(short) == short                 # fits: sent as it is


async def test_wire_id_connector_packs_refund_ids_out_and_unpacks_them_back():
    oid = make_order_id("local", "s0", 12, 1_764_000_000_000)
    rid = make_refund_id("local", "s0", 12, 1_764_000_000_001)
    owire, rwire = to_wire_id(oid), to_wire_id(rid)
    seen: list[tuple[str, str]] = []

    class Inner:
        name = "short"
        capabilities = Capabilities(frozenset({"CNY"}), frozenset({"barcode"}))

        async def charge(self, req: ChargeRequest) -> ChannelResult:
            return ChannelResult(Fact.PAID)

        async def refund(self, req: RefundRequest) -> RefundResult:
            seen.append((req.order_id, req.refund_id))
            return RefundResult(RefundStatus.SUCCEEDED, req.refund_id)

        async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
            seen.append((order_id, refund_id))
            return RefundResult(RefundStatus.PENDING, refund_id)

        def parse_notification(self, body: bytes, headers: object) -> Notification:
            return Notification(owire, Fact.PAID, "T", 1, "CNY", "n", "SUCCESS",
                                kind=NotificationKind.REFUND, refund_id=rwire,
                                refund_status=RefundStatus.SUCCEEDED)

        def ack(self, accepted: bool) -> Ack:
            return Ack(200, "text/plain", b"ok")

        async def statement(self, day: date) -> Statement:
            line = StatementLine(StatementKind.REFUND, owire, "T", 1, "CNY",
                                 datetime.now(timezone.utc), refund_id=rwire)
            return Statement("short", day, (line,))

    c = WireIdConnector(Inner(), 32)  # type: ignore[arg-type]
    res = await c.refund(RefundRequest(oid, rid, 1, 1, "CNY"))
    queried = await c.refund_query(oid, rid, "CNY")
    assert seen == [(owire, rwire)] * 2
    assert res.refund_id == rid and queried.refund_id == rid
    note = c.parse_notification(b"", {})
    assert (note.order_id, note.refund_id) == (oid, rid)
    line = (await c.statement(date.today())).lines[0]
    assert (line.order_id, line.refund_id) == (oid, rid)
