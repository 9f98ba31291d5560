"""A local Alipay Open Platform gateway that speaks the real protocol, for local runs and tests.

`POST /gateway.do` takes the SDK's wire format (common params in the query string, biz_content in
the urlencoded body), checks the RSA2 request signature with the app's public key and answers
``{"<method>_response":{...},"sign":"..."}`` signed with the platform private key. Charges follow
the amount table of channels.sandbox.engine; in Alipay's words:

  00 10000 TRADE_SUCCESS; 01 40004 ACQ.BUYER_BALANCE_NOT_ENOUGH; 02/03 10003 WAIT_BUYER_PAY;
  04 held answer; 05/06 connection closed after commit; 07/08 20000 isp.unknow-error.

A repeated pay: paid -> 40004 ACQ.TRADE_HAS_SUCCESS (nothing charged); waiting -> 10003 again;
closed -> 40004 ACQ.TRADE_HAS_CLOSE; another amount -> 40004 ACQ.CONTEXT_INCONSISTENT.
alipay.trade.cancel refunds a paid trade (action "refund"), closes a waiting one (action "close",
with a TRADE_CLOSED notification) and records an unknown out_trade_no as closed (action "close"),
so that a late pay for it is refused: cancel fences the trade number.

Refunds (alipay.trade.refund, idempotent on out_request_no; a repeat answers fund_change "N"),
alipay.trade.fastpay.refund.query and refund notifications (trade_status_sync with out_biz_no,
refund_fee as the refunded total, gmt_refund; TRADE_CLOSED once wholly refunded) follow
channels.sandbox.methods. The bill: alipay.data.dataservice.bill.downloadurl.query answers a
``.../downloadBillFile.resource?...&token=...`` URL next to the gateway.do that was called,
valid 30 s; a GET of it (unsigned, as at Alipay) returns the ZIP of GBK CSV files rendered by
channels.sandbox.alipay_bill; an unknown or expired token gets Alipay's "下载超时，请重新下载"
page instead of the file.

Protocol followed: Alipay Open Platform gateway API version 1.0 (alipay-sdk-python's wire format,
RSA2); deviations are listed in channels.sandbox.alipay_bill (bill) and the notes above.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from channels.alipay import signing, transformers as tf
from channels.sandbox import alipay_bill, keyring, replies as r
from channels.sandbox.engine import SANDBOX, ChannelSandbox, Event, SandboxConfig
from channels.sandbox.ledger import Refund, Trade, TradeStatus
from channels.sandbox.replies import trade_status
from channels.sandbox.notifier import Delivery

APP_ID = "2021000000000001"               # the sandbox merchant app (core.settings default)
BUYER_ID = "2088102146225135"
SELLER_ID = "2088101117955611"
ACK_BODY = b"success"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"

def alipay_ack(status: int, body: bytes) -> bool:
    return status == 200 and body == ACK_BODY


class AlipaySandbox(ChannelSandbox):
    """Alipay's gateway.do: keys loaded once; handlers in channels.sandbox.methods."""

    name = "alipay"
    trade_no_prefix = "22001"

    def __init__(self, config: SandboxConfig, app_id: str = APP_ID) -> None:
        super().__init__(config)
        self.app_id = app_id
        self.seller_id = SELLER_ID
        self.bill_tokens = alipay_bill.BillTokens()
        self.app_public_key: RSAPublicKey = keyring.public_key("alipay_app_public.pem")
        self.platform_key: RSAPrivateKey = keyring.private_key("alipay_platform_private.pem")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/gateway.do", gateway)
        app.router.add_get(alipay_bill.DOWNLOAD_PATH, download_bill)

    def answer(self, method: str, payload: dict[str, Any]) -> web.Response:
        body = signing.build_response(method, payload, self.platform_key)
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    def build_notification(self, trade: Trade, event: Event, refund: Refund | None,
                           notify_id: str, *, forged: bool = False) -> Delivery | None:
        key = keyring.attacker_key() if forged else self.platform_key
        form = notify_form(trade, self.app_id, notify_id, self.now(), key, refund)
        return Delivery(trade.out_trade_no, trade.notify_url,
                        urlencode(form).encode(),
                        {"Content-Type": FORM_CONTENT_TYPE}, alipay_ack, event.value)


