"""The WeChat Pay API v3 connector: HTTP I/O only. Requests are built and answers mapped in
transformers; signatures live in signing.

Every request carries the merchant's WECHATPAY2-SHA256-RSA2048 Authorization over the exact
path, query and body bytes sent. Every answer below HTTP 500 must carry a valid platform
signature (Wechatpay-* headers, serial = the configured platform serial, within 5 minutes), except
the bill file itself, which WeChat sends unsigned and which is checked by its SHA1 instead.

Failures are mapped by what they mean for the money (transport errors in channels.transport):
  * the connection could not be established (refused, DNS, connect timeout)  -> NotSent
  * timeout, disconnect or reset after sending, an HTTP 5xx                  -> OutcomeUnknown
  * an answer that is unsigned, badly signed or unparseable                  -> ProtocolError
"""
from __future__ import annotations

import dataclasses
import gzip
import secrets
import zlib
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Mapping

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from yarl import URL

from channels.base import (Ack, Capabilities, ChannelResult, ChargeRequest, Notification,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           Statement)
from channels.transport import Transport, guarded, read_bounded
from channels.wechatpay import bill, signing, transformers as tf
from core.clock import Clock, SystemClock
from core.settings import Settings
from core.states import Fact

RESPONSE_BODY_MAX_BYTES = 1_048_576
NONCE_BYTES = 16
ACK_ACCEPTED = Ack(204, "application/json", b"")
ACK_REFUSED = Ack(400, "application/json", b'{"code":"FAIL","message":"invalid callback"}')


@dataclass(frozen=True)
class WechatPayConfig:
    mchid: str
    appid: str
    base_url: str                       # https://api.mch.weixin.qq.com or <sandbox>/wechatpay
    merchant_serial_no: str
    merchant_private_key: RSAPrivateKey = field(repr=False)
    platform_public_key: RSAPublicKey = field(repr=False)
    platform_serial_no: str
    apiv3_key: str = field(repr=False)
    call_timeout_ms: int
    notify_url: str
    codepay_notify_url: bool = True
    connections_max: int = 64

    def __post_init__(self) -> None:
        assert self.call_timeout_ms > 0, self.call_timeout_ms
        assert self.base_url.startswith(("http://", "https://")), "base_url"
        assert len(self.apiv3_key.encode()) == signing.APIV3_KEY_BYTES, "apiv3_key is 32 bytes"

    @classmethod
    def from_settings(cls, settings: Settings, notify_url: str) -> WechatPayConfig:
        w = settings.wechatpay
        return cls(
            mchid=w.mchid, appid=w.appid,
            base_url=settings.channel_base_url("wechatpay").rstrip("/"),
            merchant_serial_no=w.merchant_serial_no,
            merchant_private_key=signing.load_private_key(w.merchant_private_key_path),
            platform_public_key=signing.load_public_key(w.platform_public_key_path),
            platform_serial_no=w.platform_serial_no, apiv3_key=w.apiv3_key.reveal(),
            call_timeout_ms=w.call_timeout_ms, notify_url=notify_url,
            codepay_notify_url=w.codepay_notify_url, connections_max=w.connections_max,
        )


