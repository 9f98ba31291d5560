"""The QQ Wallet (QPay) connector: HTTP I/O only. Requests are built and answers mapped in
transformers; signatures in signing.

Failures are mapped by what they mean for the money (transport errors in channels.transport):
  * the connection could not be established (refused, DNS, connect timeout)  -> NotSent
  * timeout, disconnect or reset after sending, an HTTP 5xx                  -> OutcomeUnknown
  * an answer that is badly signed, unparseable or an odd HTTP status         -> ProtocolError

Refund and reverse go to QPay's certificate host (api.qpay.qq.com, `cert_gateway_url`) and, when
`client_cert_path` / `client_key_path` are set, present that client certificate (mTLS).
"""
from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Mapping

import aiohttp

from channels.base import (Ack, Capabilities, ChannelResult, ChargeRequest, Notification,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           Statement)
from channels.qpay import signing, transformers as tf
from channels.transport import Transport, guarded, read_bounded
from core.clock import Clock, SystemClock
from core.settings import Settings
from core.states import Fact

RESPONSE_BODY_MAX_BYTES = 1_048_576
BILL_BODY_MAX_BYTES = tf.BILL_BODY_MAX_BYTES
XML_CONTENT_TYPE = "text/xml; charset=utf-8"
ACK_ACCEPTED = Ack(200, "text/xml", tf.ACK_SUCCESS)
ACK_REFUSED = Ack(200, "text/xml", tf.ACK_FAIL)


@dataclass(frozen=True)
class QPayConfig:
    mch_id: str
    gateway_url: str                   # https://qpay.qq.com (or the sandbox)
    cert_gateway_url: str              # https://api.qpay.qq.com: refund and reverse
    api_key: str = field(repr=False)
    call_timeout_ms: int
    notify_url: str
    appid: str = ""
    sign_type: str = signing.SIGN_MD5
    device_info: str = "paycell"
    op_user_id: str = ""
    op_user_passwd: str = field(default="", repr=False)
    client_cert_path: str = ""
    client_key_path: str = ""
    connections_max: int = 64

    def __post_init__(self) -> None:
        assert self.call_timeout_ms > 0, self.call_timeout_ms
        assert self.sign_type in signing.SIGN_TYPES, self.sign_type
        for url in (self.gateway_url, self.cert_gateway_url):
            assert url.startswith(("http://", "https://")), "gateway_url"
        assert bool(self.client_cert_path) == bool(self.client_key_path), "client cert and key"

    @classmethod
    def from_settings(cls, settings: Settings, notify_url: str) -> QPayConfig:
        q = settings.qpay
        base = settings.channel_base_url("qpay").rstrip("/")
        return cls(mch_id=q.mch_id, gateway_url=base,
                   cert_gateway_url=(q.cert_gateway_url or base).rstrip("/"),
                   api_key=q.api_key.reveal(), call_timeout_ms=q.call_timeout_ms,
                   notify_url=notify_url, appid=q.appid, sign_type=q.sign_type,
                   device_info=q.device_info, op_user_id=q.op_user_id or q.mch_id,
                   op_user_passwd=q.op_user_passwd.reveal(),
                   client_cert_path=q.client_cert_path, client_key_path=q.client_key_path)


