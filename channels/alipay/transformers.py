"""Pure Alipay request builders and response mappers; `now` is passed in, nothing does I/O.

Amounts cross the wire as yuan strings with two decimals ("12.34") and are converted to and from
integer fen only here, with core.money's integer helpers.

Result codes of alipay.trade.pay and what they prove about the money:
  10000               paid                                   -> Fact.PAID
  10003               the payer must confirm                 -> Fact.WAITING
  40004 + a sub_code in DECLINE_SUB_CODES                    -> Fact.DECLINED (nothing charged)
  40004 ACQ.TRADE_HAS_CLOSE (the trade number is fenced)     -> Fact.CLOSED
  40004 + any other sub_code (ACQ.TRADE_HAS_SUCCESS, ACQ.SYSTEM_ERROR, an unknown code ...)
                                                             -> OutcomeUnknown (query first)
  40001 / 40002       the gateway refused the request        -> Fact.DECLINED (nothing charged)
  20000 and anything else                                    -> OutcomeUnknown

alipay.trade.refund (idempotent on out_request_no = paycell's refund id):
  10000 fund_change "Y"     money went back by this request       -> RefundStatus.SUCCEEDED
  10000 fund_change "N"/none no money moved by THIS request: a repeat of a refund already done, or
                            one still being processed. Alipay says to confirm by
                            alipay.trade.fastpay.refund.query  -> RefundStatus.PENDING here; the
                            connector runs that query at once, so a retry of a done refund comes
                            back SUCCEEDED (never read as a failure)
  40004 + a sub_code in REFUND_REFUSED_SUB_CODES (amount too large, not refundable, status)
                                                             -> RefundStatus.FAILED + failure_code
  40001 / 40002 the gateway refused the request (nothing done) -> RefundStatus.FAILED
  20000, 40004 ACQ.SYSTEM_ERROR, ACQ.DISCORDANT_REPEAT_REQUEST (the number is taken by another
  refund: only a query tells its state), unknown sub_codes    -> OutcomeUnknown

alipay.trade.fastpay.refund.query: "10000" only says the query ran. refund_status REFUND_SUCCESS
-> SUCCEEDED with refund_amount; no refund data at all (no refund_status, no refund_amount) -> the
refund is not (yet) known: exists=False, PENDING (Alipay: a query too soon after the refund may not
see it yet; resend the refund with the same out_request_no, which is safe). 40004
ACQ.TRADE_NOT_EXIST -> exists=False as well (no trade, so no refund).
"""
from __future__ import annotations

import urllib.parse
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping

import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from channels import callbacks
from channels.alipay import signing
from channels.base import (ChannelError, ChannelResult, ChargeRequest, Notification, NotificationKind,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus)
from core.money import decimal_str_to_minor, minor_to_decimal_str
from core.states import Fact

CURRENCY = "CNY"
VERSION = "1.0"
FORMAT = "JSON"
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
BEIJING = timezone(timedelta(hours=8))
NOTIFY_BODY_MAX_BYTES = 16_384
SUBJECT_MAX_CHARS = 256

METHOD_PAY = "alipay.trade.pay"
METHOD_QUERY = "alipay.trade.query"
METHOD_CANCEL = "alipay.trade.cancel"
METHOD_REFUND = "alipay.trade.refund"
METHOD_REFUND_QUERY = "alipay.trade.fastpay.refund.query"
METHOD_BILL_URL = "alipay.data.dataservice.bill.downloadurl.query"
REFUND_REASON_MAX_CHARS = 256
COMMON_KEYS = frozenset({"app_id", "method", "format", "charset", "sign_type", "sign", "timestamp",
                         "version", "notify_url", "return_url", "app_auth_token", "auth_token",
                         "encrypt_type"})

CODE_SUCCESS = "10000"
CODE_WAITING = "10003"
CODE_UNKNOWN = "20000"
CODE_MISSING_PARAM = "40001"
CODE_INVALID_PARAM = "40002"
CODE_BUSINESS_FAILED = "40004"

