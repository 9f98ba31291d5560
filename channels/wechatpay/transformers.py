"""Pure WeChat Pay API v3 request builders and answer mappers; nothing here does I/O.

Amounts cross the wire as integer fen (`amount.total`), except in the trade bill (yuan strings,
converted in channels.wechatpay.bill with core.money's integer helpers).

What an answer proves about the money:

  code pay (POST /v3/pay/transactions/codepay)
    200 trade_state SUCCESS                       -> Fact.PAID
    202 USERPAYING (code or trade_state)          -> Fact.WAITING (the payer confirms; query)
    200 trade_state PAYERROR, a 4xx in DECLINE_CODES (NOT_ENOUGH, TRADE_ERROR, PARAM_ERROR ...)
                                                  -> Fact.DECLINED (nothing taken)
    4xx ORDER_CLOSED (the trade number is fenced) -> Fact.CLOSED
    anything else: 5xx SYSTEM_ERROR / BANK_ERROR, ORDERPAID / OUT_TRADE_NO_USED (the number
    exists: maybe paid), INVALID_REQUEST, FREQUENCY_LIMITED, unknown codes
                                                  -> OutcomeUnknown (query first)
  prepay (app, native): 200 prepay_id / code_url  -> Fact.WAITING with pay_data; the same
    error table as code pay.
  query trade_state: SUCCESS, REFUND -> PAID; NOTPAY, USERPAYING, ACCEPT -> WAITING;
    CLOSED, REVOKED -> CLOSED; PAYERROR -> DECLINED; 404 ORDER_NOT_EXIST -> exists=False.
  refund status: SUCCESS -> SUCCEEDED; PROCESSING -> PENDING; ABNORMAL -> PENDING (the money left
    the merchant but did not reach the payer: WeChat's abnormal-refund flow, never a new refund);
    CLOSED -> FAILED; a 4xx business refusal (INVALID_REQUEST, NOT_ENOUGH, RESOURCE_NOT_EXISTS ...)
    -> FAILED with its code; 5xx and FREQUENCY_LIMITED -> OutcomeUnknown.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping
from urllib.parse import quote, urlencode

import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from channels.base import (ChannelResult, ChargeRequest, Notification, NotificationKind,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus)
from channels.wechatpay import signing
from core.money import minor_to_decimal_str
from core.states import Fact

CHANNEL = "wechatpay"
CURRENCY = "CNY"
BEIJING = timezone(timedelta(hours=8))
DESCRIPTION_MAX_CHARS = 127
NOTIFY_BODY_MAX_BYTES = 65_536

PATH_CODEPAY = "/v3/pay/transactions/codepay"
PATH_PREPAY = {"app": "/v3/pay/transactions/app", "native": "/v3/pay/transactions/native"}
PATH_REFUNDS = "/v3/refund/domestic/refunds"
PATH_TRADEBILL = "/v3/bill/tradebill"
TRADE_TYPE_CODEPAY = "MICROPAY"

STATE_FACTS: dict[str, Fact] = {
    "SUCCESS": Fact.PAID, "REFUND": Fact.PAID,
    "NOTPAY": Fact.WAITING, "USERPAYING": Fact.WAITING, "ACCEPT": Fact.WAITING,
    "CLOSED": Fact.CLOSED, "REVOKED": Fact.CLOSED,
    "PAYERROR": Fact.DECLINED,
}
REFUND_STATUSES: dict[str, RefundStatus] = {
    "SUCCESS": RefundStatus.SUCCEEDED, "PROCESSING": RefundStatus.PENDING,
    "ABNORMAL": RefundStatus.PENDING, "CLOSED": RefundStatus.FAILED,
}

CODE_USERPAYING = "USERPAYING"
CODE_ORDER_NOT_EXIST = "ORDER_NOT_EXIST"
CODE_RESOURCE_NOT_EXISTS = "RESOURCE_NOT_EXISTS"
CODE_NO_STATEMENT = "NO_STATEMENT_EXIST"
CODE_ORDER_PAID = "ORDERPAID"
# Error codes that prove a pay / prepay request took no money and opened nothing that can be paid.
DECLINE_CODES = frozenset({
    "NOT_ENOUGH", "NOTENOUGH", "TRADE_ERROR", "PARAM_ERROR", "RULE_LIMIT", "ACCOUNT_ERROR",
    "ACCOUNTERROR", "NO_AUTH", "NOAUTH", "APPID_MCHID_NOT_MATCH", "MCH_NOT_EXISTS", "SIGN_ERROR",
    "AUTH_CODE_ERROR", "AUTHCODEEXPIRE", "AUTH_CODE_INVALID", "BUYER_MISMATCH",
    "PAYER_ACCOUNT_ABNORMAL",
})
CLOSED_CODES = frozenset({"ORDER_CLOSED", "ORDERCLOSED"})
# Refund answers below 500 that are not a refusal: nothing is known, query the refund.
REFUND_UNKNOWN_CODES = frozenset({"SYSTEM_ERROR", "SYSTEMERROR", "FREQUENCY_LIMITED",
                                  "RATELIMIT_EXCEEDED", "RATE_LIMITED"})


@dataclass(frozen=True)
class Answer:
    """One verified answer: HTTP status and its JSON object ({} for a 204)."""
    status: int
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def code(self) -> str:
        return str(self.payload.get("code") or "")

    @property
    def text(self) -> str:
        return f"HTTP {self.status} {self.code}".rstrip()


def parse_answer(status: int, body: bytes) -> Answer:
    if not body.strip():
        return Answer(status, {})
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("wechatpay answer is not JSON") from None
    if not isinstance(payload, dict):
        raise ProtocolError("wechatpay answer is not a JSON object")
    return Answer(status, payload)


# ---- amounts and time -----------------------------------------------------------------------

def fen(value: object, what: str = "amount") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"wechatpay {what} is not a non-negative integer")
    return value


def fen_to_yuan(amount: int) -> str:
    return minor_to_decimal_str(amount, CURRENCY)


def rfc3339(moment: datetime) -> str:
    """An aware datetime as WeChat's RFC 3339 in Beijing time: 2018-06-08T10:34:56+08:00."""
    assert moment.tzinfo is not None, "moment must be timezone-aware"
    return moment.astimezone(BEIJING).isoformat(timespec="seconds")


