"""The same scenarios against every registered channel's sandbox, over real loopback HTTP with the
channel's real signing: paid, declined, waiting for the payer, timeout then query,
commit-then-drop, duplicate and out-of-order notifications, forged notifications, cancel, refund,
partial refunds, refund over the paid amount, and the day's statement. The sandbox's ledger is
the money truth every scenario checks."""
from __future__ import annotations

import base64
import uuid
from datetime import datetime, timezone

import pytest

from channels.base import (ChannelResult, ChargeRequest, NotificationKind, NotSent,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundStatus,
                           StatementKind)
from core.states import Fact
from tests.conformance.conftest import World, eventually
from tests.conformance.profiles import Profile

pytestmark = pytest.mark.integration

MAJOR = 100          # every conformance currency has 2 decimals
BUSY_DAY_PAYMENTS = 150


def _order(p: Profile, ending: int, major: int = 12) -> ChargeRequest:
    return ChargeRequest(order_id=f"cf{uuid.uuid4().hex[:20]}", amount=major * MAJOR + ending,
                         currency=p.currency, subject="conformance gems",
                         payment_type=p.payment_type, auth_code=p.auth_code,
                         payer_id="u-42", payment_token=p.payment_token)


def _refund(req: ChargeRequest, amount: int, paid: ChannelResult | None = None) -> RefundRequest:
    return RefundRequest(order_id=req.order_id, refund_id=f"rf{uuid.uuid4().hex[:20]}",
                         amount=amount, total_amount=req.amount, currency=req.currency,
                         reason="conformance", channel_trade_no=paid.channel_trade_no if paid else "")


async def _paid(world: World, p: Profile, major: int = 12) -> tuple[ChargeRequest, ChannelResult]:
    req = _order(p, 0, major)
    res = await world.connector(p.channel).charge(req)
    assert res.fact is Fact.PAID, res
    return req, res


async def _refund_final(world: World, p: Profile, rq: RefundRequest) -> RefundStatus:
    """Refund, then follow a PENDING answer by query until it is final."""
    c = world.connector(p.channel)
    res = await c.refund(rq)
    assert res.refund_id == rq.refund_id
    status = res.status
    if status is RefundStatus.PENDING:
        async def done() -> bool:
            nonlocal status
            status = (await c.refund_query(rq.order_id, rq.refund_id, rq.currency)).status
            return status is not RefundStatus.PENDING
        await eventually(done)
    return status


# ---- charges ------------------------------------------------------------------------------

async def test_paid_at_once_with_verified_notification(world: World, profile: Profile) -> None:
    req, res = await _paid(world, profile)
    assert (res.amount, res.currency) == (req.amount, req.currency) and res.channel_trade_no
    row = await world.ledger(profile.channel, req.order_id)
    assert (row["status"], row["charges"], row["total_amount"]) == ("PAID", 1, req.amount)

    async def notified() -> bool:
        return any(n.fact is Fact.PAID for n in world.receiver.notes(profile.channel, req.order_id))
    await eventually(notified)
    note = world.receiver.notes(profile.channel, req.order_id)[0]
    assert (note.kind, note.amount, note.currency, note.channel_trade_no) == (
        NotificationKind.PAYMENT, req.amount, req.currency, res.channel_trade_no)

    async def acked() -> bool:
        return (await world.ledger(profile.channel, req.order_id))["notifies_acked"] >= 1
    await eventually(acked)
    queried = await world.connector(profile.channel).query(req.order_id, req.currency)
    assert (queried.fact, queried.amount, queried.channel_trade_no) == (
        Fact.PAID, req.amount, res.channel_trade_no)


async def test_declined_takes_nothing(world: World, profile: Profile) -> None:
    req = _order(profile, 1)
    res = await world.connector(profile.channel).charge(req)
    assert res.fact is Fact.DECLINED and res.failure_code, res
    row = await world.ledger(profile.channel, req.order_id)
    assert (row["status"], row["charges"]) == ("CLOSED", 0)