# 40004 sub_codes that prove the pay request took no money. Anything not listed is treated as
# "outcome unknown": ACQ.TRADE_HAS_SUCCESS (already paid!), ACQ.SYSTEM_ERROR, codes we do not know.
DECLINE_SUB_CODES = frozenset({
    "ACQ.BUYER_BALANCE_NOT_ENOUGH", "ACQ.BUYER_BANKCARD_BALANCE_NOT_ENOUGH",
    "ACQ.PAYMENT_AUTH_CODE_INVALID", "ACQ.TOTAL_FEE_EXCEED", "ACQ.PAYMENT_FAIL",
    "ACQ.BUYER_ENABLE_STATUS_FORBID", "ACQ.BUYER_SELLER_EQUAL", "ACQ.PAYMENT_REQUEST_HAS_RISK",
    "ACQ.BUYER_PAYMENT_AMOUNT_DAY_LIMIT_ERROR", "ACQ.BUYER_PAYMENT_AMOUNT_MONTH_LIMIT_ERROR",
    "ACQ.ERROR_BALANCE_PAYMENT_DISABLE", "ACQ.BEYOND_PAY_RESTRICTION", "ACQ.SELLER_BEEN_BLOCKED",
    "ACQ.ACCESS_FORBIDDEN", "ACQ.INVALID_PARAMETER", "ACQ.CONTEXT_INCONSISTENT",
    "ACQ.TRADE_BUYER_NOT_MATCH", "ACQ.PAYMENT_AUTH_CODE_EXPIRED",
})
SUB_CODE_TRADE_HAS_CLOSE = "ACQ.TRADE_HAS_CLOSE"
SUB_CODE_TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"

# 40004 sub_codes of alipay.trade.refund that prove the refund request moved no money and will not.
REFUND_REFUSED_SUB_CODES = frozenset({
    "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",    # a partial refund without out_request_no
    "ACQ.REASON_TRADE_REFUND_FEE_ERR",   # the amount is more than what is left to refund
    "ACQ.TRADE_NOT_ALLOW_REFUND",        # not refundable (window over, product rules)
    "ACQ.TRADE_STATUS_ERROR",            # the trade is not paid (closed, waiting)
    "ACQ.TRADE_HAS_FINISHED",            # TRADE_FINISHED: the refund window is over
    "ACQ.TRADE_NOT_EXIST",
    "ACQ.SELLER_BALANCE_NOT_ENOUGH",     # the merchant's balance cannot cover it
    "ACQ.REASON_TRADE_BEEN_FREEZEN",     # the trade is frozen
    "ACQ.INVALID_PARAMETER",
    "ACQ.ACCESS_FORBIDDEN",
})
FUND_CHANGED = "Y"
REFUND_SUCCESS = "REFUND_SUCCESS"

STATUS_FACTS: dict[str, Fact] = {
    "TRADE_SUCCESS": Fact.PAID,
    "TRADE_FINISHED": Fact.PAID,
    "WAIT_BUYER_PAY": Fact.WAITING,
    "TRADE_CLOSED": Fact.CLOSED,
}


# ---- amounts and time -----------------------------------------------------------------------

def fen_to_yuan(amount_fen: int) -> str:
    assert isinstance(amount_fen, int) and amount_fen >= 0, amount_fen
    return minor_to_decimal_str(amount_fen, CURRENCY)


def yuan_to_fen(text: object) -> int:
    """"12.34" -> 1234; ProtocolError for anything that is not a plain non-negative amount."""
    if not isinstance(text, str):
        raise ProtocolError("alipay amount is not a string")
    try:
        return decimal_str_to_minor(text, CURRENCY)
    except ValueError:
        raise ProtocolError("alipay amount is malformed") from None


