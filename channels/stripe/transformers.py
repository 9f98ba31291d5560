"""Pure Stripe request builders and answer mappers; `now` is passed in, nothing does I/O.

Stripe takes form-encoded parameters with bracketed nesting (channels.stripe.forms) and answers
JSON. Amounts are integers in the
currency's smallest unit, which for every currency paycell routes to Stripe (USD, EUR, GBP, HKD,
SGD: cents; JPY: zero-decimal yen) is exactly paycell's minor unit, so no conversion happens;
currencies are lowercase on the wire and uppercase in paycell.

What a PaymentIntent's status proves about the money (paycell never asks for manual capture):
  succeeded                                  paid                        -> Fact.PAID
  requires_action / processing / requires_confirmation / requires_capture
                                             not (yet) paid, may still be -> Fact.WAITING
  requires_payment_method + last_payment_error
                                             the confirmation was declined; nothing taken, and
                                             nothing can be unless someone confirms it again
                                             (paycell never does)        -> Fact.DECLINED
  requires_payment_method, no error          created, never confirmed    -> Fact.WAITING
  canceled                                   closed, nothing taken       -> Fact.CLOSED

Error answers of POST /v1/payment_intents (docs.stripe.com/error-low-level, /error-codes):
  402 card_error (code, decline_code)        declined, nothing charged   -> Fact.DECLINED
  400 invalid_request_error                  refused before any money    -> Fact.DECLINED
  400 idempotency_error                      the order's key holds another request (the cancel
                                             fence): IdempotencyConflict, the connector looks
                                             the PaymentIntent up
  401 / 403                                  refused before execution    -> NotSent
  429 rate_limit                             "rate limiters run before the API's idempotency
                                             layer": the request was not processed -> NotSent
  409 (the key is in use by a request still running), 5xx, api_error -> OutcomeUnknown
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

import orjson

from channels.base import (ChannelResult, ChargeRequest, Notification, NotificationKind, NotSent,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus, Statement, StatementKind, StatementLine)
from core.states import Fact

API_VERSION = "2025-03-31.basil"
ORDER_KEY = "paycell_order_id"
REFUND_KEY = "paycell_refund_id"
FENCE_KEY = "paycell_fence"
# The cancel fence holds the order's idempotency key with a PaymentIntent nobody confirms; its
# amount is irrelevant but must pass Stripe's minimum for the currency.
FENCE_AMOUNT, FENCE_CURRENCY = 50, "usd"
CANCELLATION_REASON = "abandoned"
DESCRIPTION_MAX_CHARS = 1000         # Stripe's limit for description
METADATA_VALUE_MAX_CHARS = 500       # Stripe's limit for a metadata value
IDEMPOTENCY_KEY_MAX_CHARS = 255
LIST_LIMIT = 100                     # Stripe's page size maximum
NOTIFY_BODY_MAX_BYTES = 262_144

# Currencies whose Stripe amount unit equals paycell's minor unit (core.money exponents).
CURRENCIES = frozenset({"USD", "EUR", "GBP", "HKD", "SGD", "JPY"})

WAITING_STATUSES = frozenset({"requires_action", "processing", "requires_confirmation",
                              "requires_capture"})
REFUND_STATUSES: dict[str, RefundStatus] = {
    "succeeded": RefundStatus.SUCCEEDED,
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}
PAYMENT_EVENTS = frozenset({"payment_intent.succeeded", "payment_intent.payment_failed",
                            "payment_intent.canceled", "payment_intent.processing",
                            "payment_intent.requires_action"})
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed",
                           "charge.refund.updated"})
PAYMENT_TXN_TYPES = frozenset({"charge", "payment"})
REFUND_TXN_TYPES = frozenset({"refund", "payment_refund"})
_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")


class IdempotencyConflict(OutcomeUnknown):
    """400 idempotency_error: the key was used before with other parameters (or another
    endpoint). For a charge, the order's key holds the cancel fence (or an earlier request):
    the PaymentIntent under it says what happened."""
    code = "channel_idempotency_conflict"


@dataclass(frozen=True, slots=True)
class StripeError:
    status: int
    type: str
    code: str
    decline_code: str
    message: str
    payment_intent: Mapping[str, Any] | None


# ---- requests -------------------------------------------------------------------------------

def valid_api_version(text: str) -> bool:
    return bool(_VERSION_RE.match(text))


def create_params(req: ChargeRequest) -> dict[str, Any]:
    """POST /v1/payment_intents: create and confirm off-session with a saved payment method."""
    assert req.currency in CURRENCIES and req.payment_type == "card", (req.currency,
                                                                         req.payment_type)
    assert req.amount > 0 and req.payment_token, "amount and payment_token are required"
    params: dict[str, Any] = {
        "amount": req.amount,
        "currency": req.currency.lower(),
        "payment_method": req.payment_token,
        "payment_method_types": ["card"],
        "confirm": True,
        "off_session": True,
        "description": req.subject[:DESCRIPTION_MAX_CHARS],
        "metadata": {ORDER_KEY: req.order_id},
    }
    if req.payer_id:
        params["customer"] = req.payer_id
    return params


def fence_params(order_id: str) -> dict[str, Any]:
    """POST /v1/payment_intents under the order's own Idempotency-Key, never confirmed: once it
    holds the key, a late charge for the order is refused (400 idempotency_error)."""
    return {
        "amount": FENCE_AMOUNT, "currency": FENCE_CURRENCY,
        "payment_method_types": ["card"],
        "description": "paycell: order canceled before it was charged",
        "metadata": {ORDER_KEY: order_id, FENCE_KEY: "cancel"},
    }


def cancel_params() -> dict[str, Any]:
    return {"cancellation_reason": CANCELLATION_REASON}


def refund_params(req: RefundRequest, payment_intent: str) -> dict[str, Any]:
    assert req.amount > 0, req.amount
    return {"payment_intent": payment_intent, "amount": req.amount,
            "metadata": {REFUND_KEY: req.refund_id, ORDER_KEY: req.order_id}}


def search_query(order_id: str) -> str:
    """Stripe search query language: metadata['paycell_order_id']:'<id>' (quotes escaped)."""
    escaped = order_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"metadata['{ORDER_KEY}']:'{escaped}'"


def window_params(customer: str, sent_at: int, slack_s: int,
                  starting_after: str = "") -> dict[str, Any]:
    """GET /v1/payment_intents (a list: strongly consistent, unlike search) for the PaymentIntents
    a create sent at `sent_at` could have made."""
    params: dict[str, Any] = {"limit": LIST_LIMIT,
                              "created": {"gte": sent_at - slack_s, "lte": sent_at + slack_s}}
    if customer:
        params["customer"] = customer
    if starting_after:
        params["starting_after"] = starting_after
    return params


def day_bounds(day: date) -> tuple[int, int]:
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    return int(start.timestamp()), int((start + timedelta(days=1)).timestamp())


def balance_params(day: date, starting_after: str = "") -> dict[str, Any]:
    gte, lt = day_bounds(day)
    params: dict[str, Any] = {"limit": LIST_LIMIT, "created": {"gte": gte, "lt": lt},
                              "expand": ["data.source", "data.source.payment_intent"]}
    if starting_after:
        params["starting_after"] = starting_after
    return params


def cancel_key(pi_id: str, nonce: str) -> str:
    """A cancel is idempotent by state (canceling twice changes nothing), so each cancel() call
    gets a fresh key: a saved 500 for an earlier attempt must not be replayed forever."""
    return f"cancel-{pi_id}-{nonce}"[:IDEMPOTENCY_KEY_MAX_CHARS]


# ---- answers --------------------------------------------------------------------------------

def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("stripe answer is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("stripe answer is not a JSON object")
    return data


def read_error(status: int, payload: Mapping[str, Any]) -> StripeError:
    err = payload.get("error")
    if not isinstance(err, Mapping):
        raise ProtocolError(f"stripe HTTP {status} without an error object")
    pi = err.get("payment_intent")
    return StripeError(status, str(err.get("type") or ""), str(err.get("code") or ""),
                       str(err.get("decline_code") or ""), str(err.get("message") or ""),
                       pi if isinstance(pi, Mapping) else None)


def raise_transport(err: StripeError, what: str) -> None:
    """Errors that say the request was not processed, or that its outcome is unknown."""
    if err.status == 429 or err.status in (401, 403):
        raise NotSent(f"{what}: stripe refused before processing (HTTP {err.status} {err.type})")
    if err.status == 409 or err.status >= 500 or err.type == "api_error":
        raise OutcomeUnknown(f"{what}: stripe HTTP {err.status} {err.type} {err.code}".rstrip())
    if err.type == "idempotency_error":
        raise IdempotencyConflict(f"{what}: {err.message}")


def _object(payload: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    if payload.get("object") != kind or not isinstance(payload.get("id"), str):
        raise ProtocolError(f"stripe answer is not a {kind}")
    return payload


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def order_of(pi: Mapping[str, Any]) -> str:
    return str(_metadata(pi).get(ORDER_KEY) or "")


def is_fence(pi: Mapping[str, Any]) -> bool:
    return bool(_metadata(pi).get(FENCE_KEY))


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"stripe {what} is not a non-negative integer")
    return value


def _currency(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in CURRENCIES:
        raise ProtocolError("stripe currency is missing or not one paycell handles")
    return value.upper()


def fact_of(pi: Mapping[str, Any]) -> Fact:
    status = str(pi.get("status") or "")
    if status == "succeeded":
        return Fact.PAID
    if status == "canceled":
        return Fact.CLOSED
    if status == "requires_payment_method":
        return Fact.DECLINED if pi.get("last_payment_error") else Fact.WAITING
    if status in WAITING_STATUSES:
        return Fact.WAITING
    raise ProtocolError(f"stripe PaymentIntent status {status!r} is unknown")


def map_intent(payload: Mapping[str, Any], order_id: str) -> ChannelResult:
    """A PaymentIntent (create, retrieve, search, cancel answers) as paycell's fact."""
    pi = _object(payload, "payment_intent")
    if order_of(pi) != order_id:
        raise ProtocolError("stripe PaymentIntent belongs to another order")
    fact = fact_of(pi)
    status = str(pi["status"])
    if fact is Fact.PAID:
        received = _int(pi.get("amount_received"), "amount_received")
        return ChannelResult(Fact.PAID, str(pi["id"]), received, _currency(pi.get("currency")),
                             status)
    if fact is Fact.DECLINED:
        err = pi.get("last_payment_error")
        code, message = _error_words(err if isinstance(err, Mapping) else {})
        return ChannelResult(Fact.DECLINED, str(pi["id"]), raw_status=status,
                             failure_code=code, failure_message=message)
    return ChannelResult(fact, str(pi["id"]), raw_status=status,
                         action="close" if fact is Fact.CLOSED else "")