async def test_waiting_then_payer_confirms(world: World, profile: Profile) -> None:
    req = _order(profile, 2)
    c = world.connector(profile.channel)
    assert (await c.charge(req)).fact is Fact.WAITING
    assert (await c.query(req.order_id, req.currency)).fact is Fact.WAITING

    async def paid() -> bool:
        return (await c.query(req.order_id, req.currency)).fact is Fact.PAID
    await eventually(paid)
    assert (await world.ledger(profile.channel, req.order_id))["charges"] == 1


async def test_timeout_then_query_finds_it_paid(world: World, profile: Profile) -> None:
    req = _order(profile, 4)
    c = world.connector(profile.channel)
    with pytest.raises(OutcomeUnknown):
        await c.charge(req)
    queried = await c.query(req.order_id, req.currency)
    assert (queried.fact, queried.amount) == (Fact.PAID, req.amount)
    assert (await world.ledger(profile.channel, req.order_id))["charges"] == 1


async def test_commit_then_drop_is_unknown_until_queried(world: World, profile: Profile) -> None:
    req = _order(profile, 5)
    c = world.connector(profile.channel)
    with pytest.raises(OutcomeUnknown):
        await c.charge(req)
    assert (await c.query(req.order_id, req.currency)).fact is Fact.PAID
    assert (await world.ledger(profile.channel, req.order_id))["charges"] == 1


async def test_system_error_is_unknown_and_query_finds_nothing(world: World,
                                                                profile: Profile) -> None:
    req = _order(profile, 7)
    c = world.connector(profile.channel)
    with pytest.raises(OutcomeUnknown):
        await c.charge(req)
    queried = await c.query(req.order_id, req.currency)
    assert queried.exists is False and queried.fact is not Fact.PAID
    assert (await world.ledger(profile.channel, req.order_id)).get("charges", 0) == 0


async def test_repeated_charge_never_charges_twice(world: World, profile: Profile) -> None:
    req, _ = await _paid(world, profile)
    try:   # "already paid" may be a fact or an unknown outcome (then a query): never a charge
        again = await world.connector(profile.channel).charge(req)
        assert again.fact in (Fact.PAID, Fact.DECLINED)
    except OutcomeUnknown:
        pass
    assert (await world.ledger(profile.channel, req.order_id))["charges"] == 1


async def test_unreachable_channel_is_not_sent(world: World, profile: Profile) -> None:
    dead = world.connector(profile.channel, gateway_url="http://127.0.0.1:9/")
    with pytest.raises(NotSent):
        await dead.charge(_order(profile, 0))


# ---- notifications ----------------------------------------------------------------------------

async def test_duplicate_and_out_of_order_notifications(world: World, profile: Profile) -> None:
    req, res = await _paid(world, profile)

    async def one() -> bool:
        return len(world.receiver.notes(profile.channel, req.order_id)) >= 1
    await eventually(one)
    first = world.receiver.notes(profile.channel, req.order_id)[0]
    rq = _refund(req, 300, res)
    assert await _refund_final(world, profile, rq) is RefundStatus.SUCCEEDED
    if profile.sends_refund_notifications:
        async def refund_note() -> bool:
            return any(n.kind is NotificationKind.REFUND
                       for n in world.receiver.notes(profile.channel, req.order_id))
        await eventually(refund_note)
    # the payment notification again, twice, after the refund's: each still verifies and says
    # the same thing (same notification id), so the receiver can recognise the repeat
    for _ in range(2):
        status, _body = await world.post(profile.channel, "replay", out_trade_no=req.order_id,
                                         index=0)
        assert status == 200
    async def replayed() -> bool:
        same = [n for n in world.receiver.notes(profile.channel, req.order_id)
                if n.notify_id == first.notify_id]
        return len(same) >= 3
    await eventually(replayed)
    same = [n for n in world.receiver.notes(profile.channel, req.order_id)
            if n.notify_id == first.notify_id]
    assert {(n.kind, n.fact, n.amount) for n in same} == {(first.kind, Fact.PAID, req.amount)}