def alipay_timestamp(now: datetime) -> str:
    """An aware datetime as Alipay's "yyyy-MM-dd HH:mm:ss" in Beijing time (UTC+8)."""
    assert now.tzinfo is not None, "now must be timezone-aware"
    return now.astimezone(BEIJING).strftime(TIMESTAMP_FORMAT)


# ---- requests -------------------------------------------------------------------------------

def common_params(app_id: str, method: str, now: datetime, notify_url: str = "") -> dict[str, str]:
    params = {
        "app_id": app_id, "method": method, "format": FORMAT, "charset": signing.CHARSET,
        "sign_type": signing.SIGN_TYPE, "timestamp": alipay_timestamp(now), "version": VERSION,
    }
    if notify_url:
        params["notify_url"] = notify_url
    return params


def _with_biz(params: dict[str, str], biz: Mapping[str, Any]) -> dict[str, str]:
    params["biz_content"] = orjson.dumps(biz).decode()
    return params


def pay_params(app_id: str, req: ChargeRequest, now: datetime, notify_url: str) -> dict[str, str]:
    """Unsigned params of alipay.trade.pay (barcode scene) for one charge."""
    assert req.currency == CURRENCY and req.payment_type == "barcode", (req.currency, req.payment_type)
    assert req.amount > 0, req.amount
    biz = {
        "out_trade_no": req.order_id,
        "scene": "bar_code",
        "auth_code": req.auth_code,
        "subject": req.subject[:SUBJECT_MAX_CHARS],
        "total_amount": fen_to_yuan(req.amount),
    }
    return _with_biz(common_params(app_id, METHOD_PAY, now, req.notify_url or notify_url), biz)


def query_params(app_id: str, order_id: str, now: datetime) -> dict[str, str]:
    return _with_biz(common_params(app_id, METHOD_QUERY, now), {"out_trade_no": order_id})


def cancel_params(app_id: str, order_id: str, now: datetime) -> dict[str, str]:
    return _with_biz(common_params(app_id, METHOD_CANCEL, now), {"out_trade_no": order_id})


def refund_params(app_id: str, req: RefundRequest, now: datetime) -> dict[str, str]:
    """Unsigned params of alipay.trade.refund. out_request_no is paycell's refund id: sent on
    every refund, full or partial, so a retry is the same refund (Alipay's idempotency key).
    The refund's notification goes to the payment's notify_url (Alipay has no per-refund URL)."""
    assert req.currency == CURRENCY, req.currency
    assert 0 < req.amount and req.refund_id, (req.amount, req.refund_id)
    biz = {"out_trade_no": req.order_id, "refund_amount": fen_to_yuan(req.amount),
           "out_request_no": req.refund_id}
    if req.reason:
        biz["refund_reason"] = req.reason[:REFUND_REASON_MAX_CHARS]
    return _with_biz(common_params(app_id, METHOD_REFUND, now), biz)


def refund_query_params(app_id: str, order_id: str, refund_id: str,
                        now: datetime) -> dict[str, str]:
    biz = {"out_trade_no": order_id, "out_request_no": refund_id,
           "query_options": ["gmt_refund_pay"]}
    return _with_biz(common_params(app_id, METHOD_REFUND_QUERY, now), biz)


def bill_url_params(app_id: str, day: date, now: datetime) -> dict[str, str]:
    """alipay.data.dataservice.bill.downloadurl.query for the day's trade bill (业务明细)."""
    biz = {"bill_type": "trade", "bill_date": day.strftime("%Y-%m-%d")}
    return _with_biz(common_params(app_id, METHOD_BILL_URL, now), biz)