# ---- requests -------------------------------------------------------------------------------

def path_segment(value: str) -> str:
    return quote(value, safe="")


def _check_charge(req: ChargeRequest) -> None:
    assert req.currency == CURRENCY, req.currency
    assert req.amount > 0, req.amount


def codepay_body(appid: str, mchid: str, req: ChargeRequest, notify_url: str = "",
                 store_id: str = "0001") -> dict[str, Any]:
    """POST /v3/pay/transactions/codepay. `notify_url` is not a documented code-pay field; it
    is sent only when given (see WechatPaySettings.codepay_notify_url)."""
    _check_charge(req)
    assert req.payment_type == "barcode" and req.auth_code, "code pay needs an auth_code"
    body: dict[str, Any] = {
        "appid": appid, "mchid": mchid, "description": req.subject[:DESCRIPTION_MAX_CHARS],
        "out_trade_no": req.order_id, "payer": {"auth_code": req.auth_code},
        "amount": {"total": req.amount, "currency": CURRENCY},
        "scene_info": {"store_info": {"id": store_id}},
    }
    if req.client_ip:
        body["scene_info"]["device_ip"] = req.client_ip
    if notify_url:
        body["notify_url"] = notify_url
    return body


def prepay_body(appid: str, mchid: str, req: ChargeRequest, notify_url: str) -> dict[str, Any]:
    """POST /v3/pay/transactions/app | native."""
    _check_charge(req)
    assert req.payment_type in PATH_PREPAY, req.payment_type
    assert notify_url, "prepay needs a notify_url"
    body: dict[str, Any] = {
        "appid": appid, "mchid": mchid, "description": req.subject[:DESCRIPTION_MAX_CHARS],
        "out_trade_no": req.order_id, "notify_url": notify_url,
        "amount": {"total": req.amount, "currency": CURRENCY},
    }
    if req.client_ip:
        body["scene_info"] = {"payer_client_ip": req.client_ip}
    return body