class QPayConnector:
    """channels.base.Connector for QQ Wallet barcode payments (付款码支付)."""

    name = "qpay"
    # Barcode pay in CNY within mainland China. Refunds: within one year of payment ("交易时间
    # 超过一年的订单无法提交退款"), several partial refunds allowed (the count is not documented
    # in the pages found; 50 as WeChat Pay v2, which QPay mirrors). The single-trade ceiling and
    # QPS were not found in QPay's pages: the values below are conservative assumptions.
    capabilities = Capabilities(currencies=frozenset({"CNY"}), payment_types=frozenset({"barcode"}),
                                countries=frozenset({"CN"}), amount_min=1,
                                amount_max=5_000_000, qps=100, refund_window_days=365,
                                partial_refunds_max=50)

    def __init__(self, config: QPayConfig, session: aiohttp.ClientSession | None,
                 clock: Clock | None = None, nonce: Callable[[], str] | None = None) -> None:
        self._config = config
        self._merchant = tf.Merchant(config.mch_id, config.appid)
        self._http = Transport(session, config.call_timeout_ms, config.connections_max)
        self._clock: Clock = clock or SystemClock()
        self._nonce = nonce or (lambda: secrets.token_hex(16))
        self._ssl: ssl.SSLContext | None = None
        if config.client_cert_path:
            self._ssl = ssl.create_default_context()
            self._ssl.load_cert_chain(config.client_cert_path, config.client_key_path)

    async def close(self) -> None:
        """Close the HTTP session if this connector created it (never an injected one)."""
        await self._http.close()

    # ---- Connector ------------------------------------------------------------------------

    async def charge(self, req: ChargeRequest) -> ChannelResult:
        caps = self.capabilities
        if req.currency not in caps.currencies or req.payment_type not in caps.payment_types:
            raise ValueError(f"qpay cannot charge {req.currency}/{req.payment_type}")
        params = tf.micropay_params(self._merchant, req, self._nonce(),
                                    device_info=self._config.device_info,
                                    notify_url=self._config.notify_url)
        return tf.map_micropay(await self._call(tf.PATH_MICROPAY, params), self._merchant,
                               req.order_id)

    async def query(self, order_id: str, currency: str = tf.CURRENCY) -> ChannelResult:
        params = tf.order_params(self._merchant, order_id, self._nonce())
        return tf.map_query(await self._call(tf.PATH_QUERY, params), self._merchant, order_id)

    async def cancel(self, order_id: str) -> ChannelResult:
        """Close the trade; when QPay says it is paid, reverse it (the money goes back); when it
        does not know the trade, reverse too: a reversed trade number can never be paid."""
        params = tf.order_params(self._merchant, order_id, self._nonce())
        closed = tf.map_close(await self._call(tf.PATH_CLOSE, params), self._merchant)
        if closed.exists and closed.fact is not Fact.PAID:
            return closed
        action = "refund" if closed.exists else "close"
        params = tf.reverse_params(self._merchant, order_id, self._nonce(),
                                   op_user_id=self._config.op_user_id,
                                   op_passwd_md5=signing.operator_password(
                                       self._config.op_user_passwd))
        fields = await self._call(tf.PATH_REVERSE, params, cert=True)
        return tf.map_reverse(fields, self._merchant, action)

    async def refund(self, req: RefundRequest) -> RefundResult:
        params = tf.refund_params(self._merchant, req, self._nonce(),
                                  op_user_id=self._config.op_user_id,
                                  op_passwd_md5=signing.operator_password(
                                      self._config.op_user_passwd))
        return tf.map_refund(await self._call(tf.PATH_REFUND, params, cert=True),
                             self._merchant, req)

    async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
        params = tf.refund_query_params(self._merchant, order_id, refund_id, self._nonce())
        return tf.map_refund_query(await self._call(tf.PATH_REFUND_QUERY, params),
                                   self._merchant, refund_id)

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notification:
        return tf.map_notification(body, self._merchant, self._config.api_key)

    def ack(self, accepted: bool) -> Ack:
        return ACK_ACCEPTED if accepted else ACK_REFUSED

    async def statement(self, day: date) -> Statement:
        params = tf.statement_params(self._merchant, day, self._nonce())
        body = await guarded(tf.PATH_STATEMENT,
                              lambda: self._post(tf.PATH_STATEMENT, params, BILL_BODY_MAX_BYTES))
        return tf.parse_statement(body, day)

    # ---- HTTP -----------------------------------------------------------------------------

    async def _call(self, path: str, params: dict[str, str], cert: bool = False) -> dict[str, str]:
        body = await guarded(path, lambda: self._post(path, params, RESPONSE_BODY_MAX_BYTES,
                                                      cert))
        return signing.open_signed(body, self._config.api_key, self._config.sign_type)

    async def _post(self, path: str, params: dict[str, str], max_bytes: int,
                    cert: bool = False) -> bytes:
        signed = signing.sign_params(params, self._config.api_key, self._config.sign_type)
        base = self._config.cert_gateway_url if cert else self._config.gateway_url
        extra: dict[str, Any] = {"ssl": self._ssl} if cert and self._ssl is not None else {}
        async with self._http.session().post(base + path, data=signing.to_xml(signed),
                                             headers={"Content-Type": XML_CONTENT_TYPE},
                                             timeout=self._http.timeout(), **extra) as resp:
            if resp.status >= 500:
                raise OutcomeUnknown(f"qpay answered HTTP {resp.status}")
            if resp.status != 200:
                raise ProtocolError(f"qpay answered HTTP {resp.status}")
            return await read_bounded(resp, max_bytes, "qpay answer")

