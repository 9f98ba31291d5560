"""A local Stripe API (v1, PaymentIntents) that speaks the real wire protocol, mounted at /stripe/.

Followed: the Stripe API reference for API version 2025-03-31.basil (docs.stripe.com/api):
PaymentIntents create/retrieve/list/search/cancel, Refunds create/retrieve/list, Balance
transactions list, Events and webhook signatures (docs.stripe.com/webhooks), idempotent requests
(docs.stripe.com/api/idempotent_requests, /error-low-level) and error shapes (/error-codes). The
official `stripe` Python SDK runs unchanged against it (tests/integration/test_stripe_sdk.py).

What it checks, as Stripe does:
  * ``Authorization: Bearer <secret key>`` (or Basic with the key as user): 401 otherwise;
    a ``Stripe-Version`` header, when sent, must be a version name (400 otherwise);
  * form-encoded bodies with bracketed nesting; required and well-formed parameters (400
    parameter_missing / parameter_invalid_*, amount_too_small / amount_too_large per currency);
  * idempotency on every POST with an ``Idempotency-Key`` (at most 255 characters): the first
    request's endpoint, parameters, status and body are saved once the endpoint runs (500s
    included; validation errors are not saved); the same key with the same parameters replays
    the saved answer with ``Idempotent-Replayed: true`` and charges nothing; with other
    parameters or another endpoint it is refused with 400 idempotency_error; while the first
    request still runs, 409. Keys are pruned after 24 hours.

Charges (``confirm=true``) follow the engine's amount table; in Stripe's words:
  00 200 succeeded; 01 402 card_error card_declined/insufficient_funds (the PaymentIntent stays
  requires_payment_method with last_payment_error); 02/03 200 requires_action (02: the customer
  authenticates later -> succeeded + payment_intent.succeeded); 04 held answer; 05/06 connection
  closed after commit; 07 500 api_error, nothing created; 08 500 api_error after the charge.
A create without ``confirm`` makes an open PaymentIntent (requires_payment_method). Cancel
closes anything not succeeded or canceled (400 payment_intent_unexpected_state otherwise, as
Stripe). Refund refusals: payment_intent_unexpected_state (not paid), amount_too_large,
charge_already_refunded. Webhooks: Event objects (payment_intent.succeeded / .payment_failed /
.canceled, refund.created / refund.updated: Stripe sends these for every refund since
2024-10-28.acacia) signed ``Stripe-Signature: t=..,v1=..`` with the
endpoint secret; a forged one is signed with another secret. Any 2xx acknowledges.

Deviations, all on purpose:
  * the trade is keyed by metadata[paycell_order_id], which the sandbox therefore requires on
    every PaymentIntent; a second create for an order under *another* key answers the existing
    PaymentIntent (Stripe would make a second one) unless the naive_charge knob is on (then it
    charges again, which is what Stripe does without idempotency keys);
  * customers and payment methods are not objects here: any customer id and any ``pm_`` id are
    accepted, and the amount alone decides the outcome;
  * 02/03 answer requires_action: live Stripe usually fails an off-session confirmation that
    needs authentication with authentication_required instead; the waiting path is what the
    sandbox must exercise;
  * the search index is immediately consistent (Stripe's lags, see the connector);
  * webhook endpoints are not configured through the API: the connector names its notify URL in
    the ``Paycell-Sandbox-Webhook-Url`` header of a create; a replayed delivery keeps its first
    signature timestamp (Stripe signs each attempt afresh);
  * the error_rate knob's 500s come from in front of the idempotency layer (not saved);
  * fees are the sandbox's schedule (2.9% + 30 minor units), settled in the charge's currency.
"""
from __future__ import annotations

import random
import secrets
from typing import Any

import orjson
from aiohttp import web

from channels.sandbox import stripe_objects as so
from channels.sandbox.engine import ChannelSandbox, Event, SandboxConfig
from channels.sandbox.ledger import Refund, RefundState, Trade
from channels.sandbox.notifier import Delivery
from channels.stripe import signing

SECRET_KEY = "sk_test_paycellsandbox000000000000000000"   # core.settings' default
WEBHOOK_SECRET = "whsec_paycellsandbox0000000000000000"
WEBHOOK_HEADER = "Paycell-Sandbox-Webhook-Url"