class WechatPayConnector:
    """channels.base.Connector for WeChat Pay v3: code pay (barcode), APP and Native prepay."""

    name = "wechatpay"
    # Documented limits: amount.total >= 1 fen; code pay and refunds within a year of payment;
    # at most 50 partial refunds; refund API 150 qps (errors 6 qps).
    capabilities = Capabilities(currencies=frozenset({"CNY"}),
                                payment_types=frozenset({"barcode", "app", "native"}),
                                countries=frozenset({"CN"}), amount_min=1,
                                amount_max=10_000_000_000, qps=150, refund_window_days=365,
                                partial_refunds_max=50)

    def __init__(self, config: WechatPayConfig, session: aiohttp.ClientSession | None,
                 clock: Clock | None = None,
                 nonce: Callable[[], str] | None = None) -> None:
        self._config = config
        self._http = Transport(session, config.call_timeout_ms, config.connections_max)
        self._clock: Clock = clock or SystemClock()
        self._nonce = nonce or (lambda: secrets.token_hex(NONCE_BYTES).upper())

    async def close(self) -> None:
        """Close the HTTP session if this connector created it (never an injected one)."""
        await self._http.close()

    # ---- Connector ------------------------------------------------------------------------

    async def charge(self, req: ChargeRequest) -> ChannelResult:
        caps, c = self.capabilities, self._config
        if req.currency not in caps.currencies or req.payment_type not in caps.payment_types:
            raise ValueError(f"wechatpay cannot charge {req.currency}/{req.payment_type}")
        notify_url = req.notify_url or c.notify_url
        if req.payment_type == "barcode":
            body = tf.codepay_body(c.appid, c.mchid, req,
                                   notify_url if c.codepay_notify_url else "")
            return tf.map_codepay(await self._call("POST", tf.PATH_CODEPAY, body), req.order_id)
        body = tf.prepay_body(c.appid, c.mchid, req, notify_url)
        ans = await self._call("POST", tf.PATH_PREPAY[req.payment_type], body)
        result = tf.map_prepay(ans, req.payment_type)
        if req.payment_type == "app" and result.pay_data:
            pay_data = tf.app_pay_data(c.appid, c.mchid, result.pay_data["prepay_id"],
                                       c.merchant_private_key, int(self._clock.time()),
                                       self._nonce())
            result = dataclasses.replace(result, pay_data=pay_data)
        return result

    async def query(self, order_id: str, currency: str = tf.CURRENCY) -> ChannelResult:
        ans = await self._call("GET", tf.query_path(order_id, self._config.mchid))
        return tf.map_query(ans, order_id)

    async def cancel(self, order_id: str) -> ChannelResult:
        """Query first, then as transformers.cancel_step says: an unknown trade is closed (the
        fence), a code-pay one reversed (refunded if it was paid), an open prepay one closed, a
        paid prepay one reported PAID."""
        c = self._config
        ans = await self._call("GET", tf.query_path(order_id, c.mchid))
        found = tf.map_query(ans, order_id)
        step = tf.cancel_step(ans, found)
        if step is tf.CancelStep.DONE:
            return tf.closed("close", found.raw_status, found.channel_trade_no)
        if step is tf.CancelStep.PAID:
            return found
        if step is tf.CancelStep.REVERSE:
            rev = await self._call("POST", tf.reverse_path(order_id),
                                   {"appid": c.appid, "mchid": c.mchid})
            tf.reverse_done(rev, order_id)
            action = "refund" if found.fact is Fact.PAID else "close"
            return tf.closed(action, "REVOKED", found.channel_trade_no)
        closing = await self._call("POST", tf.close_path(order_id), {"mchid": c.mchid})
        if tf.close_done(closing):
            return tf.closed("close", "CLOSED", found.channel_trade_no)
        paid = await self.query(order_id)
        if paid.fact is not Fact.PAID:
            raise OutcomeUnknown("wechatpay close said ORDERPAID but the query disagrees")
        return paid

    async def refund(self, req: RefundRequest) -> RefundResult:
        body = tf.refund_body(req, self._config.notify_url)
        return tf.map_refund(await self._call("POST", tf.PATH_REFUNDS, body), req.refund_id)

    async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
        ans = await self._call("GET", tf.refund_query_path(refund_id))
        return tf.map_refund_query(ans, refund_id)

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notification:
        c = self._config
        signing.check_signed(headers, body, c.platform_public_key, c.platform_serial_no,
                             self._clock.time())
        envelope, resource = tf.open_callback(body, c.apiv3_key)
        return tf.map_notification(envelope, resource, c.mchid, c.appid)

    def ack(self, accepted: bool) -> Ack:
        return ACK_ACCEPTED if accepted else ACK_REFUSED

    async def statement(self, day: date) -> Statement:
        ticket = bill.map_tradebill(await self._call("GET", tf.tradebill_path(day)))
        if ticket is None:
            return Statement(tf.CHANNEL, day, ())
        raw = await self._download(ticket.download_url)
        bill.check_bill_hash(ticket, raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("wechatpay bill is not utf-8") from None
        return bill.parse_tradebill(text, day)

    # ---- HTTP -----------------------------------------------------------------------------

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        c = self._config
        auth = signing.authorization(c.mchid, c.merchant_serial_no, c.merchant_private_key,
                                     method, path, int(self._clock.time()), self._nonce(), body)
        headers = {"Authorization": auth, "Accept": "application/json",
                   "Wechatpay-Serial": c.platform_serial_no}
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    async def _call(self, method: str, path: str,
                    body: Mapping[str, Any] | None = None) -> tf.Answer:
        data = tf.body_bytes(body) if body is not None else b""
        status, headers, raw = await guarded(
            f"{method} {path.split('?')[0]}",
            lambda: self._send(method, self._config.base_url + path, path, data))
        if status >= 500:
            raise OutcomeUnknown(f"wechatpay answered HTTP {status}")
        c = self._config
        signing.check_signed(headers, raw, c.platform_public_key, c.platform_serial_no,
                             self._clock.time())
        return tf.parse_answer(status, raw)

    async def _download(self, url: str) -> bytes:
        """GET the bill file (signed request, unsigned answer); gunzip when it is gzip."""
        base = self._config.base_url
        path = url[len(base):] if url.startswith(base) else (
            URL(url).raw_path_qs if url.startswith(("http://", "https://")) else url)
        status, _, raw = await guarded("GET billdownload",
                                       lambda: self._send("GET", url, path, b"",
                                                          bill.BILL_BYTES_MAX))
        if status >= 500:
            raise OutcomeUnknown(f"wechatpay bill download answered HTTP {status}")
        if status != 200:
            raise ProtocolError(f"wechatpay bill download answered HTTP {status}")
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                raise ProtocolError("wechatpay bill is not valid gzip") from None
        return raw

    async def _send(self, method: str, url: str, path: str, body: bytes,
                    limit: int = RESPONSE_BODY_MAX_BYTES) -> tuple[int, dict[str, str], bytes]:
        async with self._http.session().request(method, URL(url, encoded=True),
                                                data=body or None,
                                                headers=self._headers(method, path, body),
                                                timeout=self._http.timeout()) as resp:
            raw = await read_bounded(resp, limit, "wechatpay answer")
            return resp.status, dict(resp.headers), raw

