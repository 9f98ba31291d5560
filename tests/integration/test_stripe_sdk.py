"""The official `stripe` Python SDK, unchanged, against the Stripe sandbox: it performs every call
paycell's connector makes (create + confirm off-session with an Idempotency-Key, retrieve, search,
list, cancel, refund create/retrieve/list, balance transactions) and its webhook helper accepts the
sandbox's signed events and refuses forged ones.

No Ray, no Redis: the sandbox app runs in this process on a loopback port; the SDK is synchronous,
so each call runs in a worker thread while the sandbox serves on the event loop.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, TypeVar

import pytest
import pytest_asyncio
import stripe
from aiohttp import web

from channels.sandbox.app import create_sandbox_app, sandbox_of
from channels.sandbox.engine import Event, SandboxConfig
from channels.sandbox.knobs import Knobs
from channels.sandbox.stripe import SECRET_KEY, WEBHOOK_SECRET, StripeSandbox

pytestmark = pytest.mark.integration

T = TypeVar("T")


class Sandbox:
    def __init__(self, url: str, sb: StripeSandbox) -> None:
        self.url, self.sb = url, sb
        self.client = stripe.StripeClient(SECRET_KEY, base_addresses={"api": url},
                                          max_network_retries=0)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def row(self, order_id: str) -> dict[str, Any]:
        trade = self.sb.ledger.get(order_id)
        return trade.to_json() if trade is not None else {}


@pytest_asyncio.fixture(scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    app = create_sandbox_app(SandboxConfig(seed=3, knobs=Knobs(payer_confirm_ms=200)), ["stripe"])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    sb = sandbox_of(app, "stripe")
    assert isinstance(sb, StripeSandbox)
    try:
        yield Sandbox(f"http://127.0.0.1:{port}/stripe", sb)
    finally:
        await runner.cleanup()


def _create(order_id: str, amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "usd", "customer": "cus_sdk", "confirm": True,
            "off_session": True, "payment_method": "pm_card_visa",
            "payment_method_types": ["card"], "description": "sdk gems",
            "metadata": {"paycell_order_id": order_id}}


def _order() -> str:
    return f"sdk{uuid.uuid4().hex[:16]}"


async def _paid(s: Sandbox, amount: int = 2500) -> tuple[str, stripe.PaymentIntent]:
    order_id = _order()
    pi = await s.call(s.client.v1.payment_intents.create, _create(order_id, amount),
                      {"idempotency_key": order_id})
    assert pi.status == "succeeded"
    return order_id, pi


async def test_create_confirm_is_idempotent_on_its_key(sandbox: Sandbox) -> None:
    s = sandbox
    order_id, pi = await _paid(s)
    assert (pi.amount, pi.amount_received, pi.currency, pi.metadata["paycell_order_id"]) == (
        2500, 2500, "usd", order_id)
    again = await s.call(s.client.v1.payment_intents.create, _create(order_id, 2500),
                         {"idempotency_key": order_id})
    assert again.id == pi.id
    assert again.last_response is not None
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    with pytest.raises(stripe.IdempotencyError):
        await s.call(s.client.v1.payment_intents.create, _create(order_id, 2600),
                     {"idempotency_key": order_id})
    assert (s.row(order_id)["charges"], s.row(order_id)["pay_calls"]) == (1, 1)


async def test_retrieve_search_and_list(sandbox: Sandbox) -> None:
    s = sandbox
    order_id, pi = await _paid(s, 3100)
    got = await s.call(s.client.v1.payment_intents.retrieve, pi.id)
    assert (got.id, got.status, got.latest_charge) == (pi.id, "succeeded", pi.latest_charge)
    found = await s.call(s.client.v1.payment_intents.search,
                         {"query": f"metadata['paycell_order_id']:'{order_id}'"})
    assert [x.id for x in found.data] == [pi.id]
    listed = await s.call(s.client.v1.payment_intents.list,
                          {"customer": "cus_sdk", "created": {"gte": pi.created - 1},
                           "limit": 100})
    assert pi.id in [x.id for x in listed.data]
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await s.call(s.client.v1.payment_intents.retrieve, "pi_does_not_exist")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


async def test_decline_is_a_card_error(sandbox: Sandbox) -> None:
    s = sandbox
    order_id = _order()
    with pytest.raises(stripe.CardError) as declined:
        await s.call(s.client.v1.payment_intents.create, _create(order_id, 2501),
                     {"idempotency_key": order_id})
    assert (declined.value.http_status, declined.value.code) == (402, "card_declined")
    assert declined.value.error is not None
    assert declined.value.error.decline_code == "insufficient_funds"
    assert (s.row(order_id)["status"], s.row(order_id)["charges"]) == ("CLOSED", 0)


async def test_cancel_waiting_then_refused_when_final(sandbox: Sandbox) -> None:
    s = sandbox
    order_id = _order()
    pi = await s.call(s.client.v1.payment_intents.create, _create(order_id, 2503),
                      {"idempotency_key": order_id})
    assert pi.status == "requires_action"
    canceled = await s.call(s.client.v1.payment_intents.cancel, pi.id,
                            {"cancellation_reason": "abandoned"},
                            {"idempotency_key": f"cancel-{pi.id}"})
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "abandoned")
    with pytest.raises(stripe.InvalidRequestError) as again:
        await s.call(s.client.v1.payment_intents.cancel, pi.id, None,
                     {"idempotency_key": f"cancel2-{pi.id}"})
    assert again.value.code == "payment_intent_unexpected_state"
    assert s.row(order_id)["status"] == "CLOSED"


async def test_refunds_and_balance_transactions(sandbox: Sandbox) -> None:
    s = sandbox
    order_id, pi = await _paid(s, 4000)
    refund_id = f"rf{uuid.uuid4().hex[:12]}"
    params = {"payment_intent": pi.id, "amount": 700,
              "metadata": {"paycell_refund_id": refund_id, "paycell_order_id": order_id}}
    refund = await s.call(s.client.v1.refunds.create, params, {"idempotency_key": refund_id})
    assert (refund.status, refund.amount, refund.payment_intent) == ("succeeded", 700, pi.id)
    replay = await s.call(s.client.v1.refunds.create, params, {"idempotency_key": refund_id})
    assert replay.id == refund.id
    got = await s.call(s.client.v1.refunds.retrieve, refund.id)
    assert got.metadata["paycell_refund_id"] == refund_id
    listed = await s.call(s.client.v1.refunds.list, {"payment_intent": pi.id})
    assert [r.id for r in listed.data] == [refund.id]
    with pytest.raises(stripe.InvalidRequestError) as over:
        await s.call(s.client.v1.refunds.create,
                     {"payment_intent": pi.id, "amount": 3301},
                     {"idempotency_key": f"rf{uuid.uuid4().hex[:12]}"})
    assert over.value.code == "amount_too_large"
    assert s.row(order_id)["refunded_amount"] == 700

    day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = int(day.timestamp())
    txns = await s.call(s.client.v1.balance_transactions.list,
                        {"created": {"gte": start, "lt": start + 86400}, "limit": 100,
                         "expand": ["data.source", "data.source.payment_intent"]})
    mine = {}
    for txn in txns.auto_paging_iter():
        source = txn.source
        intent = getattr(source, "payment_intent", None)
        if intent is not None and getattr(intent, "id", "") == pi.id:
            mine[txn.type] = (txn.amount, txn.fee, source.id)
    assert mine["charge"][0] == 4000 and mine["charge"][1] == 4000 * 29 // 1000 + 30
    assert mine["refund"] == (-700, 0, refund.id)


async def test_webhook_construct_event(sandbox: Sandbox) -> None:
    s = sandbox
    order_id, pi = await _paid(s)
    trade = s.sb.ledger.get(order_id)
    assert trade is not None
    real = s.sb.build_notification(trade, Event.PAID, None, "000000010000000000000001")
    assert real is not None
    event = stripe.Webhook.construct_event(real.body.decode(),
                                           real.headers["Stripe-Signature"], WEBHOOK_SECRET)
    assert (event.type, event.data.object["id"]) == ("payment_intent.succeeded", pi.id)
    assert event.data.object["metadata"]["paycell_order_id"] == order_id
    forged = s.sb.build_notification(trade, Event.PAID, None, "000000010000000000000002",
                                     forged=True)
    assert forged is not None
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(forged.body.decode(), forged.headers["Stripe-Signature"],
                                       WEBHOOK_SECRET)
    tampered = real.body.replace(b'"amount":2500', b'"amount":2600', 1)
    assert tampered != real.body
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered.decode(), real.headers["Stripe-Signature"],
                                       WEBHOOK_SECRET)


async def test_wrong_api_key_is_refused(sandbox: Sandbox) -> None:
    s = sandbox
    bad = stripe.StripeClient("sk_test_not_the_sandbox_key_000000", base_addresses={"api": s.url},
                              max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        await s.call(bad.v1.payment_intents.retrieve, "pi_x")