class StripeSandbox(ChannelSandbox):
    name = "stripe"
    trade_no_prefix = "30001"

    def __init__(self, config: SandboxConfig, secret_key: str = SECRET_KEY,
                 webhook_secret: str = WEBHOOK_SECRET) -> None:
        super().__init__(config)
        self.secret_key, self.webhook_secret = secret_key, webhook_secret
        self.attacker_secret = "whsec_" + secrets.token_hex(16)
        self.ids = random.Random(f"{config.seed}:stripe-ids")
        self.intents: dict[str, so.Intent] = {}          # by PaymentIntent id
        self.by_order: dict[str, str] = {}               # paycell order id -> PaymentIntent id
        self.refund_records: dict[str, so.RefundRecord] = {}
        self.refund_by_key: dict[tuple[str, str], str] = {}
        self.refund_meta: dict[tuple[str, str], dict[str, str]] = {}
        self.idempotency = so.IdempotencyKeys()

    def add_routes(self, app: web.Application) -> None:
        from channels.sandbox.stripe_routes import add_routes
        add_routes(app)

    # ---- objects ------------------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        return f"{prefix}_3Sbx" + "".join(self.ids.choice(alphabet) for _ in range(20))

    def live(self, intent: so.Intent | None) -> so.Intent | None:
        """The intent if its trade is still the ledger's (a ledger reset forgets it)."""
        if intent is None or self.ledger.get(intent.trade.out_trade_no) is not intent.trade:
            return None
        return intent

    def intent_of(self, order_id: str) -> so.Intent | None:
        return self.live(self.intents.get(self.by_order.get(order_id, "")))

    def add_intent(self, trade: Trade, params: dict[str, Any], confirmed: bool) -> so.Intent:
        meta = params.get("metadata") or {}
        intent = so.Intent(self.new_id("pi"), trade, dict(meta), str(params.get("payment_method")
                           or ""), str(params.get("customer") or ""),
                           str(params.get("description") or ""), confirmed,
                           int(self.now().timestamp()), self.new_id("ch") if confirmed else "")
        if len(self.intents) >= self.ledger.trades_max:
            self.intents = {k: v for k, v in self.intents.items() if self.live(v)}
        self.intents[intent.id] = intent
        self.by_order[trade.out_trade_no] = intent.id
        return intent

    def drop_intent(self, intent: so.Intent) -> None:
        self.intents.pop(intent.id, None)
        if self.by_order.get(intent.trade.out_trade_no) == intent.id:
            del self.by_order[intent.trade.out_trade_no]

    def record_for(self, intent: so.Intent, refund: Refund) -> so.RefundRecord:
        key = (intent.trade.out_trade_no, refund.out_refund_no)
        rid = self.refund_by_key.get(key)
        record = self.refund_records.get(rid or "")
        if record is None or record.refund is not refund:
            record = so.RefundRecord(self.new_id("re"), intent, refund,
                                     self.refund_meta.pop(key, {}))
            self.refund_records[record.id] = record
            self.refund_by_key[key] = record.id
            intent.refund_ids.append(record.id)
        return record

    # ---- webhooks -----------------------------------------------------------------------------

    def build_notification(self, trade: Trade, event: Event, refund: Refund | None,
                           notify_id: str, *, forged: bool = False) -> Delivery | None:
        intent = self.intent_of(trade.out_trade_no)
        if intent is None:
            return None
        obj: dict[str, Any]
        if event is Event.REFUND:
            if refund is None:
                return None
            obj = self.record_for(intent, refund).to_json()
            etype = "refund.created" if refund.finished == refund.created else "refund.updated"
        elif event is Event.PAID:
            obj, etype = intent.to_json(), "payment_intent.succeeded"
        else:
            obj = intent.to_json()
            etype = ("payment_intent.payment_failed" if obj["status"] == "requires_payment_method"
                     else "payment_intent.canceled")
        now = int(self.now().timestamp())
        body = orjson.dumps(so.event_json(f"evt_1{notify_id}", etype, obj, now))
        secret = self.attacker_secret if forged else self.webhook_secret
        headers = {"Content-Type": "application/json; charset=utf-8",
                   signing.SIGNATURE_HEADER: signing.signature_header(body, secret, now)}
        return Delivery(trade.out_trade_no, trade.notify_url, body, headers, event=event.value)


__all__ = ["StripeSandbox", "SECRET_KEY", "WEBHOOK_SECRET", "RefundState"]