def _error_words(err: Mapping[str, Any]) -> tuple[str, str]:
    code = str(err.get("decline_code") or err.get("code") or err.get("type") or "declined")
    return code, str(err.get("message") or "")


def map_charge(status: int, payload: Mapping[str, Any], req: ChargeRequest) -> ChannelResult:
    """The answer to the create-and-confirm of one order."""
    if status == 200:
        res = map_intent(payload, req.order_id)
        if is_fence(payload):
            raise ProtocolError("stripe replayed the cancel fence for a charge")
        if res.fact is Fact.PAID and (res.amount, res.currency) != (req.amount, req.currency):
            raise ProtocolError("stripe paid another amount or currency than asked")
        return res
    err = read_error(status, payload)
    raise_transport(err, "create payment_intent")
    if err.status == 402 and err.type == "card_error":
        code = err.decline_code or err.code or "card_declined"
        return ChannelResult(Fact.DECLINED, str((err.payment_intent or {}).get("id") or ""),
                             raw_status=f"{err.type}/{err.code}", failure_code=code,
                             failure_message=err.message)
    if err.status == 400 and err.type == "invalid_request_error":
        return ChannelResult(Fact.DECLINED, raw_status=err.type,
                             failure_code=err.code or err.type, failure_message=err.message)
    raise ProtocolError(f"create payment_intent: unexpected HTTP {status} {err.type}")