def query_path(order_id: str, mchid: str) -> str:
    return (f"/v3/pay/transactions/out-trade-no/{path_segment(order_id)}?"
            + urlencode({"mchid": mchid}))


def close_path(order_id: str) -> str:
    return f"/v3/pay/transactions/out-trade-no/{path_segment(order_id)}/close"


def reverse_path(order_id: str) -> str:
    return f"/v3/pay/transactions/out-trade-no/{path_segment(order_id)}/reverse"


def refund_body(req: RefundRequest, notify_url: str) -> dict[str, Any]:
    """POST /v3/refund/domestic/refunds, by out_trade_no; out_refund_no is paycell's refund id."""
    assert req.currency == CURRENCY and req.amount > 0, (req.currency, req.amount)
    body: dict[str, Any] = {
        "out_trade_no": req.order_id, "out_refund_no": req.refund_id,
        "amount": {"refund": req.amount, "total": req.total_amount, "currency": CURRENCY},
    }
    if req.reason:
        body["reason"] = req.reason[:80]
    if req.notify_url or notify_url:
        body["notify_url"] = req.notify_url or notify_url
    return body


def refund_query_path(refund_id: str) -> str:
    return f"{PATH_REFUNDS}/{path_segment(refund_id)}"


def tradebill_path(day: date, tar_type: str = "GZIP") -> str:
    params = {"bill_date": day.isoformat(), "bill_type": "ALL"}
    if tar_type:
        params["tar_type"] = tar_type
    return f"{PATH_TRADEBILL}?{urlencode(params)}"


def body_bytes(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)


def app_pay_data(appid: str, mchid: str, prepay_id: str, private_key: RSAPrivateKey,
                 timestamp: int, nonce: str) -> dict[str, str]:
    """What the WeChat APP SDK's PayReq needs (wechatpay-go PrepayWithRequestPayment)."""
    return {
        "prepay_id": prepay_id, "appid": appid, "partnerid": mchid, "prepayid": prepay_id,
        "package": "Sign=WXPay", "noncestr": nonce, "timestamp": str(timestamp),
        "sign": signing.app_pay_sign(private_key, appid, timestamp, nonce, prepay_id),
    }


# ---- payment answers ------------------------------------------------------------------------

def _refusal(fact: Fact, ans: Answer, raw_status: str = "") -> ChannelResult:
    return ChannelResult(fact, raw_status=raw_status or ans.code,
                         failure_code=ans.code or raw_status,
                         failure_message=str(ans.payload.get("message") or ""))


def _check_order(payload: Mapping[str, Any], order_id: str) -> None:
    got = payload.get("out_trade_no")
    if got is not None and got != order_id:
        raise ProtocolError("wechatpay answered for another out_trade_no")


def transaction_result(payload: Mapping[str, Any], order_id: str) -> ChannelResult:
    """A transaction object (code-pay answer, query answer) as a ChannelResult."""
    _check_order(payload, order_id)
    state = str(payload.get("trade_state") or "")
    fact = STATE_FACTS.get(state)
    if fact is None:
        raise ProtocolError("wechatpay: unknown trade_state")
    trade_no = str(payload.get("transaction_id") or "")
    amount_obj = payload.get("amount")
    amount = None
    if isinstance(amount_obj, Mapping) and "total" in amount_obj:
        amount = fen(amount_obj.get("total"), "amount.total")
    if fact is Fact.PAID and (not trade_no or amount is None):
        raise ProtocolError("wechatpay paid answer without transaction_id or amount")
    if fact is Fact.DECLINED:
        return ChannelResult(fact, trade_no, amount, CURRENCY, state, failure_code=state,
                             failure_message=str(payload.get("trade_state_desc") or ""))
    return ChannelResult(fact, trade_no, amount, CURRENCY if amount is not None else "", state)


