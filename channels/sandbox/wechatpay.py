"""A local WeChat Pay API v3 server that speaks the real protocol, for local runs and tests.

Followed: the API v3 signing guide and the endpoint pages of the wechatpay-im mirror of
pay.weixin.qq.com (`openapi/v3/pay/transactions/{codepay,app,native}`,
`…/out-trade-no/{out_trade_no}{,/close,/reverse}`, `openapi/v3/refund/domestic/refunds`,
`openapi/v3/bill/tradebill`), the callback pages (`webhook/v3/`), the trade-bill format page
(`bill-download/format-trade.html`) and the APP pay-parameter signing of wechatpay-go.

What the sandbox checks on every request (routes in channels.sandbox.wechatpay_routes): the
``WECHATPAY2-SHA256-RSA2048`` Authorization header (all five fields, the merchant's mchid and
certificate serial, a timestamp within 5 minutes) and its SHA256withRSA signature over
``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`` with the merchant public key, the path being the
one the client signed (the ``/wechatpay`` mount prefix removed); a refusal is
``401 {"code":"SIGN_ERROR",...}`` with WeChat's `sign_information` detail. Every JSON answer (and
a 204) is signed with the platform key in the Wechatpay-* headers, serial ``PUB_KEY_ID_…``; the
bill file is not signed (as documented) and is covered by the SHA1 of the tradebill answer.

Charges follow the engine's amount table; in WeChat's words (code pay):
  00 200 trade_state SUCCESS; 01 403 NOT_ENOUGH, trade_state PAYERROR; 02/03 202 USERPAYING;
  04 held answer; 05/06 connection closed after commit; 07/08 500 SYSTEM_ERROR.
A repeat: paid -> 400 ORDERPAID; waiting -> 202 USERPAYING; closed -> 400 ORDER_CLOSED; another
amount -> 403 OUT_TRADE_NO_USED. APP / Native prepay answer prepay_id / code_url (the same
prepay_id again for a repeat) and the payer pays (00), fails (01) or never pays (03) later.

Close answers 204 and records an unknown out_trade_no as closed (the fence), and refuses a paid
trade with 400 ORDERPAID; reverse closes an open code-pay trade or refunds a paid one
(trade_state REVOKED) and refuses APP / Native trades. Refunds answer the engine's state
(SUCCESS, or PROCESSING with the refund_delay_ms knob) and refuse with 400 INVALID_REQUEST (amount
over the refundable rest, too many refunds, another amount for a known out_refund_no, trade not
paid) or 404 RESOURCE_NOT_EXISTS. Callbacks: TRANSACTION.SUCCESS and REFUND.SUCCESS|CLOSED,
resource AEAD_AES_256_GCM-encrypted with the APIv3 key, signed like answers, acknowledged by any
2xx. No callback for a closed or failed payment ("普通支付只有支付成功才有通知").

Deviations: v3 code pay documents no notify_url and no callback; the sandbox takes a
``notify_url`` field in the code-pay body as the callback URL configured on the merchant platform
and sends TRANSACTION.SUCCESS to it (paycell's connector sends one, see settings). Day
boundaries of the bill are UTC days (the ledger's), not Beijing days; the current day's bill is
served at once (WeChat generates it the next morning); only bill_type=ALL is served; a refund row's
交易时间 is when the refund succeeded, not when it was requested. Reverse answers only when the
ledger can act; the HTTP status of USERPAYING (202) and ORDERPAID (400) follow WeChat's v3 error
table as far as it could be checked.
"""
from __future__ import annotations

import string
import time
from dataclasses import dataclass
from typing import Any, Mapping

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from channels.sandbox import keyring
from channels.sandbox.engine import ChannelSandbox, Event, SandboxConfig
from channels.sandbox.ledger import Refund, RefundState, Trade, TradeStatus
from channels.sandbox.notifier import Delivery, accept_2xx
from channels.wechatpay import signing, transformers as tf

MCHID = "1900009191"                                    # core.settings defaults
APPID = "wxd678efh567hg6787"
MERCHANT_SERIAL_NO = "3775B6A45ACD588826D15E583A95F5DD8EA4F2C5"
PLATFORM_SERIAL_NO = "PUB_KEY_ID_0119000091912025112500000000000001"
APIV3_KEY = "paycellSandboxApiV3Key0123456789"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
BILLS_KEPT_MAX = 256
BILL_URL_VALID_S = 300
ALNUM = string.ascii_letters + string.digits