def notify_form(trade: Trade, app_id: str, notify_id: str, now: datetime,
                private_key: RSAPrivateKey, refund: Refund | None = None) -> dict[str, str]:
    """Alipay's signed trade_status_sync form for the trade's current status (and, for a refund,
    Alipay's refund fields: out_biz_no, refund_fee as the total refunded so far, gmt_refund)."""
    assert trade.status is not None
    amount = tf.fen_to_yuan(trade.total_amount)
    form = {
        "notify_time": tf.alipay_timestamp(now), "notify_type": "trade_status_sync",
        "notify_id": notify_id, "app_id": app_id, "charset": signing.CHARSET,
        "version": tf.VERSION, "sign_type": signing.SIGN_TYPE, "trade_no": trade.trade_no,
        "out_trade_no": trade.out_trade_no, "buyer_id": BUYER_ID, "seller_id": SELLER_ID,
        "trade_status": trade_status(trade), "total_amount": amount, "subject": trade.subject,
    }
    if trade.created:
        form["gmt_create"] = tf.alipay_timestamp(trade.created)
    if trade.paid:
        form["gmt_payment"] = tf.alipay_timestamp(trade.paid)
        form["receipt_amount"] = form["buyer_pay_amount"] = form["invoice_amount"] = amount
        form["fund_bill_list"] = f'[{{"amount":"{amount}","fundChannel":"ALIPAYACCOUNT"}}]'
    if trade.status is TradeStatus.CLOSED and trade.closed:
        form["gmt_close"] = tf.alipay_timestamp(trade.closed)
    if trade.refunded_amount:
        form["refund_fee"] = tf.fen_to_yuan(trade.refunded_amount)
    if refund is not None:
        form["out_biz_no"] = refund.out_refund_no
        if refund.finished:
            form["gmt_refund"] = tf.alipay_timestamp(refund.finished)
    return signing.sign_notification(form, private_key)


async def download_bill(request: web.Request) -> web.StreamResponse:
    """GET of a bill_download_url: the ZIP while the token is valid, else Alipay's timeout page."""
    sb = request.app[SANDBOX]
    assert isinstance(sb, AlipaySandbox)
    day = sb.bill_tokens.day_for(request.query.get("token", ""))
    if day is None:
        return web.Response(body=alipay_bill.EXPIRED_PAGE, content_type="text/html",
                            charset="utf-8")
    body = alipay_bill.render_zip(sb.ledger, sb.seller_id, day, sb.now())
    name = f"{alipay_bill.file_stem(sb.seller_id, day)}.csv.zip"
    return web.Response(body=body, content_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


# ---- request checks -------------------------------------------------------------------------

# Required parameters and the sub_code Alipay answers when one is missing.
REQUIRED = {"app_id": "isv.missing-app-id", "method": "isv.missing-method",
            "sign_type": "isv.missing-signature-type", "sign": "isv.missing-signature",
            "timestamp": "isv.missing-timestamp", "version": "isv.missing-version",
            "biz_content": "isv.missing-biz-content"}


async def read_params(request: web.Request) -> dict[str, str] | None:
    """Query string and form body merged; None when a name appears twice."""
    params: dict[str, str] = {}
    form = await request.post()
    for source in (request.query, form):
        for key, value in source.items():
            if key in params or not isinstance(value, str):
                return None
            params[key] = value
    return params


def check_request(sb: AlipaySandbox, params: dict[str, str] | None) -> dict[str, Any] | None:
    """The gateway's refusal of a malformed or badly signed request, or None when it is fine."""
    from channels.sandbox.methods import HANDLERS
    if params is None:
        return r.invalid("isv.invalid-parameter", "参数重复")
    for name, sub_code in REQUIRED.items():
        if not params.get(name):
            return r.missing(sub_code)
    if params["app_id"] != sb.app_id:
        return r.invalid("isv.invalid-app-id", "无效的AppID参数")
    if params["sign_type"] != signing.SIGN_TYPE:
        return r.invalid("isv.invalid-signature-type", "无效的签名类型")
    if params.get("charset", signing.CHARSET).lower() != signing.CHARSET:
        return r.invalid("isv.invalid-charset", "字符集错误")
    if params["method"] not in HANDLERS:
        return r.invalid("isv.invalid-method", "不存在的方法名")
    if not signing.verify_request(params, sb.app_public_key):
        return r.invalid("isv.invalid-signature", "验签出错")
    try:
        datetime.strptime(params["timestamp"], tf.TIMESTAMP_FORMAT)
    except ValueError:
        return r.invalid("isv.invalid-timestamp", "非法的时间戳参数")
    return None


def read_biz(params: dict[str, str]) -> dict[str, Any] | None:
    try:
        biz = orjson.loads(params["biz_content"])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(biz, dict):
        return None
    otn = biz.get("out_trade_no")
    if otn is not None and (not isinstance(otn, str) or not 0 < len(otn) <= 64):
        return None
    return biz


async def gateway(request: web.Request) -> web.StreamResponse:
    from channels.sandbox.methods import HANDLERS, NEEDS_TRADE_NO
    sb = request.app[SANDBOX]
    assert isinstance(sb, AlipaySandbox)
    await sb.delay()
    params = await read_params(request)
    refusal = check_request(sb, params)
    method = (params or {}).get("method", "")
    if refusal is not None:
        return sb.answer(method if method in HANDLERS else "", refusal)
    assert params is not None
    biz = read_biz(params)
    if biz is None or (method in NEEDS_TRADE_NO and not biz.get("out_trade_no")):
        return sb.answer(method, r.business("ACQ.INVALID_PARAMETER", "参数无效"))
    if method != tf.METHOD_PAY and sb.error_now(
            followup=method in (tf.METHOD_QUERY, tf.METHOD_CANCEL)):
        return sb.answer(method, r.unknown_error())
    return await HANDLERS[method](request, sb, params, biz)