def _charge_error(ans: Answer, what: str) -> ChannelResult:
    if ans.code == CODE_USERPAYING:
        return ChannelResult(Fact.WAITING, raw_status=CODE_USERPAYING)
    if ans.code in CLOSED_CODES:
        return _refusal(Fact.CLOSED, ans)
    if 400 <= ans.status < 500 and ans.code in DECLINE_CODES:
        return _refusal(Fact.DECLINED, ans)
    raise OutcomeUnknown(f"wechatpay {what} answered {ans.text}")


def map_codepay(ans: Answer, order_id: str) -> ChannelResult:
    if ans.status in (200, 202) and ans.payload.get("trade_state"):
        result = transaction_result(ans.payload, order_id)
        if result.fact is Fact.CLOSED:
            raise OutcomeUnknown("wechatpay codepay answered a closed trade_state")
        return result
    if ans.status < 300 and not ans.code:
        raise ProtocolError(f"wechatpay codepay answered {ans.text} without trade_state")
    return _charge_error(ans, "codepay")


def map_prepay(ans: Answer, payment_type: str) -> ChannelResult:
    """WAITING with pay_data {"prepay_id"} (app) or {"code_url"} (native)."""
    if ans.status == 200:
        key = "prepay_id" if payment_type == "app" else "code_url"
        value = ans.payload.get(key)
        if not isinstance(value, str) or not value:
            raise ProtocolError(f"wechatpay prepay answer without {key}")
        return ChannelResult(Fact.WAITING, raw_status="NOTPAY", pay_data={key: value})
    return _charge_error(ans, f"{payment_type} prepay")


def map_query(ans: Answer, order_id: str) -> ChannelResult:
    if ans.status == 200:
        return transaction_result(ans.payload, order_id)
    if ans.status == 404 and ans.code == CODE_ORDER_NOT_EXIST:
        return ChannelResult(Fact.WAITING, raw_status=ans.code, exists=False)
    raise OutcomeUnknown(f"wechatpay query answered {ans.text}")


class CancelStep(enum.Enum):
    DONE = "done"          # already closed, revoked or failed: nothing to do
    REVERSE = "reverse"    # a code-pay trade: reverse it (closes it, or refunds it if paid)
    CLOSE = "close"        # unknown (the fence) or an open prepay trade: close it
    PAID = "paid"          # a paid prepay trade: it cannot be reversed, report PAID


def cancel_step(ans: Answer, found: ChannelResult) -> CancelStep:
    """What cancel does after the query `ans` (mapped to `found`)."""
    if not found.exists:
        return CancelStep.CLOSE
    if found.fact in (Fact.CLOSED, Fact.DECLINED):
        return CancelStep.DONE
    if (ans.payload.get("trade_type") == TRADE_TYPE_CODEPAY
            or found.raw_status == CODE_USERPAYING):
        return CancelStep.REVERSE
    return CancelStep.PAID if found.fact is Fact.PAID else CancelStep.CLOSE


def closed(action: str, raw_status: str, trade_no: str = "") -> ChannelResult:
    return ChannelResult(Fact.CLOSED, trade_no, raw_status=raw_status, action=action)


def close_done(ans: Answer) -> bool:
    """True when a close succeeded (204); False when the trade turned out paid (ORDERPAID)."""
    if ans.status == 204:
        return True
    if ans.code == CODE_ORDER_PAID:
        return False
    raise OutcomeUnknown(f"wechatpay close answered {ans.text}")


def reverse_done(ans: Answer, order_id: str) -> None:
    if ans.status == 200:
        _check_order(ans.payload, order_id)
        return
    raise OutcomeUnknown(f"wechatpay reverse answered {ans.text}")


# ---- refunds --------------------------------------------------------------------------------

def refund_result(payload: Mapping[str, Any], refund_id: str) -> RefundResult:
    if payload.get("out_refund_no") != refund_id:
        raise ProtocolError("wechatpay answered for another out_refund_no")
    raw = str(payload.get("status") or "")
    status = REFUND_STATUSES.get(raw)
    if status is None:
        raise ProtocolError("wechatpay: unknown refund status")
    amount_obj = payload.get("amount")
    if not isinstance(amount_obj, Mapping):
        raise ProtocolError("wechatpay refund answer without amount")
    return RefundResult(status, refund_id, str(payload.get("refund_id") or ""),
                        fen(amount_obj.get("refund"), "amount.refund"),
                        str(amount_obj.get("currency") or CURRENCY), raw,
                        failure_code=raw if status is RefundStatus.FAILED else "")