async def test_forged_and_tampered_notifications_are_refused(world: World,
                                                             profile: Profile) -> None:
    req, _ = await _paid(world, profile)
    status, forged = await world.post(profile.channel, "forge", out_trade_no=req.order_id,
                                      event="paid")
    assert status == 200
    c = world.connector(profile.channel)
    body = base64.b64decode(forged["body_b64"])
    with pytest.raises(ProtocolError):
        c.parse_notification(body, forged["headers"])

    async def one() -> bool:
        return len(world.receiver.notes(profile.channel, req.order_id)) >= 1
    await eventually(one)
    real = next(r for r in world.receiver.got[profile.channel]
                if r.note is not None and r.note.order_id == req.order_id)
    assert c.parse_notification(real.body, real.headers).order_id == req.order_id
    amount_text = str(req.amount // 100).encode()
    tampered = real.body.replace(amount_text, str(req.amount // 100 + 1).encode(), 1)
    if tampered == real.body:            # encrypted payloads: flip one byte of the body instead
        tampered = real.body[:-2] + bytes([real.body[-2] ^ 1]) + real.body[-1:]
    with pytest.raises(ProtocolError):
        c.parse_notification(tampered, real.headers)


# ---- cancel -----------------------------------------------------------------------------------

async def test_cancel_closes_a_waiting_trade_and_fences_an_unknown_one(
        world: World, profile: Profile) -> None:
    c = world.connector(profile.channel)
    waiting = _order(profile, 3)
    assert (await c.charge(waiting)).fact is Fact.WAITING
    if profile.cancel_closes_waiting:
        closed = await c.cancel(waiting.order_id)
        assert closed.fact is Fact.CLOSED
        assert (await world.ledger(profile.channel, waiting.order_id))["status"] == "CLOSED"
        assert (await c.query(waiting.order_id, waiting.currency)).fact is Fact.CLOSED
    else:   # nothing can stop it: cancel says so, and the payment is left waiting, uncharged
        with pytest.raises(OutcomeUnknown):
            await c.cancel(waiting.order_id)
        row = await world.ledger(profile.channel, waiting.order_id)
        assert (row["status"], row["charges"]) == ("WAITING", 0)
        assert (await c.query(waiting.order_id, waiting.currency)).fact is Fact.WAITING

    unknown = _order(profile, 0)
    fenced = await c.cancel(unknown.order_id)
    assert fenced.fact is Fact.CLOSED
    late = await c.charge(unknown)
    assert late.fact is not Fact.PAID
    assert (await world.ledger(profile.channel, unknown.order_id)).get("charges", 0) == 0


async def test_cancel_of_a_paid_trade(world: World, profile: Profile) -> None:
    req, _ = await _paid(world, profile)
    res = await world.connector(profile.channel).cancel(req.order_id)
    row = await world.ledger(profile.channel, req.order_id)
    if profile.cancel_reverses_paid:
        assert (res.fact, res.action, row["refunded_amount"]) == (Fact.CLOSED, "refund", req.amount)
    else:
        assert (res.fact, row["refunded_amount"], row["status"]) == (Fact.PAID, 0, "PAID")


async def test_followup_outage_fails_query_and_cancel_not_charges(world: World,
                                                                  profile: Profile) -> None:
    """followup_error_rate (bench.chaos's reconcile scenario): a paid trade's query and cancel
    calls fail and change nothing, until the knob is off again."""
    c = world.connector(profile.channel)
    req, _ = await _paid(world, profile)
    await world.knobs(profile.channel, followup_error_rate=1.0)
    try:
        with pytest.raises((OutcomeUnknown, NotSent)):
            await c.query(req.order_id, req.currency)
        with pytest.raises((OutcomeUnknown, NotSent)):
            await c.cancel(req.order_id)
        row = await world.ledger(profile.channel, req.order_id)
        assert (row["status"], row["charges"], row["refunded_amount"]) == ("PAID", 1, 0)
    finally:
        await world.knobs(profile.channel, followup_error_rate=0.0)
    queried = await c.query(req.order_id, req.currency)
    assert (queried.fact, queried.amount) == (Fact.PAID, req.amount)


# ---- refunds ----------------------------------------------------------------------------------

async def test_full_refund_is_idempotent(world: World, profile: Profile) -> None:
    req, res = await _paid(world, profile)
    rq = _refund(req, req.amount, res)
    assert await _refund_final(world, profile, rq) is RefundStatus.SUCCEEDED
    c = world.connector(profile.channel)
    again = await c.refund(rq)
    assert again.status in (RefundStatus.SUCCEEDED, RefundStatus.PENDING)
    row = await world.ledger(profile.channel, req.order_id)
    assert (row["refunded_amount"], row["refunds"], row["charges"]) == (req.amount, 1, 1)
    queried = await c.refund_query(req.order_id, rq.refund_id, req.currency)
    assert (queried.status, queried.amount) == (RefundStatus.SUCCEEDED, req.amount)


async def test_partial_refunds_add_up_to_the_paid_amount(world: World, profile: Profile) -> None:
    req, res = await _paid(world, profile, major=30)
    parts = (1000, req.amount - 1000)
    refunds = [_refund(req, part, res) for part in parts]
    for rq in refunds:
        assert await _refund_final(world, profile, rq) is RefundStatus.SUCCEEDED
    c = world.connector(profile.channel)
    for rq in refunds:
        queried = await c.refund_query(req.order_id, rq.refund_id, req.currency)
        assert (queried.status, queried.amount) == (RefundStatus.SUCCEEDED, rq.amount)
    row = await world.ledger(profile.channel, req.order_id)
    assert (row["refunded_amount"], row["refunds"]) == (req.amount, 2)


async def test_refund_over_the_paid_amount_is_refused(world: World, profile: Profile) -> None:
    req, res = await _paid(world, profile)
    c = world.connector(profile.channel)
    over = await c.refund(_refund(req, req.amount + 1, res))
    assert over.status is RefundStatus.FAILED and over.failure_code, over
    first = _refund(req, 500, res)
    assert await _refund_final(world, profile, first) is RefundStatus.SUCCEEDED
    rest_plus_one = await c.refund(_refund(req, req.amount - 500 + 1, res))
    assert rest_plus_one.status is RefundStatus.FAILED
    row = await world.ledger(profile.channel, req.order_id)
    assert (row["refunded_amount"], row["refunds"]) == (500, 1)


async def test_refund_query_of_an_unknown_refund(world: World, profile: Profile) -> None:
    req, _ = await _paid(world, profile)
    queried = await world.connector(profile.channel).refund_query(
        req.order_id, f"rf{uuid.uuid4().hex[:20]}", req.currency)
    assert queried.exists is False


# ---- statement --------------------------------------------------------------------------------

async def test_statement_lists_payments_and_refunds(world: World, profile: Profile) -> None:
    req, res = await _paid(world, profile, major=40)
    rq = _refund(req, 700, res)
    assert await _refund_final(world, profile, rq) is RefundStatus.SUCCEEDED
    statement = await world.connector(profile.channel).statement(datetime.now(timezone.utc).date())
    mine = [line for line in statement.lines if line.order_id == req.order_id]
    kinds = sorted((line.kind.value, line.amount, line.currency) for line in mine)
    assert kinds == [("payment", req.amount, req.currency), ("refund", 700, req.currency)]
    payment = next(line for line in mine if line.kind is StatementKind.PAYMENT)
    assert payment.channel_trade_no == res.channel_trade_no
    refund = next(line for line in mine if line.kind is StatementKind.REFUND)
    assert refund.refund_id == rq.refund_id
    assert statement.payments_count == sum(1 for x in statement.lines
                                           if x.kind is StatementKind.PAYMENT)
    assert statement.payments_total == sum(x.amount for x in statement.lines
                                           if x.kind is StatementKind.PAYMENT)
    assert statement.refunds_total == sum(x.amount for x in statement.lines
                                          if x.kind is StatementKind.REFUND)


async def test_a_busy_day_statement_is_read_whole(world: World, profile: Profile) -> None:
    """More payments than one page and one 64 KiB read of the answer (Stripe's 100 expanded
    balance transactions are ~70 KiB; a single StreamReader.read cut them, see
    tests/unit/test_transport.py)."""
    c = world.connector(profile.channel)
    reqs = [_order(profile, 0, major=50 + i % 40) for i in range(BUSY_DAY_PAYMENTS)]
    for req in reqs:
        assert (await c.charge(req)).fact is Fact.PAID
    statement = await c.statement(datetime.now(timezone.utc).date())
    lines = {x.order_id: x for x in statement.lines if x.kind is StatementKind.PAYMENT}
    assert [(lines[r.order_id].amount, lines[r.order_id].currency) for r in reqs if
            r.order_id in lines] == [(r.amount, r.currency) for r in reqs]