def map_read(status: int, payload: Mapping[str, Any], what: str) -> Mapping[str, Any] | None:
    """A GET's object, or None for 404 resource_missing (the object certainly does not exist)."""
    if status == 200:
        return payload
    err = read_error(status, payload)
    raise_transport(err, what)
    if status == 404 and err.code == "resource_missing":
        return None
    raise ProtocolError(f"{what}: unexpected HTTP {status} {err.type} {err.code}")


def page_of(payload: Mapping[str, Any], kind: str) -> tuple[list[Mapping[str, Any]], bool]:
    """(objects, has_more) of a list or search_result answer."""
    if payload.get("object") != kind or not isinstance(payload.get("data"), list):
        raise ProtocolError(f"stripe answer is not a {kind}")
    data = [d for d in payload["data"] if isinstance(d, Mapping)]
    if len(data) != len(payload["data"]):
        raise ProtocolError(f"stripe {kind} holds a non-object")
    return data, bool(payload.get("has_more"))


def pick_intent(intents: Sequence[Mapping[str, Any]], order_id: str) -> Mapping[str, Any] | None:
    """The PaymentIntent that speaks for the order among several (an idempotency key is kept 24 h,
    so only a retry days later could make a second): a paid one first, then an open one."""
    mine = [pi for pi in intents if order_of(pi) == order_id and pi.get("object") == "payment_intent"]
    rank = {Fact.PAID: 0, Fact.WAITING: 1, Fact.DECLINED: 2, Fact.CLOSED: 3}
    mine.sort(key=lambda pi: rank.get(fact_of(pi), 4))
    return mine[0] if mine else None