TRADE_TYPES = {"barcode": tf.TRADE_TYPE_CODEPAY, "app": "APP", "native": "NATIVE"}
STATE_DESC = {
    "SUCCESS": "支付成功", "REFUND": "转入退款", "NOTPAY": "未支付", "CLOSED": "已关闭",
    "REVOKED": "已撤销（付款码支付）", "USERPAYING": "用户支付中（付款码支付）",
    "PAYERROR": "支付失败(其他原因，如银行返回失败)",
}
REFUND_STATUS = {RefundState.SUCCESS: "SUCCESS", RefundState.PROCESSING: "PROCESSING",
                 RefundState.FAILED: "CLOSED"}


@dataclass
class BillFile:
    body: bytes
    expires_s: float


def trade_state(trade: Trade) -> str:
    assert trade.status is not None
    if trade.status is TradeStatus.WAITING:
        return "USERPAYING" if trade.payment_type == "barcode" else "NOTPAY"
    if trade.status is TradeStatus.PAID:
        return "REFUND" if trade.committed_refund_amount else "SUCCESS"
    return trade.extra.get("trade_state", "CLOSED")


class WechatPaySandbox(ChannelSandbox):
    """WeChat Pay v3 for one merchant: keys loaded once, routes in wechatpay_routes."""

    name = "wechatpay"
    trade_no_prefix = "42000"

    def __init__(self, config: SandboxConfig, mchid: str = MCHID, appid: str = APPID) -> None:
        super().__init__(config)
        self.mchid, self.appid = mchid, appid
        self.merchant_serial_no, self.platform_serial_no = MERCHANT_SERIAL_NO, PLATFORM_SERIAL_NO
        self.apiv3_key = APIV3_KEY
        self.merchant_public_key: RSAPublicKey = keyring.public_key(
            "wechatpay_merchant_public.pem")
        self.platform_key: RSAPrivateKey = keyring.private_key("wechatpay_platform_private.pem")
        self.bills: dict[str, BillFile] = {}
        self.refund_index: dict[str, str] = {}          # out_refund_no -> out_trade_no

    def add_routes(self, app: web.Application) -> None:
        from channels.sandbox.wechatpay_routes import add_routes
        add_routes(app)

    def random_text(self, n: int) -> str:
        return "".join(self.rng.choice(ALNUM) for _ in range(n))

    # ---- answers --------------------------------------------------------------------------

    def answer(self, status: int, payload: Mapping[str, Any] | None = None) -> web.Response:
        """A platform-signed answer (204 with an empty signed body when payload is None)."""
        body = orjson.dumps(payload) if payload is not None else b""
        headers = signing.signed_headers(self.platform_key, self.platform_serial_no, body,
                                         int(time.time()), self.random_text(32))
        headers[signing.H_REQUEST_ID] = f"08{self.rng.getrandbits(96):024X}"
        if payload is None:
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers,
                            content_type="application/json", charset="utf-8")

    def error(self, status: int, code: str, message: str,
              detail: Mapping[str, Any] | None = None) -> web.Response:
        payload: dict[str, Any] = {"code": code, "message": message}
        if detail:
            payload["detail"] = detail
        return self.answer(status, payload)

    def check_auth(self, request: web.Request, body: bytes) -> web.Response | None:
        """WeChat's refusal of a request whose Authorization is missing, malformed or does not
        verify, or None when it is fine."""
        raw_path = request.raw_path
        signed_path = raw_path[raw_path.find("/v3/"):] if "/v3/" in raw_path else raw_path
        fields = signing.parse_authorization(request.headers.get("Authorization", ""))
        if fields is None:
            return self.error(401, "SIGN_ERROR", "Authorization不合法")
        if fields["mchid"] != self.mchid:
            return self.error(400, "MCH_NOT_EXISTS", "商户号不存在")
        if fields["serial_no"] != self.merchant_serial_no:
            return self.error(401, "SIGN_ERROR", "商户证书序列号有误")
        ts = fields["timestamp"]
        if not ts.isdigit() or abs(time.time() - int(ts)) > signing.CLOCK_SKEW_S_MAX:
            return self.error(401, "SIGN_ERROR", "请求时间戳已过期")
        message = signing.request_message(request.method, signed_path, ts, fields["nonce_str"],
                                          body)
        if not signing.verify(self.merchant_public_key, message, fields["signature"]):
            text = message.decode("utf-8", "replace")
            return self.error(401, "SIGN_ERROR", "签名错误，请检查后再试", {
                "detail": {"issue": "sign not match"}, "field": "signature",
                "location": "authorization", "sign_information": {
                    "method": request.method, "sign_message_length": len(message),
                    "truncated_sign_message": text[:64], "url": signed_path}})
        return None

    # ---- JSON objects -----------------------------------------------------------------------

    def transaction(self, trade: Trade) -> dict[str, Any]:
        """The transaction object of query answers, code-pay answers and callbacks."""
        state = trade_state(trade)
        out: dict[str, Any] = {
            "appid": self.appid, "mchid": self.mchid, "out_trade_no": trade.out_trade_no,
            "trade_type": TRADE_TYPES.get(trade.payment_type, "MICROPAY"),
            "trade_state": state, "trade_state_desc": STATE_DESC[state], "attach": "",
            "amount": {"total": trade.total_amount, "currency": trade.currency},
            "promotion_detail": [],
        }
        if trade.trade_no:
            out["transaction_id"] = trade.trade_no
        if trade.paid is not None:
            out.update(bank_type="OTHERS", success_time=tf.rfc3339(trade.paid),
                       payer={"openid": OPENID})
            out["amount"].update(payer_total=trade.total_amount, payer_currency=trade.currency)
        return out

    def refund_object(self, trade: Trade, refund: Refund) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refund_id": refund.refund_no, "out_refund_no": refund.out_refund_no,
            "transaction_id": trade.trade_no, "out_trade_no": trade.out_trade_no,
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "create_time": tf.rfc3339(refund.created), "status": REFUND_STATUS[refund.state],
            "funds_account": "AVAILABLE", "promotion_detail": [],
            "amount": {"total": trade.total_amount, "refund": refund.amount, "from": [],
                       "payer_total": trade.total_amount, "payer_refund": refund.amount,
                       "settlement_total": trade.total_amount,
                       "settlement_refund": refund.amount, "discount_refund": 0,
                       "currency": trade.currency, "refund_fee": 0},
        }
        if refund.finished is not None and refund.state is RefundState.SUCCESS:
            out["success_time"] = tf.rfc3339(refund.finished)
        return out

    def find_refund(self, out_refund_no: str) -> tuple[Trade, Refund] | None:
        """The refund by merchant refund number (indexed; a scan finds reversals)."""
        otn = self.refund_index.get(out_refund_no)
        candidates = [self.ledger.get(otn)] if otn is not None else []
        candidates += list(self.ledger.trades.values()) if not any(candidates) else []
        for trade in candidates:
            if trade is not None and out_refund_no in trade.refund_list:
                return trade, trade.refund_list[out_refund_no]
        return None

    # ---- callbacks ---------------------------------------------------------------------------

    def build_notification(self, trade: Trade, event: Event, refund: Refund | None,
                           notify_id: str, *, forged: bool = False) -> Delivery | None:
        if event is Event.CLOSED:
            return None                        # WeChat notifies payments only when they succeed
        if event is Event.REFUND:
            assert refund is not None
            status = REFUND_STATUS[refund.state]
            plain: dict[str, Any] = {
                "mchid": self.mchid, "out_trade_no": trade.out_trade_no,
                "transaction_id": trade.trade_no, "out_refund_no": refund.out_refund_no,
                "refund_id": refund.refund_no, "refund_status": status,
                "user_received_account": "支付用户零钱",
                "amount": {"total": trade.total_amount, "refund": refund.amount,
                           "payer_total": trade.total_amount, "payer_refund": refund.amount}}
            if refund.finished is not None:
                plain["success_time"] = tf.rfc3339(refund.finished)
            kind, event_type, summary = "refund", f"REFUND.{status}", "退款成功"
        else:
            plain = self.transaction(trade)
            kind, event_type, summary = "transaction", "TRANSACTION.SUCCESS", "支付成功"
        nonce = self.random_text(signing.AEAD_NONCE_CHARS)
        envelope = {
            "id": notify_id, "create_time": tf.rfc3339(self.now()),
            "resource_type": "encrypt-resource", "event_type": event_type, "summary": summary,
            "resource": {"original_type": kind, "algorithm": signing.AEAD_ALGORITHM,
                         "ciphertext": signing.encrypt_resource(self.apiv3_key,
                                                                orjson.dumps(plain), nonce, kind),
                         "associated_data": kind, "nonce": nonce}}
        body = orjson.dumps(envelope)
        key = keyring.attacker_key() if forged else self.platform_key
        headers = signing.signed_headers(key, self.platform_serial_no, body, int(time.time()),
                                         self.random_text(32))
        headers["Content-Type"] = "application/json"
        url = refund.notify_url if refund is not None and refund.notify_url else trade.notify_url
        return Delivery(trade.out_trade_no, url, body, headers, accept_2xx, event.value)
