"""The Stripe sandbox's objects: PaymentIntents, refunds, charges, events and balance transactions
as Stripe renders them (api.stripe.com JSON), over the shared ledger's trades and refunds, plus
Stripe's error bodies and its idempotency-key store."""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from channels.sandbox.ledger import Refund, RefundState, Trade, TradeStatus
from channels.stripe import transformers as tf

DOC_URL = "https://stripe.com/docs/error-codes/"
IDEMPOTENCY_KEYS_MAX = 200_000
IDEMPOTENCY_TTL_S = 24 * 3600          # Stripe prunes keys "at least 24 hours old"
FEE_PER_MILLE, FEE_FIXED = 29, 30      # the sandbox's fee schedule: 2.9% + 30 minor units
CANCELABLE = ("requires_payment_method, requires_capture, requires_confirmation, "
              "requires_action, processing")
REFUND_STATUS = {RefundState.SUCCESS: "succeeded", RefundState.PROCESSING: "pending",
                 RefundState.FAILED: "failed"}
# Stripe's minimum charge amounts (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts)
MINIMUM_AMOUNT = {"usd": 50, "eur": 50, "gbp": 30, "hkd": 400, "sgd": 50, "jpy": 50}
AMOUNT_MAX = 99_999_999


def unix(at: datetime | None) -> int | None:
    return int(at.timestamp()) if at is not None else None