def map_cancel(status: int, payload: Mapping[str, Any], order_id: str) -> ChannelResult | None:
    """The cancel's answer: CLOSED, or None when Stripe refused it because of the PaymentIntent's
    state (the connector then reads the PaymentIntent afresh)."""
    if status == 200:
        res = map_intent(payload, order_id)
        if res.fact is not Fact.CLOSED:
            raise ProtocolError("stripe canceled a PaymentIntent that is not canceled")
        return res
    err = read_error(status, payload)
    raise_transport(err, "cancel payment_intent")
    if err.status == 400 and err.code == "payment_intent_unexpected_state":
        return None
    raise ProtocolError(f"cancel payment_intent: unexpected HTTP {status} {err.type} {err.code}")


def map_refund_object(payload: Mapping[str, Any], refund_id: str) -> RefundResult:
    refund = _object(payload, "refund")
    if str(_metadata(refund).get(REFUND_KEY) or "") != refund_id:
        raise ProtocolError("stripe refund belongs to another paycell refund")
    raw = str(refund.get("status") or "")
    status = REFUND_STATUSES.get(raw)
    if status is None:
        raise ProtocolError(f"stripe refund status {raw!r} is unknown")
    failure = str(refund.get("failure_reason") or "") if status is RefundStatus.FAILED else ""
    return RefundResult(status, refund_id, str(refund["id"]), _int(refund.get("amount"), "amount"),
                        _currency(refund.get("currency")), raw,
                        failure_code=failure or (raw if status is RefundStatus.FAILED else ""))


def map_refund(status: int, payload: Mapping[str, Any], refund_id: str) -> RefundResult:
    """The answer to POST /v1/refunds. Stripe's refusals (amount_too_large,
    charge_already_refunded, payment_intent_unexpected_state, charge_disputed ...) are FAILED:
    no money moved."""
    if status == 200:
        return map_refund_object(payload, refund_id)
    err = read_error(status, payload)
    raise_transport(err, "create refund")
    if err.status in (400, 402) and err.type in ("invalid_request_error", "card_error"):
        return RefundResult(RefundStatus.FAILED, refund_id, raw_status=err.type,
                            failure_code=err.code or err.type, failure_message=err.message)
    raise ProtocolError(f"create refund: unexpected HTTP {status} {err.type}")


def pick_refund(refunds: Sequence[Mapping[str, Any]], refund_id: str) -> Mapping[str, Any] | None:
    for refund in refunds:
        if str(_metadata(refund).get(REFUND_KEY) or "") == refund_id:
            return refund
    return None


# ---- notifications --------------------------------------------------------------------------

