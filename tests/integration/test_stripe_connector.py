"""The Stripe connector's lookups and cancel fence against the in-process sandbox (no Ray, no
Redis), beyond the conformance suite: which answers are certain, across connector instances."""
from __future__ import annotations

import uuid
from typing import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from channels.base import (ChargeRequest, Connector, OutcomeUnknown, RefundRequest,
                           RefundStatus)
from channels.registry import build_connector
from channels.sandbox.app import create_sandbox_app, sandbox_of
from channels.sandbox.engine import ChannelSandbox, SandboxConfig
from core.settings import Settings, load_settings
from core.states import Fact

pytestmark = pytest.mark.integration


class World:
    def __init__(self, settings: Settings, http: aiohttp.ClientSession, sb: ChannelSandbox):
        self.settings, self.http, self.sb = settings, http, sb

    def connector(self) -> Connector:
        return build_connector("stripe", self.settings, "", self.http)

    def charges(self, order_id: str) -> int:
        trade = self.sb.ledger.get(order_id)
        return trade.charges if trade is not None else 0


@pytest_asyncio.fixture(scope="module")
async def world() -> AsyncIterator[World]:
    app = create_sandbox_app(SandboxConfig(seed=11), ["stripe"])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    settings = load_settings(env={}, overrides={"sandbox": {"port": runner.addresses[0][1]}})
    async with aiohttp.ClientSession() as http:
        try:
            yield World(settings, http, sandbox_of(app, "stripe"))
        finally:
            await runner.cleanup()


def _req(amount: int) -> ChargeRequest:
    return ChargeRequest(f"sc{uuid.uuid4().hex[:12]}", amount, "USD", "gems", "card",
                         payer_id="cus_9", payment_token="pm_card_visa")


async def test_an_empty_search_is_not_proof_but_the_senders_list_is(world: World) -> None:
    sender, other = world.connector(), world.connector()
    req = _req(1207)
    with pytest.raises(OutcomeUnknown):
        await sender.charge(req)
    mine = await sender.query(req.order_id, "USD")
    assert (mine.exists, mine.fact) == (False, Fact.WAITING)
    with pytest.raises(OutcomeUnknown):       # search only: the index may lag
        await other.query(req.order_id, "USD")


async def test_a_fence_from_one_connector_stops_a_late_charge_from_another(world: World) -> None:
    req = _req(1200)
    fenced = await world.connector().cancel(req.order_id)
    assert (fenced.fact, fenced.action) == (Fact.CLOSED, "close")
    late = await world.connector().charge(req)
    assert (late.fact, late.channel_trade_no) == (Fact.CLOSED, fenced.channel_trade_no)
    again = await world.connector().cancel(req.order_id)
    assert (again.fact, again.channel_trade_no) == (Fact.CLOSED, fenced.channel_trade_no)
    assert world.charges(req.order_id) == 0


async def test_a_key_holding_a_saved_500_is_closed_for_its_sender(world: World) -> None:
    sender = world.connector()
    req = _req(1207)
    with pytest.raises(OutcomeUnknown):
        await sender.charge(req)
    closed = await sender.cancel(req.order_id)
    assert (closed.fact, closed.raw_status) == (Fact.CLOSED, "key_held_without_intent")
    with pytest.raises(OutcomeUnknown):       # the same create replays the saved 500
        await sender.charge(req)
    with pytest.raises(OutcomeUnknown):       # a connector without the sender's list: unknown
        await world.connector().cancel(req.order_id)
    assert world.charges(req.order_id) == 0


async def test_cancel_of_a_declined_order_cancels_its_intent(world: World) -> None:
    c = world.connector()
    req = _req(1201)
    declined = await c.charge(req)
    assert (declined.fact, declined.failure_code) == (Fact.DECLINED, "insufficient_funds")
    queried = await world.connector().query(req.order_id, "USD")
    assert (queried.fact, queried.failure_code) == (Fact.DECLINED, "insufficient_funds")
    closed = await world.connector().cancel(req.order_id)
    assert (closed.fact, closed.raw_status) == (Fact.CLOSED, "canceled")
    assert world.charges(req.order_id) == 0


async def test_refund_without_the_payment_id_finds_it(world: World) -> None:
    c = world.connector()
    req = _req(2000)
    paid = await c.charge(req)
    assert paid.fact is Fact.PAID
    rq = RefundRequest(req.order_id, f"rf{uuid.uuid4().hex[:10]}", 500, req.amount, "USD")
    res = await world.connector().refund(rq)
    assert (res.status, res.amount) == (RefundStatus.SUCCEEDED, 500)
    conflicting = await world.connector().refund(RefundRequest(
        req.order_id, rq.refund_id, 600, req.amount, "USD", channel_trade_no=paid.channel_trade_no))
    assert (conflicting.status, conflicting.amount, conflicting.channel_refund_no) == (
        RefundStatus.SUCCEEDED, 500, res.channel_refund_no)
