"""PayPal-only behaviour against its sandbox, beyond the shared suite: the OAuth2 token cache and
its refresh after a 401, refused credentials, the fence under the request id, the retention
window, refunds found without the capture id, vaulted wallets, and statement pagination."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from channels.base import (ChargeRequest, NotSent, OutcomeUnknown, RefundRequest, RefundStatus,
                           StatementKind)
from core.ids import make_order_id
from core.states import Fact
from tests.conformance.conftest import World

pytestmark = pytest.mark.integration

CHANNEL = "paypal"


def _order(ending: int, major: int = 12, order_id: str = "") -> ChargeRequest:
    return ChargeRequest(order_id or f"pp{uuid.uuid4().hex[:20]}", major * 100 + ending, "USD",
                         "gems", "card", payment_token="8kk8451t")


async def test_token_is_cached_and_renewed_once_after_a_401(world: World) -> None:
    c = world.connector(CHANNEL)
    assert (await c.charge(_order(0))).fact is Fact.PAID
    status, body = await world.post(CHANNEL, "expire_tokens")
    assert status == 200 and body["expired"] >= 1
    assert (await c.charge(_order(0))).fact is Fact.PAID          # renewed, then charged
    # the renewed token is cached: another call issues no new token
    status, body = await world.post(CHANNEL, "expire_tokens")
    assert body["expired"] >= 1
    first = await c.query((req := _order(0)).order_id, "USD")
    assert first.exists is False                                  # a fence, after one renewal
    late = await c.charge(req)
    assert late.fact is Fact.CLOSED and late.failure_code == "ORDER_FENCED"
    assert (await world.ledger(CHANNEL, req.order_id))["charges"] == 0


async def test_refused_client_credentials_send_nothing(world: World) -> None:
    c = world.connector(CHANNEL, client_secret="not-the-secret")
    req = _order(0)
    with pytest.raises(NotSent):
        await c.charge(req)
    assert await world.ledger(CHANNEL, req.order_id) == {}


async def test_older_than_request_id_retention_is_not_guessed(world: World) -> None:
    old_ms = int(datetime.now(timezone.utc).timestamp() * 1000) - 7 * 3600 * 1000
    order_id = make_order_id("us", "a", 1, old_ms, rand=5)
    c = world.connector(CHANNEL)
    for call in (c.query(order_id, "USD"), c.cancel(order_id)):
        with pytest.raises(OutcomeUnknown):
            await call
    assert await world.ledger(CHANNEL, order_id) == {}           # nothing was sent


async def test_refund_and_cancel_find_the_capture_by_order_id(world: World) -> None:
    req = _order(0, major=20)
    assert (await world.connector(CHANNEL).charge(req)).fact is Fact.PAID
    fresh = world.connector(CHANNEL)                   # no cached PayPal ids: fence replays
    refund = await fresh.refund(RefundRequest(req.order_id, f"rf{uuid.uuid4().hex[:12]}", 500,
                                              req.amount, "USD"))
    assert (refund.status, refund.amount) == (RefundStatus.SUCCEEDED, 500)
    cancelled = await world.connector(CHANNEL).cancel(req.order_id)
    assert (cancelled.fact, cancelled.action) == (Fact.CLOSED, "refund")
    row = await world.ledger(CHANNEL, req.order_id)
    assert (row["refunded_amount"], row["refunds"], row["charges"]) == (req.amount, 2, 1)
    again = await world.connector(CHANNEL).cancel(req.order_id)    # nothing left to give back
    assert (again.fact, again.action) == (Fact.CLOSED, "refund")
    assert (await world.ledger(CHANNEL, req.order_id))["refunds"] == 2


async def test_refund_of_an_unpaid_order_fails(world: World) -> None:
    c = world.connector(CHANNEL)
    req = _order(1)
    assert (await c.charge(req)).fact is Fact.DECLINED
    res = await c.refund(RefundRequest(req.order_id, "rf-declined", 100, req.amount, "USD"))
    assert (res.status, res.failure_code) == (RefundStatus.FAILED, "ORDER_NOT_PAID")
    pending = _order(3)
    assert (await c.charge(pending)).fact is Fact.WAITING
    waiting = await c.query(pending.order_id, "USD")
    res = await c.refund(RefundRequest(pending.order_id, "rf-pending", 100, pending.amount, "USD",
                                       channel_trade_no=waiting.channel_trade_no))
    assert (res.status, res.failure_code) == (RefundStatus.FAILED, "PENDING_CAPTURE")


async def test_vaulted_wallet_decline(world: World) -> None:
    c = world.connector(CHANNEL, vault_source="paypal")
    req = _order(1)
    res = await c.charge(req)
    assert (res.fact, res.failure_code) == (Fact.DECLINED, "INSTRUMENT_DECLINED")
    assert (await c.charge(req)).fact is Fact.DECLINED        # the same request id: same answer
    assert (await c.charge(_order(0))).fact is Fact.PAID


async def test_a_repeat_under_the_request_id_replays_the_order(world: World) -> None:
    c = world.connector(CHANNEL)
    req = _order(0)
    first = await c.charge(req)
    again = await world.connector(CHANNEL).charge(req)
    assert (again.fact, again.channel_trade_no) == (Fact.PAID, first.channel_trade_no)
    row = await world.ledger(CHANNEL, req.order_id)
    assert (row["pay_calls"], row["charges"]) == (1, 1)


async def test_statement_counts_a_new_payment_with_its_fee(world: World) -> None:
    c = world.connector(CHANNEL)
    day = datetime.now(timezone.utc).date()
    before = await c.statement(day)
    req = _order(0, major=7)
    assert (await c.charge(req)).fact is Fact.PAID
    after = await c.statement(day)
    assert after.payments_count == before.payments_count + 1
    assert after.payments_total == before.payments_total + req.amount
    mine = [x for x in after.lines if x.order_id == req.order_id]
    assert [(x.kind, x.amount, x.fee) for x in mine] == [
        (StatementKind.PAYMENT, 700, (700 * 349 + 5000) // 10000)]