def map_event(event: Mapping[str, Any]) -> Notification:
    """A verified Event as a Notification; ProtocolError for events paycell does not handle
    (subscribe the endpoint to PAYMENT_EVENTS and REFUND_EVENTS only) or objects not made by
    paycell (no paycell metadata)."""
    etype, event_id = event.get("type"), event.get("id")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if event.get("object") != "event" or not isinstance(event_id, str) or not event_id \
            or not isinstance(obj, Mapping):
        raise ProtocolError("stripe webhook is not an event with data.object")
    if etype in PAYMENT_EVENTS:
        pi = _object(obj, "payment_intent")
        order_id = order_of(pi)
        if not order_id:
            raise ProtocolError("stripe event for a PaymentIntent paycell did not make")
        res = map_intent(pi, order_id)
        amount = res.amount if res.fact is Fact.PAID else _int(pi.get("amount"), "amount")
        return Notification(order_id, res.fact, res.channel_trade_no, amount,
                            _currency(pi.get("currency")), event_id, str(etype))
    if etype in REFUND_EVENTS:
        refund = _object(obj, "refund")
        meta = _metadata(refund)
        order_id, refund_id = str(meta.get(ORDER_KEY) or ""), str(meta.get(REFUND_KEY) or "")
        if not order_id or not refund_id:
            raise ProtocolError("stripe event for a refund paycell did not make")
        result = map_refund_object(refund, refund_id)
        return Notification(order_id, Fact.PAID, str(refund.get("payment_intent") or ""), None,
                            result.currency, event_id, str(etype), NotificationKind.REFUND,
                            refund_id, result.status, result.amount)
    raise ProtocolError(f"stripe event type {etype!r} is not one paycell handles")


# ---- statement ------------------------------------------------------------------------------

def _source_intent(source: Mapping[str, Any]) -> Mapping[str, Any]:
    pi = source.get("payment_intent")
    return pi if isinstance(pi, Mapping) else {}


def statement_line(txn: Mapping[str, Any]) -> StatementLine | None:
    """One balance transaction as a statement line (None for payouts, fees, adjustments ...).
    The line's amount and currency are the charge's or refund's own (the expanded source), since
    the balance transaction's are in the settlement currency; its fee is kept only when both
    currencies agree. The paycell ids come from metadata: the PaymentIntent's (expanded
    data.source.payment_intent) and the refund's; a line without them (a charge not made by
    paycell) keeps an empty order_id for the reconciler to report."""
    kind_text = txn.get("type")
    if kind_text not in PAYMENT_TXN_TYPES and kind_text not in REFUND_TXN_TYPES:
        return None
    source = txn.get("source")
    if not isinstance(source, Mapping):
        raise ProtocolError("stripe balance transaction source is not expanded")
    pi = _source_intent(source)
    currency = _currency(source.get("currency"))
    amount = _int(source.get("amount"), "source amount")
    fee = _int(txn.get("fee"), "fee") if _currency(txn.get("currency")) == currency else 0
    at = datetime.fromtimestamp(_int(txn.get("created"), "created"), timezone.utc)
    if kind_text in PAYMENT_TXN_TYPES:
        return StatementLine(StatementKind.PAYMENT, order_of(pi), str(pi.get("id") or ""),
                             amount, currency, at, fee=fee, raw_status=str(txn.get("status") or ""))
    meta = _metadata(source)
    order_id = str(meta.get(ORDER_KEY) or "") or order_of(pi)
    return StatementLine(StatementKind.REFUND, order_id, str(pi.get("id") or ""), amount,
                         currency, at, refund_id=str(meta.get(REFUND_KEY) or ""),
                         channel_refund_no=str(source.get("id") or ""), fee=fee,
                         raw_status=str(txn.get("status") or ""))


def build_statement(day: date, txns: Iterable[Mapping[str, Any]]) -> Statement:
    """Stripe's balance history has no summary of its own: the totals are computed."""
    lines = sorted((line for line in (statement_line(t) for t in txns) if line is not None),
                   key=lambda line: line.at)
    payments = [x for x in lines if x.kind is StatementKind.PAYMENT]
    return Statement("stripe", day, tuple(lines), payments_count=len(payments),
                     payments_total=sum(x.amount for x in payments),
                     refunds_total=sum(x.amount for x in lines if x.kind is StatementKind.REFUND))