def split_for_wire(signed: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(query string params, form body params) the way the SDK sends them."""
    query = {k: v for k, v in signed.items() if k in COMMON_KEYS}
    form = {k: v for k, v in signed.items() if k not in COMMON_KEYS}
    return query, form


# ---- responses ------------------------------------------------------------------------------

def _code_text(payload: Mapping[str, Any]) -> str:
    sub = payload.get("sub_code") or ""
    return f"{payload.get('code')}/{sub}" if sub else str(payload.get("code"))


def _check_order(payload: Mapping[str, Any], order_id: str) -> None:
    got = payload.get("out_trade_no")
    if got is not None and got != order_id:
        raise ProtocolError("alipay answered for another out_trade_no")


def _paid(payload: Mapping[str, Any], order_id: str, raw_status: str) -> ChannelResult:
    _check_order(payload, order_id)
    trade_no = payload.get("trade_no")
    if not isinstance(trade_no, str) or not trade_no:
        raise ProtocolError("alipay paid answer without trade_no")
    return ChannelResult(Fact.PAID, trade_no, yuan_to_fen(payload.get("total_amount")),
                         CURRENCY, raw_status)


def _refusal(fact: Fact, payload: Mapping[str, Any]) -> ChannelResult:
    return ChannelResult(fact, raw_status=_code_text(payload),
                         failure_code=str(payload.get("sub_code") or ""),
                         failure_message=str(payload.get("sub_msg") or ""))


def map_pay(payload: Mapping[str, Any], order_id: str) -> ChannelResult:
    code, sub_code = payload.get("code"), str(payload.get("sub_code") or "")
    if code == CODE_SUCCESS:
        return _paid(payload, order_id, "TRADE_SUCCESS")
    if code == CODE_WAITING:
        _check_order(payload, order_id)
        return ChannelResult(Fact.WAITING, str(payload.get("trade_no") or ""),
                             raw_status="WAIT_BUYER_PAY")
    if code == CODE_BUSINESS_FAILED and sub_code == SUB_CODE_TRADE_HAS_CLOSE:
        return _refusal(Fact.CLOSED, payload)
    if code == CODE_BUSINESS_FAILED and sub_code in DECLINE_SUB_CODES:
        return _refusal(Fact.DECLINED, payload)
    if code in (CODE_MISSING_PARAM, CODE_INVALID_PARAM):
        return _refusal(Fact.DECLINED, payload)
    raise OutcomeUnknown(f"alipay.trade.pay answered {_code_text(payload)}")


def map_query(payload: Mapping[str, Any], order_id: str) -> ChannelResult:
    code = payload.get("code")
    if code == CODE_SUCCESS:
        status = str(payload.get("trade_status") or "")
        fact = STATUS_FACTS.get(status)
        if fact is None:
            raise ProtocolError("alipay.trade.query: unknown trade_status")
        if fact is Fact.PAID:
            return _paid(payload, order_id, status)
        _check_order(payload, order_id)
        return ChannelResult(fact, str(payload.get("trade_no") or ""), raw_status=status)
    if code == CODE_BUSINESS_FAILED and payload.get("sub_code") == SUB_CODE_TRADE_NOT_EXIST:
        return ChannelResult(Fact.WAITING, raw_status=_code_text(payload), exists=False)
    raise OutcomeUnknown(f"alipay.trade.query answered {_code_text(payload)}")


def map_cancel(payload: Mapping[str, Any], order_id: str) -> ChannelResult:
    code = payload.get("code")
    if code == CODE_SUCCESS and payload.get("retry_flag") != "Y":
        _check_order(payload, order_id)
        action = str(payload.get("action") or "close")
        if action not in ("close", "refund"):
            raise ProtocolError("alipay.trade.cancel: unknown action")
        return ChannelResult(Fact.CLOSED, str(payload.get("trade_no") or ""),
                             raw_status="TRADE_CLOSED", action=action)
    raise OutcomeUnknown(f"alipay.trade.cancel answered {_code_text(payload)}, "
                         f"retry_flag={payload.get('retry_flag')}")


# ---- refunds --------------------------------------------------------------------------------

def _check_refund_ids(payload: Mapping[str, Any], req_order: str, refund_id: str) -> None:
    _check_order(payload, req_order)
    got = payload.get("out_request_no")
    if got is not None and got != refund_id:
        raise ProtocolError("alipay answered for another out_request_no")


def map_refund(payload: Mapping[str, Any], req: RefundRequest) -> RefundResult:
    """What an alipay.trade.refund answer says about refund `req.refund_id` (module docstring).

    Its refund_fee is the trade's refunded total, not this refund's amount; a SUCCEEDED result
    reports the amount the request asked for (Alipay confirmed that refund)."""
    code, sub_code = payload.get("code"), str(payload.get("sub_code") or "")
    if code == CODE_SUCCESS:
        _check_order(payload, req.order_id)
        if payload.get("refund_fee") is not None:
            yuan_to_fen(payload.get("refund_fee"))          # a malformed answer is not trusted
        fund_change = str(payload.get("fund_change") or "")
        status = RefundStatus.SUCCEEDED if fund_change == FUND_CHANGED else RefundStatus.PENDING
        return RefundResult(status, req.refund_id, amount=req.amount, currency=CURRENCY,
                            raw_status=f"fund_change={fund_change or '-'}")
    if ((code == CODE_BUSINESS_FAILED and sub_code in REFUND_REFUSED_SUB_CODES)
            or code in (CODE_MISSING_PARAM, CODE_INVALID_PARAM)):
        return RefundResult(RefundStatus.FAILED, req.refund_id, raw_status=_code_text(payload),
                            failure_code=sub_code or str(code),
                            failure_message=str(payload.get("sub_msg") or ""))
    raise OutcomeUnknown(f"alipay.trade.refund answered {_code_text(payload)}")


def map_refund_query(payload: Mapping[str, Any], order_id: str, refund_id: str) -> RefundResult:
    """What alipay.trade.fastpay.refund.query says about refund `refund_id` (module docstring)."""
    code = payload.get("code")
    if code == CODE_BUSINESS_FAILED and payload.get("sub_code") == SUB_CODE_TRADE_NOT_EXIST:
        return RefundResult(RefundStatus.PENDING, refund_id, raw_status=_code_text(payload),
                            exists=False)
    if code != CODE_SUCCESS:
        raise OutcomeUnknown(f"alipay.trade.fastpay.refund.query answered {_code_text(payload)}")
    _check_refund_ids(payload, order_id, refund_id)
    status, amount = payload.get("refund_status"), payload.get("refund_amount")
    if status is None and amount is None:
        return RefundResult(RefundStatus.PENDING, refund_id, raw_status="NOT_FOUND", exists=False)
    if status == REFUND_SUCCESS:
        return RefundResult(RefundStatus.SUCCEEDED, refund_id, amount=yuan_to_fen(amount),
                            currency=CURRENCY, raw_status=REFUND_SUCCESS)
    if status is None:
        # refund data without refund_status: the current docs say "not received or failed",
        # older ones "data means success"; neither proves money moved or will not: query again.
        return RefundResult(RefundStatus.PENDING, refund_id, amount=yuan_to_fen(amount),
                            currency=CURRENCY, raw_status="NO_REFUND_STATUS")
    raise ProtocolError("alipay.trade.fastpay.refund.query: unknown refund_status")


# ---- bill -----------------------------------------------------------------------------------

SUB_CODE_BILL_NOT_EXIST = "isp.bill_not_exist"


class BillNotReady(ChannelError):
    """Alipay has no bill for that day (yet): daily bills are ready from about 10:00 next day."""
    code = "channel_bill_not_ready"


def map_bill_url(payload: Mapping[str, Any], allowed_hosts: frozenset[str]) -> str:
    """The bill_download_url of an answer, checked to point at an allowed host.

    The URL comes from the channel's (signed) answer, but the connector still fetches only from
    the hosts it was configured with (its gateway's host plus any bill host named in settings):
    a URL naming any other host, scheme, credentials or an odd port is a ProtocolError, so a
    bad answer can never make paycell fetch an internal address (SSRF)."""
    code = payload.get("code")
    if code == CODE_BUSINESS_FAILED and payload.get("sub_code") == SUB_CODE_BILL_NOT_EXIST:
        raise BillNotReady(f"alipay has no such bill: {_code_text(payload)}")
    if code != CODE_SUCCESS:
        raise OutcomeUnknown(f"{METHOD_BILL_URL} answered {_code_text(payload)}")
    url = payload.get("bill_download_url")
    if not isinstance(url, str) or not url:
        raise ProtocolError("alipay bill answer without bill_download_url")
    check_download_url(url, allowed_hosts)
    return url


def check_download_url(url: str, allowed_hosts: frozenset[str]) -> None:
    """ProtocolError unless `url` is plain http(s) to one of `allowed_hosts` ("host" or
    "host:port", lower case)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise ProtocolError("alipay bill_download_url is malformed") from None
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{port}" if port is not None else host
    if (parts.scheme not in ("http", "https") or parts.username is not None
            or parts.password is not None or not host or netloc not in allowed_hosts):
        raise ProtocolError("alipay bill_download_url points outside the allowed hosts")


def allowed_bill_hosts(gateway_url: str, extra_hosts: str = "") -> frozenset[str]:
    """The gateway's own host (with its port, if any) plus comma-separated extra hosts."""
    parts = urllib.parse.urlsplit(gateway_url)
    host = (parts.hostname or "").lower()
    own = f"{host}:{parts.port}" if parts.port is not None else host
    extra = {h.strip().lower() for h in extra_hosts.split(",") if h.strip()}
    return frozenset({own} | extra)


# ---- notifications --------------------------------------------------------------------------

def parse_form(body: bytes) -> dict[str, str]:
    """An x-www-form-urlencoded utf-8 body as a dict; ProtocolError on repeats or bad bytes."""
    return callbacks.parse_form(body, NOTIFY_BODY_MAX_BYTES, "alipay")


def map_notification(form: Mapping[str, str], app_id: str,
                     alipay_public_key: RSAPublicKey) -> Notification:
    """A verified notification; ProtocolError for a bad signature, another app or bad fields.

    Alipay reports a refund with the same trade_status_sync message, carrying the refund's
    out_biz_no (= out_request_no), gmt_refund and refund_fee; trade_status stays TRADE_SUCCESS
    after a partial refund and becomes TRADE_CLOSED when the trade is wholly refunded. A form
    with out_biz_no is therefore a REFUND notification (fact PAID: the trade was paid), never a
    "closed unpaid" one. refund_fee is the trade's refunded TOTAL, so the notification does not
    say this refund's own amount: refund_amount is left None (paycell knows the amount it asked
    for; a refund query returns it).
    """
    if not signing.verify_notification(form, alipay_public_key):
        raise ProtocolError("alipay notification signature does not verify")
    if form.get("app_id") != app_id:
        raise ProtocolError("alipay notification for another app_id")
    status = form.get("trade_status", "")
    fact = STATUS_FACTS.get(status)
    order_id, notify_id = form.get("out_trade_no", ""), form.get("notify_id", "")
    if fact is None or not order_id or not notify_id:
        raise ProtocolError("alipay notification lacks trade_status, out_trade_no or notify_id")
    amount = yuan_to_fen(form["total_amount"]) if form.get("total_amount") else None
    refund_id = form.get("out_biz_no", "")
    if not refund_id:
        return Notification(order_id, fact, form.get("trade_no", ""), amount, CURRENCY,
                            notify_id, status)
    if fact is Fact.WAITING:
        raise ProtocolError("alipay refund notification for an unpaid trade")
    refunded_total = yuan_to_fen(form.get("refund_fee"))
    if amount is not None and refunded_total > amount:
        raise ProtocolError("alipay refund notification refunds more than the trade")
    return Notification(order_id, Fact.PAID, form.get("trade_no", ""), amount, CURRENCY,
                        notify_id, status, kind=NotificationKind.REFUND, refund_id=refund_id,
                        refund_status=RefundStatus.SUCCEEDED, refund_amount=None)
