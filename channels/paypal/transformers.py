"""Pure PayPal REST request builders and answer mappers (Orders v2, Payments v2, Transaction
Search, webhooks); nothing does I/O. Amounts cross the wire as decimal strings ("12.34") and are
converted to and from minor units only here, with core.money's integer helpers.

What PayPal's answers prove about the money:

  create order (intent CAPTURE, vaulted payment_source)
    201/200 COMPLETED + capture COMPLETED / PARTIALLY_REFUNDED / REFUNDED -> Fact.PAID
    201/200 COMPLETED + capture PENDING                                   -> Fact.WAITING
    201/200 COMPLETED + capture DECLINED / FAILED                         -> Fact.DECLINED
    201/200 PAYER_ACTION_REQUIRED / APPROVED / CREATED (with a source)    -> Fact.WAITING
            (paycell never calls /capture, so such an order can take no money without us)
    201/200 CREATED without payment_source: the request id was first used by a fence (below)
                                                                          -> Fact.CLOSED
    400 / 403 / 422 with any issue but DUPLICATE_INVOICE_ID: the order was not created
                                                                          -> Fact.DECLINED
    409, 422 DUPLICATE_INVOICE_ID, 5xx, anything else                     -> OutcomeUnknown

The fence. PayPal order ids are PayPal's; only the PayPal-Request-Id (= paycell's order id) is
ours. Within PayPal's retention of that id (6 hours by default for Orders v2; configurable up to
72 hours) a create with the same id returns the order the id first created and never makes
another. query/cancel therefore send a *fence*: a create under the same id with no
payment_source (so it can never take money: it would need the payer's approval and our capture,
and paycell never captures). If the id was unused, PayPal creates that harmless CREATED order, so
paycell learns for certain that no charge exists, and a late charge under the id replays the
fence instead of charging. If the id was used, the answer is the real order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Mapping

from channels.base import (ChannelResult, ChargeRequest, Notification, NotificationKind,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus, StatementKind, StatementLine)
from core.ids import ORDER_ID_RE
from core.money import decimal_str_to_minor, minor_to_decimal_str
from core.states import Fact

CURRENCIES = frozenset({"USD", "EUR", "GBP", "HKD"})
PAYMENT_TYPE = "card"
VAULT_SOURCES = frozenset({"card", "paypal"})

TOKEN_PATH = "/v1/oauth2/token"
ORDERS_PATH = "/v2/checkout/orders"
CAPTURES_PATH = "/v2/payments/captures"
REFUNDS_PATH = "/v2/payments/refunds"
TRANSACTIONS_PATH = "/v1/reporting/transactions"

FENCE_MARK = "paycell-fence"           # custom_id of a fence order
FENCE_VALUE = "1.00"                   # a fence order's amount (it is never approved)
DESCRIPTION_MAX_CHARS = 127
NOTE_MAX_CHARS = 255
REQUEST_ID_MAX_CHARS = 108
PAGE_SIZE_MAX = 500                    # Transaction Search's largest page
NOTIFY_BODY_MAX_BYTES = 65_536

CAPTURE_PAID = frozenset({"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"})
CAPTURE_DECLINED = frozenset({"DECLINED", "FAILED"})
ORDER_WAITING = frozenset({"CREATED", "SAVED", "APPROVED", "PAYER_ACTION_REQUIRED"})
# 4xx issues on a create that do NOT prove the charge was refused.
UNKNOWN_ISSUES = frozenset({"DUPLICATE_INVOICE_ID", "PREVIOUS_REQUEST_IN_PROGRESS",
                            "DUPLICATE_REQUEST_ID"})
REFUND_STATUS = {"COMPLETED": RefundStatus.SUCCEEDED, "PENDING": RefundStatus.PENDING,
                 "FAILED": RefundStatus.FAILED, "CANCELLED": RefundStatus.FAILED}
PAYMENT_EVENTS = frozenset({"PAYMENT.CAPTURE.COMPLETED", "PAYMENT.CAPTURE.PENDING",
                            "PAYMENT.CAPTURE.DENIED", "PAYMENT.CAPTURE.DECLINED"})
ORDER_EVENTS = frozenset({"CHECKOUT.ORDER.COMPLETED", "CHECKOUT.ORDER.APPROVED"})
REFUND_EVENTS = frozenset({"PAYMENT.CAPTURE.REFUNDED"})
REFUND_EVENT_CODE = "T1107"            # payment refund, initiated by the merchant
SETTLED = "S"                          # Transaction Search transaction_status: success


# ---- amounts, ids, time -----------------------------------------------------------------------

def to_value(amount: int, currency: str) -> str:
    assert isinstance(amount, int) and amount >= 0 and currency in CURRENCIES, (amount, currency)
    return minor_to_decimal_str(amount, currency)


def from_money(money: object, currency: str = "") -> tuple[int, str]:
    """(minor units, currency) of a PayPal money object; ProtocolError when malformed, in a
    currency paycell does not take, or not the `currency` expected."""
    if not isinstance(money, Mapping):
        raise ProtocolError("paypal money is not an object")
    code, value = money.get("currency_code"), money.get("value")
    if code not in CURRENCIES or (currency and code != currency) or not isinstance(value, str):
        raise ProtocolError("paypal money: unexpected currency or value")
    negative = value.startswith("-")
    try:
        minor = decimal_str_to_minor(value[1:] if negative else value, code)
    except ValueError:
        raise ProtocolError("paypal money: malformed value") from None
    return (-minor if negative else minor), code


def order_created_ms(order_id: str) -> int | None:
    """When a paycell order id was made (its token starts with base-36 milliseconds)."""
    m = ORDER_ID_RE.match(order_id)
    return int(m.group(4)[:9], 36) if m else None


def within_retention(order_id: str, now_ms: int, retention_s: int) -> bool:
    """False when a paycell order is older than PayPal keeps its request id (minus a minute):
    then a fence could create a new order instead of finding the old one. Ids that are not
    paycell's (no embedded time) are taken as recent."""
    created = order_created_ms(order_id)
    return created is None or now_ms - created < (retention_s - 60) * 1000


