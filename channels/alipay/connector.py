"""The Alipay connector: HTTP I/O only. Requests are built and answers mapped in transformers.

Failures are mapped by what they mean for the money (transport errors in channels.transport):
  * the connection could not be established (refused, DNS, connect timeout)  -> NotSent
  * timeout, disconnect or reset after sending, an HTTP 5xx                  -> OutcomeUnknown
  * an answer that is unsigned, badly signed, unparseable or an odd status   -> ProtocolError

The bill is the one exchange outside gateway.do: the signed bill URL answer names a download URL
that is fetched with a plain GET (Alipay does not sign the file). It is fetched only from the
gateway's own host or a host listed in settings (alipay.bill_download_hosts), never elsewhere.
"""
from __future__ import annotations

from datetime import date
from dataclasses import dataclass, field
from typing import Any, Mapping

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from channels.alipay import bill, signing, transformers as tf
from channels.base import (Ack, Capabilities, ChannelResult, ChargeRequest, Notification,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus, Statement)
from channels.transport import Transport, form_body, guarded, read_bounded
from core.clock import Clock, SystemClock
from core.settings import Settings

RESPONSE_BODY_MAX_BYTES = 1_048_576
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
ACK_ACCEPTED = Ack(200, "text/plain", b"success")
ACK_REFUSED = Ack(400, "text/plain", b"fail")
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class AlipayConfig:
    app_id: str
    gateway_url: str
    app_private_key: RSAPrivateKey = field(repr=False)
    alipay_public_key: RSAPublicKey = field(repr=False)
    call_timeout_ms: int
    notify_url: str
    connections_max: int = 64
    bill_download_hosts: str = ""      # extra hosts a bill URL may name (see settings)
    bill_timeout_ms: int = 30_000      # the bill download: a larger body than an API answer

    def __post_init__(self) -> None:
        assert self.call_timeout_ms > 0, self.call_timeout_ms
        assert self.bill_timeout_ms > 0, self.bill_timeout_ms
        assert self.gateway_url.startswith(("http://", "https://")), "gateway_url"

    @property
    def bill_hosts(self) -> frozenset[str]:
        return tf.allowed_bill_hosts(self.gateway_url, self.bill_download_hosts)

    @classmethod
    def from_settings(cls, settings: Settings, notify_url: str) -> AlipayConfig:
        a = settings.alipay
        return cls(
            app_id=a.app_id,
            gateway_url=settings.alipay_gateway_url(),
            app_private_key=signing.load_private_key(a.app_private_key_path),
            alipay_public_key=signing.load_public_key(a.alipay_public_key_path),
            call_timeout_ms=a.call_timeout_ms,
            notify_url=notify_url,
            connections_max=a.connections_max,
            bill_download_hosts=a.bill_download_hosts,
        )


