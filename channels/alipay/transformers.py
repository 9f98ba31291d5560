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
"""
from __future__ import annotations

import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from channels.alipay import signing
from channels.base import ChannelResult, ChargeRequest, Notification, OutcomeUnknown, ProtocolError
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


# ---- notifications --------------------------------------------------------------------------

def parse_form(body: bytes) -> dict[str, str]:
    """An x-www-form-urlencoded utf-8 body as a dict; ProtocolError on repeats or bad bytes."""
    if len(body) > NOTIFY_BODY_MAX_BYTES:
        raise ProtocolError("alipay notification body too large")
    try:
        pairs = urllib.parse.parse_qsl(body.decode(signing.CHARSET), keep_blank_values=True,
                                       strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("alipay notification is not a utf-8 form") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise ProtocolError("alipay notification repeats a field")
    return form


def map_notification(form: Mapping[str, str], app_id: str,
                     alipay_public_key: RSAPublicKey) -> Notification:
    """A verified notification; ProtocolError for a bad signature, another app or bad fields."""
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
    return Notification(order_id, fact, form.get("trade_no", ""), amount, CURRENCY,
                        notify_id, status)