@dataclass
class Intent:
    """Stripe's view of one trade: what the create asked and what happened since."""
    id: str
    trade: Trade
    metadata: dict[str, str]
    payment_method: str
    customer: str
    description: str
    confirmed: bool
    created: int
    charge_id: str = ""
    last_error: dict[str, str] | None = None
    canceled_at: int | None = None
    cancellation_reason: str | None = None
    refund_ids: list[str] = field(default_factory=list)

    def status(self) -> str:
        t = self.trade
        if t.status is TradeStatus.PAID:
            return "succeeded"
        if self.canceled_at is not None:
            return "canceled"
        if t.status is TradeStatus.CLOSED and self.last_error is not None:
            return "requires_payment_method"     # declined: Stripe keeps it open, unpaid
        if t.status is TradeStatus.CLOSED:
            return "canceled"
        return "requires_action" if self.confirmed else "requires_payment_method"

    def to_json(self) -> dict[str, Any]:
        t, status = self.trade, self.status()
        paid = status == "succeeded"
        return {
            "id": self.id, "object": "payment_intent", "amount": t.total_amount,
            "amount_capturable": 0, "amount_received": t.total_amount if paid else 0,
            "capture_method": "automatic", "confirmation_method": "automatic",
            "canceled_at": self.canceled_at, "cancellation_reason": self.cancellation_reason,
            "client_secret": f"{self.id}_secret_sandbox", "created": self.created,
            "currency": t.currency.lower(), "customer": self.customer or None,
            "description": self.description or None,
            "last_payment_error": self.last_error if status == "requires_payment_method" else None,
            "latest_charge": self.charge_id if paid or self.last_error else None,
            "livemode": False,
            "metadata": dict(self.metadata),
            "next_action": {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            if status == "requires_action" else None,
            "payment_method": self.payment_method or None, "payment_method_types": ["card"],
            "setup_future_usage": None, "status": status,
        }


@dataclass
class RefundRecord:
    id: str
    intent: Intent
    refund: Refund                       # the ledger's
    metadata: dict[str, str]

    def to_json(self, expand_intent: bool = False) -> dict[str, Any]:
        r = self.refund
        return {
            "id": self.id, "object": "refund", "amount": r.amount,
            "balance_transaction": txn_id(self.id) if r.state is RefundState.SUCCESS else None,
            "charge": self.intent.charge_id or None, "created": unix(r.created),
            "currency": self.intent.trade.currency.lower(),
            "failure_reason": "unknown" if r.state is RefundState.FAILED else None,
            "metadata": dict(self.metadata),
            "payment_intent": self.intent.to_json() if expand_intent else self.intent.id,
            "reason": None, "status": REFUND_STATUS[r.state],
        }


def txn_id(source_id: str, n: int = 0) -> str:
    return f"txn_{source_id.split('_', 1)[1]}{'' if n == 0 else f'_{n}'}"


def fee_of(amount: int) -> int:
    return amount * FEE_PER_MILLE // 1000 + FEE_FIXED


def charge_json(intent: Intent, expand_intent: bool) -> dict[str, Any]:
    t = intent.trade
    return {
        "id": intent.charge_id, "object": "charge", "amount": t.total_amount,
        "amount_captured": t.total_amount, "amount_refunded": t.refunded_amount,
        "captured": True, "created": unix(t.paid), "currency": t.currency.lower(),
        "customer": intent.customer or None, "metadata": {}, "paid": True,
        "payment_intent": intent.to_json() if expand_intent else intent.id,
        "payment_method": intent.payment_method or None,
        "refunded": t.fully_refunded, "status": "succeeded",
    }


def payment_txns(intent: Intent, expand: frozenset[str]) -> list[dict[str, Any]]:
    """One balance transaction per time the trade was charged (more than one: a double charge)."""
    t = intent.trade
    if t.paid is None or not intent.charge_id:
        return []
    source: Any = intent.charge_id
    if "data.source" in expand:
        source = charge_json(intent, "data.source.payment_intent" in expand)
    fee = fee_of(t.total_amount)
    return [{
        "id": txn_id(intent.charge_id, n), "object": "balance_transaction",
        "amount": t.total_amount, "available_on": unix(t.paid), "created": unix(t.paid),
        "currency": t.currency.lower(), "description": intent.description or None,
        "exchange_rate": None, "fee": fee,
        "fee_details": [{"amount": fee, "application": None, "currency": t.currency.lower(),
                         "description": "Stripe processing fees", "type": "stripe_fee"}],
        "net": t.total_amount - fee, "reporting_category": "charge", "source": source,
        "status": "available", "type": "charge",
    } for n in range(t.charges)]


def refund_txn(record: RefundRecord, expand: frozenset[str]) -> dict[str, Any] | None:
    r = record.refund
    if r.state is not RefundState.SUCCESS or r.finished is None:
        return None
    source: Any = record.id
    if "data.source" in expand:
        source = record.to_json(expand_intent="data.source.payment_intent" in expand)
    currency = record.intent.trade.currency.lower()
    return {
        "id": txn_id(record.id), "object": "balance_transaction", "amount": -r.amount,
        "available_on": unix(r.finished), "created": unix(r.finished), "currency": currency,
        "description": "REFUND FOR CHARGE", "exchange_rate": None, "fee": 0, "fee_details": [],
        "net": -r.amount, "reporting_category": "refund", "source": source,
        "status": "available", "type": "refund",
    }


def event_json(event_id: str, etype: str, obj: Mapping[str, Any], created: int) -> dict[str, Any]:
    return {"id": event_id, "object": "event", "api_version": tf.API_VERSION, "created": created,
            "data": {"object": dict(obj)}, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": etype}


def list_json(url: str, data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


# ---- errors, in Stripe's shape --------------------------------------------------------------

def error(message: str, etype: str = "invalid_request_error", code: str = "",
          param: str = "", **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": etype}
    if code:
        err["code"], err["doc_url"] = code, DOC_URL + code.replace("_", "-")
    if param:
        err["param"] = param
    err.update(extra)
    return {"error": err}


def api_error() -> dict[str, Any]:
    return error("An unknown error occurred", "api_error")


def missing(param: str) -> dict[str, Any]:
    return error(f"Missing required param: {param}.", code="parameter_missing", param=param)


def invalid(param: str, message: str) -> dict[str, Any]:
    return error(message, code="parameter_invalid_integer" if param == "amount"
                 else "parameter_invalid_string", param=param)


def no_such(kind: str, ident: str, param: str) -> dict[str, Any]:
    return error(f"No such {kind}: '{ident}'", code="resource_missing", param=param)


DECLINE_MESSAGE = "Your card has insufficient funds."


def declined(intent: Intent) -> dict[str, Any]:
    assert intent.last_error is not None
    return {"error": {**intent.last_error, "doc_url": DOC_URL + "card-declined",
                      "charge": intent.charge_id or None, "payment_intent": intent.to_json(),
                      "payment_method": {"id": intent.payment_method,
                                         "object": "payment_method", "type": "card"}}}


def decline_error() -> dict[str, str]:
    return {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
            "message": DECLINE_MESSAGE}


def cannot_cancel(intent: Intent) -> dict[str, Any]:
    status = intent.status()
    return error(f"You cannot cancel this PaymentIntent because it has a status of {status}. "
                 f"Only a PaymentIntent with one of the following statuses may be canceled: "
                 f"{CANCELABLE}.", code="payment_intent_unexpected_state",
                 payment_intent=intent.to_json())


# ---- idempotency keys -----------------------------------------------------------------------

@dataclass
class Saved:
    endpoint: str
    params: tuple[tuple[str, str], ...]
    created: float
    status: int = 0                      # 0: the first request is still executing
    body: bytes = b""
    request_id: str = ""


class IdempotencyKeys:
    """Stripe's idempotency layer: per key, the first request's endpoint and parameters and, once
    it has run, its status and body (any status, 500s included); bounded, oldest pruned first
    and never kept past IDEMPOTENCY_TTL_S."""

    def __init__(self, keys_max: int = IDEMPOTENCY_KEYS_MAX) -> None:
        self._saved: OrderedDict[str, Saved] = OrderedDict()
        self._max = keys_max

    def get(self, key: str) -> Saved | None:
        saved = self._saved.get(key)
        if saved is not None and time.monotonic() - saved.created > IDEMPOTENCY_TTL_S:
            del self._saved[key]
            return None
        return saved

    def begin(self, key: str, endpoint: str, params: tuple[tuple[str, str], ...]) -> Saved:
        saved = self._saved[key] = Saved(endpoint, params, time.monotonic())
        while len(self._saved) > self._max:
            self._saved.popitem(last=False)
        return saved

    def forget(self, key: str) -> None:
        self._saved.pop(key, None)

    def clear(self) -> None:
        self._saved.clear()