def map_refund(ans: Answer, refund_id: str) -> RefundResult:
    if ans.status == 200:
        return refund_result(ans.payload, refund_id)
    if 400 <= ans.status < 500 and ans.code and ans.code not in REFUND_UNKNOWN_CODES:
        return RefundResult(RefundStatus.FAILED, refund_id, raw_status=ans.code,
                            failure_code=ans.code,
                            failure_message=str(ans.payload.get("message") or ""))
    raise OutcomeUnknown(f"wechatpay refund answered {ans.text}")


def map_refund_query(ans: Answer, refund_id: str) -> RefundResult:
    if ans.status == 200:
        return refund_result(ans.payload, refund_id)
    if ans.status == 404 and ans.code == CODE_RESOURCE_NOT_EXISTS:
        return RefundResult(RefundStatus.FAILED, refund_id, raw_status=ans.code,
                            failure_code=ans.code, exists=False)
    raise OutcomeUnknown(f"wechatpay refund query answered {ans.text}")


# ---- callbacks ------------------------------------------------------------------------------

def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError(f"wechatpay {what} is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"wechatpay {what} is not a JSON object")
    return value


def open_callback(body: bytes, apiv3_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(envelope, decrypted resource) of a callback whose signature was already checked."""
    if len(body) > NOTIFY_BODY_MAX_BYTES:
        raise ProtocolError("wechatpay callback body too large")
    envelope = _object(body, "callback")
    resource = envelope.get("resource")
    if envelope.get("resource_type") != "encrypt-resource" or not isinstance(resource, dict):
        raise ProtocolError("wechatpay callback without an encrypted resource")
    if resource.get("algorithm") != signing.AEAD_ALGORITHM:
        raise ProtocolError("wechatpay callback: unsupported resource algorithm")
    nonce, ad = resource.get("nonce"), resource.get("associated_data") or ""
    ciphertext = resource.get("ciphertext")
    if not isinstance(nonce, str) or not isinstance(ad, str) or not isinstance(ciphertext, str):
        raise ProtocolError("wechatpay callback resource is malformed")
    plaintext = signing.decrypt_resource(apiv3_key, ciphertext, nonce, ad)
    return envelope, _object(plaintext, "callback resource")


def map_notification(envelope: Mapping[str, Any], resource: Mapping[str, Any], mchid: str,
                     appid: str) -> Notification:
    notify_id, event = str(envelope.get("id") or ""), str(envelope.get("event_type") or "")
    if not notify_id:
        raise ProtocolError("wechatpay callback without id")
    if resource.get("mchid") != mchid:
        raise ProtocolError("wechatpay callback for another mchid")
    order_id = str(resource.get("out_trade_no") or "")
    if not order_id:
        raise ProtocolError("wechatpay callback without out_trade_no")
    if event.startswith("TRANSACTION."):
        if resource.get("appid") != appid:
            raise ProtocolError("wechatpay callback for another appid")
        result = transaction_result(resource, order_id)
        return Notification(order_id, result.fact, result.channel_trade_no, result.amount,
                            CURRENCY, notify_id, result.raw_status)
    if event.startswith("REFUND."):
        raw = str(resource.get("refund_status") or "")
        status = REFUND_STATUSES.get(raw)
        amount_obj = resource.get("amount")
        refund_id = str(resource.get("out_refund_no") or "")
        if status is None or not isinstance(amount_obj, Mapping) or not refund_id:
            raise ProtocolError("wechatpay refund callback is malformed")
        return Notification(order_id, Fact.PAID, str(resource.get("transaction_id") or ""),
                            fen(amount_obj.get("total"), "amount.total"), CURRENCY, notify_id,
                            raw, NotificationKind.REFUND, refund_id, status,
                            fen(amount_obj.get("refund"), "amount.refund"))
    raise ProtocolError("wechatpay callback of an unknown event_type")