def check_request_id(request_id: str) -> str:
    assert 0 < len(request_id) <= REQUEST_ID_MAX_CHARS, request_id
    return request_id


def iso_utc(moment: datetime) -> str:
    assert moment.tzinfo is not None, "aware datetimes only"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime:
    """PayPal's Internet date-time ("2024-05-01T10:00:00Z" or "...+0000")."""
    if not isinstance(text, str):
        raise ProtocolError("paypal time is not a string")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
        except ValueError:
            raise ProtocolError("paypal time is malformed") from None


# ---- OAuth2 -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    expires_at: float                  # monotonic seconds


def parse_token(payload: Mapping[str, Any], now_mono: float, margin_s: int) -> Token:
    token, kind, ttl = (payload.get("access_token"), payload.get("token_type"),
                        payload.get("expires_in"))
    if (not isinstance(token, str) or not token or str(kind).lower() != "bearer"
            or not isinstance(ttl, int) or ttl <= 0):
        raise ProtocolError("paypal token answer lacks access_token, Bearer or expires_in")
    return Token(token, now_mono + max(ttl - margin_s, ttl // 2))


# ---- requests ---------------------------------------------------------------------------------

def charge_body(req: ChargeRequest, vault_source: str) -> dict[str, Any]:
    """Create-order body of a merchant-initiated charge of a vaulted payment method."""
    assert req.currency in CURRENCIES and req.payment_type == PAYMENT_TYPE, req.currency
    assert req.amount > 0 and req.payment_token and vault_source in VAULT_SOURCES
    source: dict[str, Any] = {"vault_id": req.payment_token}
    if vault_source == "card":
        source["stored_credential"] = {"payment_initiator": "MERCHANT",
                                       "payment_type": "UNSCHEDULED", "usage": "SUBSEQUENT"}
    return {
        "intent": "CAPTURE",
        "purchase_units": [{
            "reference_id": req.order_id, "invoice_id": req.order_id, "custom_id": req.order_id,
            "description": req.subject[:DESCRIPTION_MAX_CHARS],
            "amount": {"currency_code": req.currency, "value": to_value(req.amount, req.currency)},
        }],
        "payment_source": {vault_source: source},
    }


def fence_body(order_id: str, currency: str) -> dict[str, Any]:
    """A create that can never take money: no payment_source, never approved, never captured."""
    return {
        "intent": "CAPTURE",
        "purchase_units": [{
            "reference_id": order_id, "custom_id": FENCE_MARK,
            "description": "paycell fence: never approved, never captured",
            "amount": {"currency_code": currency, "value": FENCE_VALUE},
        }],
    }


def refund_body(req: RefundRequest) -> dict[str, Any]:
    assert req.amount > 0 and req.currency in CURRENCIES, (req.amount, req.currency)
    body: dict[str, Any] = {
        "amount": {"currency_code": req.currency, "value": to_value(req.amount, req.currency)},
        "invoice_id": req.refund_id, "custom_id": req.order_id,
    }
    if req.reason:
        body["note_to_payer"] = req.reason[:NOTE_MAX_CHARS]
    return body


def transactions_params(day: date, page: int, page_size: int = PAGE_SIZE_MAX) -> dict[str, str]:
    assert 1 <= page_size <= PAGE_SIZE_MAX and page >= 1
    return {"start_date": f"{day.isoformat()}T00:00:00Z",
            "end_date": f"{day.isoformat()}T23:59:59Z",
            "fields": "all", "page_size": str(page_size), "page": str(page)}


# ---- orders -----------------------------------------------------------------------------------

def _unit(order: Mapping[str, Any]) -> Mapping[str, Any]:
    units = order.get("purchase_units")
    if not isinstance(units, list) or not units or not isinstance(units[0], Mapping):
        raise ProtocolError("paypal order without purchase_units")
    return units[0]


def _payments(order: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    payments = _unit(order).get("payments") or {}
    if not isinstance(payments, Mapping):
        raise ProtocolError("paypal order: malformed payments")
    items = payments.get(kind) or []
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise ProtocolError(f"paypal order: malformed payments.{kind}")
    return items


def is_fence(order: Mapping[str, Any]) -> bool:
    """The order a fence created: no payment source, never approved."""
    return (order.get("status") == "CREATED" and not order.get("payment_source")
            and _unit(order).get("custom_id") == FENCE_MARK)


def order_id_of(order: Mapping[str, Any]) -> str:
    paypal_id = order.get("id")
    if not isinstance(paypal_id, str) or not paypal_id:
        raise ProtocolError("paypal order without id")
    return paypal_id


def check_order(order: Mapping[str, Any], order_id: str) -> None:
    unit = _unit(order)
    for key in ("reference_id", "invoice_id"):
        got = unit.get(key)
        if got is not None and got != order_id:
            raise ProtocolError("paypal answered for another order")


def capture_of(order: Mapping[str, Any]) -> Mapping[str, Any] | None:
    captures = _payments(order, "captures")
    return captures[0] if captures else None


def map_order(order: Mapping[str, Any], order_id: str) -> ChannelResult:
    """What an order representation says about paycell's order (create answer or GET)."""
    paypal_id = order_id_of(order)
    check_order(order, order_id)
    status = str(order.get("status") or "")
    if is_fence(order):
        return ChannelResult(Fact.CLOSED, raw_status="CREATED", failure_code="ORDER_FENCED",
                             failure_message="no charge under this PayPal-Request-Id",
                             exists=False)
    if status in ORDER_WAITING:
        return ChannelResult(Fact.WAITING, raw_status=status)
    if status == "VOIDED":
        return ChannelResult(Fact.CLOSED, raw_status=status)
    if status != "COMPLETED":
        raise ProtocolError("paypal order: unknown status")
    capture = capture_of(order)
    if capture is None:
        raise ProtocolError(f"paypal order {paypal_id} COMPLETED without a capture")
    return map_capture(capture, f"{status}/")


def map_capture(capture: Mapping[str, Any], prefix: str = "") -> ChannelResult:
    cid, cstatus = capture.get("id"), str(capture.get("status") or "")
    if not isinstance(cid, str) or not cid:
        raise ProtocolError("paypal capture without id")
    raw = prefix + cstatus
    details = capture.get("status_details") or {}
    reason = str(details.get("reason") or "") if isinstance(details, Mapping) else ""
    if cstatus in CAPTURE_PAID:
        amount, currency = from_money(capture.get("amount"))
        return ChannelResult(Fact.PAID, cid, amount, currency, raw)
    if cstatus == "PENDING":
        return ChannelResult(Fact.WAITING, cid, raw_status=raw, failure_message=reason)
    if cstatus in CAPTURE_DECLINED:
        processor = capture.get("processor_response") or {}
        code = (str(processor.get("response_code") or "") if isinstance(processor, Mapping)
                else "")
        return ChannelResult(Fact.DECLINED, cid, raw_status=raw,
                             failure_code=code or reason or f"CAPTURE_{cstatus}",
                             failure_message=reason)
    raise ProtocolError("paypal capture: unknown status")


# ---- errors -----------------------------------------------------------------------------------

def issue_of(payload: Mapping[str, Any]) -> str:
    """The first details[].issue of a PayPal error answer (else its name)."""
    details = payload.get("details")
    if isinstance(details, list) and details and isinstance(details[0], Mapping):
        issue = details[0].get("issue")
        if isinstance(issue, str) and issue:
            return issue
    return str(payload.get("name") or payload.get("error") or "")


def map_create_error(status: int, payload: Mapping[str, Any]) -> ChannelResult:
    """A non-2xx answer to a charge's create order."""
    issue = issue_of(payload)
    if status in (400, 403, 422) and issue not in UNKNOWN_ISSUES:
        return ChannelResult(Fact.DECLINED, raw_status=f"{status}/{payload.get('name', '')}",
                             failure_code=issue or f"HTTP_{status}",
                             failure_message=str(payload.get("message") or "")[:200])
    raise OutcomeUnknown(f"paypal create order answered {status} {issue}")


# ---- refunds ----------------------------------------------------------------------------------

def map_refund(refund: Mapping[str, Any], refund_id: str, currency: str) -> RefundResult:
    """A refund representation (POST answer, GET, or an order's payments.refunds[])."""
    paypal_id, status = refund.get("id"), str(refund.get("status") or "")
    if not isinstance(paypal_id, str) or not paypal_id:
        raise ProtocolError("paypal refund without id")
    got = refund.get("invoice_id")
    if got is not None and got != refund_id:
        raise ProtocolError("paypal answered for another refund")
    mapped = REFUND_STATUS.get(status)
    if mapped is None:
        raise ProtocolError("paypal refund: unknown status")
    amount = from_money(refund["amount"], currency)[0] if refund.get("amount") else None
    details = refund.get("status_details") or {}
    reason = str(details.get("reason") or "") if isinstance(details, Mapping) else ""
    return RefundResult(mapped, refund_id, paypal_id, amount, currency, status,
                        failure_code=reason if mapped is RefundStatus.FAILED else "",
                        failure_message=reason)


def map_refund_error(status: int, payload: Mapping[str, Any], refund_id: str,
                     currency: str) -> RefundResult:
    """A 4xx to a refund POST: PayPal refused it and no refund was made."""
    issue = issue_of(payload)
    if status in (400, 403, 404, 422) and issue not in UNKNOWN_ISSUES:
        return RefundResult(RefundStatus.FAILED, refund_id, currency=currency,
                            raw_status=f"{status}/{payload.get('name', '')}",
                            failure_code=issue or f"HTTP_{status}",
                            failure_message=str(payload.get("message") or "")[:200])
    raise OutcomeUnknown(f"paypal refund answered {status} {issue}")


def find_refund(order: Mapping[str, Any], refund_id: str) -> Mapping[str, Any] | None:
    """The order's refund whose invoice_id is paycell's refund id."""
    found = [r for r in _payments(order, "refunds") if r.get("invoice_id") == refund_id]
    if len(found) > 1:
        raise ProtocolError("paypal order lists one refund id twice")
    return found[0] if found else None


def refundable(order: Mapping[str, Any]) -> tuple[str, int, str]:
    """(capture id, amount not yet refunded or on its way back, currency) of a paid order."""
    capture = capture_of(order)
    if capture is None:
        raise ProtocolError("paypal order has no capture to refund")
    captured, currency = from_money(capture.get("amount"))
    committed = sum(from_money(r.get("amount"), currency)[0]
                    for r in _payments(order, "refunds")
                    if r.get("status") in ("COMPLETED", "PENDING"))
    return str(capture["id"]), max(captured - committed, 0), currency


# ---- notifications ----------------------------------------------------------------------------

def _up_capture_id(resource: Mapping[str, Any]) -> str:
    for link in resource.get("links") or []:
        if isinstance(link, Mapping) and link.get("rel") == "up":
            href = str(link.get("href") or "")
            if f"{CAPTURES_PATH}/" in href:
                return href.rstrip("/").rsplit("/", 1)[-1]
    return ""


def map_event(event: Mapping[str, Any]) -> Notification:
    """A verified webhook event as a Notification; ProtocolError for events paycell does not
    subscribe to or that lack the ids it needs."""
    event_id, kind = event.get("id"), str(event.get("event_type") or "")
    resource = event.get("resource")
    if not isinstance(event_id, str) or not event_id or not isinstance(resource, Mapping):
        raise ProtocolError("paypal event without id or resource")
    if kind in PAYMENT_EVENTS:
        order_id = str(resource.get("invoice_id") or "")
        result = map_capture(resource)
        if not order_id:
            raise ProtocolError("paypal capture event without invoice_id")
        amount, currency = from_money(resource.get("amount"))
        return Notification(order_id, result.fact, result.channel_trade_no, amount, currency,
                            event_id, kind)
    if kind in ORDER_EVENTS:
        order_id = str(_unit(resource).get("invoice_id") or "")
        if not order_id:
            raise ProtocolError("paypal order event without invoice_id")
        result = map_order(resource, order_id)
        return Notification(order_id, result.fact, result.channel_trade_no, result.amount,
                            result.currency, event_id, kind)
    if kind in REFUND_EVENTS:
        order_id, refund_id = str(resource.get("custom_id") or ""), str(
            resource.get("invoice_id") or "")
        if not order_id or not refund_id:
            raise ProtocolError("paypal refund event without custom_id or invoice_id")
        refund = map_refund(resource, refund_id, "")
        amount, currency = from_money(resource.get("amount"))
        return Notification(order_id, Fact.PAID, _up_capture_id(resource), None, currency,
                            event_id, kind, NotificationKind.REFUND, refund_id, refund.status,
                            amount)
    raise ProtocolError("paypal event type paycell does not handle")


# ---- Transaction Search -----------------------------------------------------------------------

def _line(info: Mapping[str, Any]) -> StatementLine | None:
    code, status = str(info.get("transaction_event_code") or ""), info.get("transaction_status")
    if status != SETTLED:
        return None
    is_payment = code.startswith("T00")
    if not is_payment and code != REFUND_EVENT_CODE:
        return None                     # transfers, fees, holds: not an order's money
    amount, currency = from_money(info.get("transaction_amount"))
    fee = abs(from_money(info["fee_amount"], currency)[0]) if info.get("fee_amount") else 0
    txn, at = str(info.get("transaction_id") or ""), parse_time(
        info.get("transaction_initiation_date"))
    if is_payment:
        order_id = str(info.get("invoice_id") or "")
        if not order_id or not txn or amount <= 0:
            raise ProtocolError("paypal payment transaction without invoice_id or id")
        return StatementLine(StatementKind.PAYMENT, order_id, txn, amount, currency, at,
                             fee=fee, raw_status=code)
    order_id, refund_id = str(info.get("custom_field") or ""), str(info.get("invoice_id") or "")
    if not order_id or not refund_id or not txn or amount >= 0:
        raise ProtocolError("paypal refund transaction without custom_field or invoice_id")
    return StatementLine(StatementKind.REFUND, order_id, str(info.get("paypal_reference_id") or ""),
                         -amount, currency, at, refund_id=refund_id, channel_refund_no=txn,
                         fee=fee, raw_status=code)


def map_transactions(payload: Mapping[str, Any]) -> tuple[list[StatementLine], int]:
    """(the page's settled payment and refund lines, total_pages) of a Transaction Search page."""
    details, pages = payload.get("transaction_details"), payload.get("total_pages")
    if not isinstance(details, list) or not isinstance(pages, int) or pages < 0:
        raise ProtocolError("paypal transactions answer lacks transaction_details or total_pages")
    lines = []
    for item in details:
        info = item.get("transaction_info") if isinstance(item, Mapping) else None
        if not isinstance(info, Mapping):
            raise ProtocolError("paypal transaction without transaction_info")
        line = _line(info)
        if line is not None:
            lines.append(line)
    return lines, pages