class AlipayConnector:
    """channels.base.Connector for Alipay barcode payments: alipay.trade.pay/query/cancel/refund,
    alipay.trade.fastpay.refund.query, trade_status_sync notifications and the daily trade bill."""

    name = "alipay"
    # Alipay's documented limits for barcode pay: 0.01 to 100,000,000.00 CNY a trade.
    # Refund window: "交易超过约定时间（签约时设置的可退款时间）的订单无法进行退款" -- set by the
    # merchant's contract, "usually 12 months after the initial payment" (docs.antom.com
    # autodebitpay/refund): 365 days, the longest; a shorter contract is refused by Alipay
    # (40004 ACQ.TRADE_NOT_ALLOW_REFUND / ACQ.TRADE_HAS_FINISHED -> RefundStatus.FAILED).
    # Partial refunds: alipay.trade.refund documents no count limit ("同一笔交易多次退款需要保证
    # 唯一", total <= paid amount); 50 is kept as paycell's own bound (as WeChat Pay's).
    # QPS: Alipay publishes no fixed per-app rate (it is set per app/contract); 200 is paycell's
    # assumption, not a documented figure.
    capabilities = Capabilities(currencies=frozenset({"CNY"}), payment_types=frozenset({"barcode"}),
                                countries=frozenset({"CN"}), amount_min=1,
                                amount_max=10_000_000_000, qps=200, refund_window_days=365,
                                partial_refunds_max=50)

    def __init__(self, config: AlipayConfig, session: aiohttp.ClientSession | None,
                 clock: Clock | None = None) -> None:
        self._config = config
        self._http = Transport(session, config.call_timeout_ms, config.connections_max)
        self._clock: Clock = clock or SystemClock()

    async def close(self) -> None:
        """Close the HTTP session if this connector created it (never an injected one)."""
        await self._http.close()

    # ---- Connector ------------------------------------------------------------------------

    async def charge(self, req: ChargeRequest) -> ChannelResult:
        caps = self.capabilities
        if req.currency not in caps.currencies or req.payment_type not in caps.payment_types:
            raise ValueError(f"alipay cannot charge {req.currency}/{req.payment_type}")
        params = tf.pay_params(self._config.app_id, req, self._clock.now(), self._config.notify_url)
        payload = await self._call(tf.METHOD_PAY, params)
        return tf.map_pay(payload, req.order_id)

    async def query(self, order_id: str, currency: str = tf.CURRENCY) -> ChannelResult:
        params = tf.query_params(self._config.app_id, order_id, self._clock.now())
        return tf.map_query(await self._call(tf.METHOD_QUERY, params), order_id)

    async def cancel(self, order_id: str) -> ChannelResult:
        params = tf.cancel_params(self._config.app_id, order_id, self._clock.now())
        return tf.map_cancel(await self._call(tf.METHOD_CANCEL, params), order_id)

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notification:
        content_type = headers.get("Content-Type", "")
        if not content_type.lower().startswith(FORM_CONTENT_TYPE):
            raise ProtocolError("alipay notification is not a urlencoded form")
        form = tf.parse_form(body)
        return tf.map_notification(form, self._config.app_id, self._config.alipay_public_key)

    def ack(self, accepted: bool) -> Ack:
        return ACK_ACCEPTED if accepted else ACK_REFUSED

    async def refund(self, req: RefundRequest) -> RefundResult:
        if req.currency != tf.CURRENCY:
            raise ValueError(f"alipay cannot refund {req.currency}")
        params = tf.refund_params(self._config.app_id, req, self._clock.now())
        result = tf.map_refund(await self._call(tf.METHOD_REFUND, params), req)
        if result.status is not RefundStatus.PENDING:
            return result
        # fund_change "N": a repeat of a finished refund, or one not done yet. Alipay says to
        # confirm with the refund query; a query that fails leaves the refund PENDING.
        try:
            queried = await self.refund_query(req.order_id, req.refund_id, req.currency)
        except OutcomeUnknown:
            return result
        if queried.status is RefundStatus.SUCCEEDED:
            if queried.amount != req.amount:
                raise ProtocolError("alipay refund number carries another amount")
            return queried
        return result

    async def refund_query(self, order_id: str, refund_id: str,
                           currency: str = tf.CURRENCY) -> RefundResult:
        params = tf.refund_query_params(self._config.app_id, order_id, refund_id,
                                        self._clock.now())
        payload = await self._call(tf.METHOD_REFUND_QUERY, params)
        return tf.map_refund_query(payload, order_id, refund_id)

    async def statement(self, day: date) -> Statement:
        """The day's trade bill (bill_date is Alipay's day, Beijing time)."""
        params = tf.bill_url_params(self._config.app_id, day, self._clock.now())
        url = tf.map_bill_url(await self._call(tf.METHOD_BILL_URL, params),
                              self._config.bill_hosts)
        archive = await guarded(tf.METHOD_BILL_URL, lambda: self._download(url))
        return bill.parse_bill(archive, day)

    # ---- HTTP -----------------------------------------------------------------------------

    async def _call(self, method: str, params: dict[str, str]) -> dict[str, Any]:
        signed = signing.sign_params(params, self._config.app_private_key)
        query, form = tf.split_for_wire(signed)
        body = await guarded(method, lambda: self._post(query, form))
        return signing.open_response(body, method, self._config.alipay_public_key)

    async def _post(self, query: dict[str, str], form: dict[str, str]) -> bytes:
        headers = {"Content-Type": f"{FORM_CONTENT_TYPE};charset={signing.CHARSET}"}
        data = form_body(form, signing.CHARSET)
        async with self._http.session().post(self._config.gateway_url, params=query, data=data,
                                             headers=headers, timeout=self._http.timeout()) as resp:
            if resp.status >= 500:
                raise OutcomeUnknown(f"alipay gateway answered HTTP {resp.status}")
            if resp.status != 200:
                raise ProtocolError(f"alipay gateway answered HTTP {resp.status}")
            return await read_bounded(resp, RESPONSE_BODY_MAX_BYTES, "alipay answer")

    async def _download(self, url: str) -> bytes:
        """GET the bill file (unsigned, no redirects followed: the host was checked)."""
        timeout = self._http.timeout(self._config.bill_timeout_ms)
        async with self._http.session().get(url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status >= 500:
                raise OutcomeUnknown(f"alipay bill download answered HTTP {resp.status}")
            if resp.status != 200:
                raise ProtocolError(f"alipay bill download answered HTTP {resp.status}")
            body = await read_bounded(resp, bill.BILL_ZIP_MAX_BYTES, "alipay bill archive")
            if not body.startswith(ZIP_MAGIC):
                # an expired URL ("下载超时，请重新下载") answers a page, not the archive
                raise ProtocolError("alipay bill download did not return a ZIP (URL expired?)")
            return body

