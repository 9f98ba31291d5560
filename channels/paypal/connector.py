"""The PayPal connector: HTTP I/O only (OAuth2 token, Orders v2, Payments v2, Transaction Search,
Webhooks Management). Requests are built and answers mapped in transformers.

Failures are mapped by what they mean for the money (transport errors in channels.transport):
  * the connection could not be established, the token could not be had, a 429     -> NotSent
  * timeout, disconnect or reset after sending, an HTTP 5xx                         -> OutcomeUnknown
  * an answer that is not JSON, too large or contradicts the request                -> ProtocolError
A 401 invalid_token on a call renews the cached token once and sends the call again (PayPal
refused it before doing anything, and every money call carries its PayPal-Request-Id anyway).

Idempotency keys (PayPal-Request-Id): a charge and every fence use paycell's order id (so they
share one slot: whichever PayPal sees first wins, the other replays it); a refund uses paycell's
refund id; the reversal of a paid order by cancel uses ``reverse-<order id>``.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Mapping

import aiohttp
import orjson
from cryptography import x509

from channels.base import (Ack, Capabilities, ChannelError, ChannelResult, ChargeRequest,
                           Notification, NotSent, OutcomeUnknown, ProtocolError, RefundRequest,
                           RefundResult, RefundStatus, Statement, StatementKind)
from channels.paypal import signing, transformers as tf
from channels.transport import Transport, guarded, read_bounded
from core.clock import Clock, SystemClock
from core.settings import Secret, Settings
from core.states import Fact

log = logging.getLogger("paycell.channels.paypal")

RESPONSE_BODY_MAX_BYTES = 4_194_304    # a 500-row Transaction Search page is ~1 MB
ORDER_IDS_CACHED_MAX = 100_000         # paycell order id -> PayPal order id, most recent kept
STATEMENT_PAGES_MAX = 200              # 100,000 transactions a day at 500 a page
DEFAULT_FENCE_CURRENCY = "USD"         # cancel() is not told the currency; a fence never pays
SUBSCRIBED_EVENTS = tuple(sorted(tf.PAYMENT_EVENTS | tf.ORDER_EVENTS | tf.REFUND_EVENTS))
ACK_ACCEPTED = Ack(200, "application/json", b"{}")
ACK_REFUSED = Ack(400, "application/json", b'{"error":"unverified"}')


@dataclass(frozen=True)
class PayPalConfig:
    base_url: str
    client_id: str
    client_secret: Secret = field(repr=False)
    webhook_id: str
    webhook_cert: x509.Certificate = field(repr=False)
    call_timeout_ms: int
    notify_url: str
    vault_source: str = "card"
    request_id_retention_s: int = 6 * 3600
    token_refresh_margin_s: int = 300
    register_webhook: bool = True
    connections_max: int = 64

    def __post_init__(self) -> None:
        assert self.call_timeout_ms > 0, self.call_timeout_ms
        assert self.base_url.startswith(("http://", "https://")), "base_url"
        assert self.vault_source in tf.VAULT_SOURCES, self.vault_source
        assert self.request_id_retention_s > 120, self.request_id_retention_s

    @classmethod
    def from_settings(cls, settings: Settings, notify_url: str) -> PayPalConfig:
        p = settings.paypal
        return cls(
            base_url=settings.channel_base_url("paypal").rstrip("/"),
            client_id=p.client_id, client_secret=p.client_secret, webhook_id=p.webhook_id,
            webhook_cert=signing.load_certificate(p.webhook_cert_path),
            call_timeout_ms=p.call_timeout_ms, notify_url=notify_url,
            vault_source=p.vault_source, request_id_retention_s=p.request_id_retention_s,
            token_refresh_margin_s=p.token_refresh_margin_s, register_webhook=p.register_webhook,
            connections_max=p.connections_max,
        )


class PayPalConnector:
    """channels.base.Connector for merchant-initiated charges of vaulted PayPal payment methods."""

    name = "paypal"
    # PayPal: refunds within 180 days of the payment; a single payment up to 10,000.00 in most
    # currencies for most accounts (the lowest documented ceiling; raised on request). PayPal
    # publishes no per-merchant request rate or refund count: the values below are paycell's.
    capabilities = Capabilities(currencies=tf.CURRENCIES, payment_types=frozenset({"card"}),
                                amount_min=1, amount_max=1_000_000, qps=50,
                                refund_window_days=180, partial_refunds_max=50)

    def __init__(self, config: PayPalConfig, session: aiohttp.ClientSession | None,
                 clock: Clock | None = None) -> None:
        self._config = config
        self._http = Transport(session, config.call_timeout_ms, config.connections_max)
        self._clock: Clock = clock or SystemClock()
        self._token: tf.Token | None = None
        self._token_lock = asyncio.Lock()
        self._webhook_registered = not (config.register_webhook and config.notify_url)
        self._paypal_ids: OrderedDict[str, str] = OrderedDict()

    async def close(self) -> None:
        """Close the HTTP session if this connector created it (never an injected one)."""
        await self._http.close()

    # ---- Connector: payments ----------------------------------------------------------------

    async def charge(self, req: ChargeRequest) -> ChannelResult:
        if not self.capabilities.accepts(req.amount, req.currency, req.payment_type):
            raise ValueError(f"paypal cannot charge {req.amount} {req.currency}/{req.payment_type}")
        if not req.payment_token:
            raise ValueError("paypal charges need a vault id (payment_token)")
        await self._ensure_webhook()
        status, payload = await self._call("POST", tf.ORDERS_PATH,
                                           body=tf.charge_body(req, self._config.vault_source),
                                           request_id=req.order_id)
        if status not in (200, 201):
            return tf.map_create_error(status, payload)
        result = tf.map_order(payload, req.order_id)
        self._remember(req.order_id, payload)
        return result

    async def query(self, order_id: str, currency: str) -> ChannelResult:
        return tf.map_order(await self._order(order_id, currency), order_id)

    async def cancel(self, order_id: str) -> ChannelResult:
        order = await self._order(order_id, DEFAULT_FENCE_CURRENCY)
        result = tf.map_order(order, order_id)
        if result.fact is Fact.PAID:
            return await self._reverse(order_id, order)
        if result.fact is Fact.WAITING and result.channel_trade_no:
            # A PENDING capture (eCheck, review...) completes or is denied by PayPal; the REST
            # API has no call that stops it (a refund answers PENDING_CAPTURE).
            raise OutcomeUnknown("paypal cannot cancel a pending capture; query later")
        # Fenced, declined, voided, or never approved: paycell never calls /capture, so no
        # money can move for this order any more.
        return ChannelResult(Fact.CLOSED, result.channel_trade_no, raw_status=result.raw_status,
                             failure_code=result.failure_code, action="close")

    async def _reverse(self, order_id: str, order: Mapping[str, Any]) -> ChannelResult:
        capture_id, rest, currency = tf.refundable(order)
        if rest > 0:
            refund = await self.refund(RefundRequest(
                order_id, f"reverse-{order_id}", rest, rest, currency,
                reason="order cancelled", channel_trade_no=capture_id))
            if refund.status is RefundStatus.FAILED:
                raise OutcomeUnknown(f"paypal refused the reversal: {refund.failure_code}")
        return ChannelResult(Fact.CLOSED, capture_id, raw_status="REFUNDED", action="refund")

    # ---- Connector: refunds -----------------------------------------------------------------

    async def refund(self, req: RefundRequest) -> RefundResult:
        capture_id = req.channel_trade_no
        if not capture_id:
            order = await self._order(req.order_id, req.currency)
            if tf.map_order(order, req.order_id).fact is not Fact.PAID:
                return RefundResult(RefundStatus.FAILED, req.refund_id, currency=req.currency,
                                    failure_code="ORDER_NOT_PAID")
            capture_id = tf.refundable(order)[0]
        status, payload = await self._call(
            "POST", f"{tf.CAPTURES_PATH}/{capture_id}/refund", body=tf.refund_body(req),
            request_id=req.refund_id)
        if status in (200, 201):
            return tf.map_refund(payload, req.refund_id, req.currency)
        return tf.map_refund_error(status, payload, req.refund_id, req.currency)

    async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
        """By the order's payments.refunds[] (each carries the invoice_id paycell gave it): a
        refund POST cannot be replayed as a query, since for an unused id it would refund."""
        order = await self._order(order_id, currency)
        found = None if tf.is_fence(order) else tf.find_refund(order, refund_id)
        if found is None:
            return RefundResult(RefundStatus.FAILED, refund_id, currency=currency,
                                failure_code="REFUND_NOT_FOUND", exists=False)
        return tf.map_refund(found, refund_id, currency)

    # ---- Connector: notifications and statements --------------------------------------------

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notification:
        if len(body) > tf.NOTIFY_BODY_MAX_BYTES:
            raise ProtocolError("paypal notification body too large")
        if not signing.verify_webhook(headers, body, self._config.webhook_id,
                                      self._config.webhook_cert, self._config.base_url):
            raise ProtocolError("paypal notification signature does not verify")
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProtocolError("paypal notification is not JSON") from None
        if not isinstance(event, dict):
            raise ProtocolError("paypal notification is not a JSON object")
        return tf.map_event(event)

    def ack(self, accepted: bool) -> Ack:
        return ACK_ACCEPTED if accepted else ACK_REFUSED

    async def statement(self, day: date) -> Statement:
        """Transaction Search for the UTC day, every page; settled payments and refunds only.
        PayPal lists a transaction up to 3 hours after it happens: fetch the day after."""
        lines, page, pages = [], 1, 1
        while page <= pages:
            status, payload = await self._call("GET", tf.TRANSACTIONS_PATH,
                                               params=tf.transactions_params(day, page))
            if status != 200:
                raise OutcomeUnknown(f"paypal transaction search answered {status}")
            found, pages = tf.map_transactions(payload)
            if pages > STATEMENT_PAGES_MAX:
                raise ProtocolError(f"paypal statement has {pages} pages, over the bound")
            lines.extend(found)
            page += 1
        payments = [x for x in lines if x.kind is StatementKind.PAYMENT]
        return Statement("paypal", day, tuple(lines), payments_count=len(payments),
                         payments_total=sum(x.amount for x in payments),
                         refunds_total=sum(x.amount for x in lines
                                           if x.kind is StatementKind.REFUND))

    # ---- orders by paycell id ---------------------------------------------------------------

    async def _order(self, order_id: str, currency: str) -> Mapping[str, Any]:
        """The latest representation of the order a charge for `order_id` created, or the fence
        order when there was none (see transformers: the fence)."""
        paypal_id = self._paypal_ids.get(order_id)
        if paypal_id is None:
            now_ms = int(self._clock.time() * 1000)
            if not tf.within_retention(order_id, now_ms, self._config.request_id_retention_s):
                raise OutcomeUnknown("older than PayPal keeps request ids: reconcile by statement")
            status, payload = await self._call("POST", tf.ORDERS_PATH,
                                               body=tf.fence_body(order_id, currency),
                                               request_id=order_id)
            if status not in (200, 201):
                raise OutcomeUnknown(f"paypal fence answered {status} {tf.issue_of(payload)}")
            tf.check_order(payload, order_id)
            if tf.is_fence(payload):
                return payload
            paypal_id = self._remember(order_id, payload)
        status, payload = await self._call("GET", f"{tf.ORDERS_PATH}/{paypal_id}")
        if status != 200:
            raise OutcomeUnknown(f"paypal show order answered {status} {tf.issue_of(payload)}")
        return payload

    def _remember(self, order_id: str, order: Mapping[str, Any]) -> str:
        paypal_id = tf.order_id_of(order)
        if tf.is_fence(order):
            return paypal_id
        self._paypal_ids[order_id] = paypal_id
        self._paypal_ids.move_to_end(order_id)
        while len(self._paypal_ids) > ORDER_IDS_CACHED_MAX:
            self._paypal_ids.popitem(last=False)
        return paypal_id

    async def _ensure_webhook(self) -> None:
        """Subscribe notify_url once (Webhooks Management API); a failure is logged and tried
        again on the next charge: notifications only speed up what queries find anyway."""
        if self._webhook_registered:
            return
        body = {"url": self._config.notify_url,
                "event_types": [{"name": name} for name in SUBSCRIBED_EVENTS]}
        try:
            status, payload = await self._call("POST", "/v1/notifications/webhooks", body=body)
        except ChannelError as e:
            log.warning("paypal webhook subscription failed: %s", e.code)
            return
        if status in (200, 201) or tf.issue_of(payload) == "WEBHOOK_URL_ALREADY_EXISTS":
            self._webhook_registered = True
        else:
            log.warning("paypal webhook subscription answered %s", status)

    # ---- HTTP -------------------------------------------------------------------------------

    async def _access_token(self, stale: str = "") -> str:
        """The cached token, renewed shortly before it expires or when `stale` was refused."""
        async with self._token_lock:
            token = self._token
            if (token is None or token.access_token == stale
                    or self._clock.monotonic() >= token.expires_at):
                token = self._token = await self._fetch_token()
            return token.access_token

    async def _fetch_token(self) -> tf.Token:
        c = self._config
        headers = {"Authorization": signing.basic_auth(c.client_id, c.client_secret.reveal()),
                   "Accept": "application/json"}

        async def send() -> tuple[int, bytes]:
            async with self._http.session().post(c.base_url + tf.TOKEN_PATH, headers=headers,
                                                 data={"grant_type": "client_credentials"},
                                                 timeout=self._http.timeout()) as resp:
                return resp.status, await _read(resp)
        try:
            status, body = await guarded("oauth2 token", send)
        except OutcomeUnknown as e:      # no money call was sent: nothing happened
            raise NotSent(f"paypal token: {e}") from None
        if status != 200:
            raise NotSent(f"paypal token request answered {status}")
        try:
            return tf.parse_token(_json(body), self._clock.monotonic(), c.token_refresh_margin_s)
        except ProtocolError as e:
            raise NotSent(f"paypal token: {e}") from None

    async def _call(self, method: str, path: str, *, body: Any = None,
                    params: Mapping[str, str] | None = None,
                    request_id: str = "") -> tuple[int, dict[str, Any]]:
        """One API call with a bearer token: (HTTP status, JSON object) for any 2xx-4xx answer."""
        token = await self._access_token()
        status, raw = await self._send(method, path, token, body, params, request_id)
        if status == 401 and b"invalid_token" in raw:
            token = await self._access_token(stale=token)
            status, raw = await self._send(method, path, token, body, params, request_id)
        if status == 401:
            raise NotSent(f"paypal {path}: not authorized")
        if status == 429:
            raise NotSent(f"paypal {path}: rate limited")
        if status >= 500:
            raise OutcomeUnknown(f"paypal {path} answered HTTP {status}")
        if status == 204 or (not raw and status >= 400):
            return status, {}
        try:
            return status, _json(raw)
        except ProtocolError:
            if status >= 400:
                return status, {}
            raise

    async def _send(self, method: str, path: str, token: str, body: Any,
                    params: Mapping[str, str] | None, request_id: str) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                   "Prefer": "return=representation"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        if request_id:
            headers["PayPal-Request-Id"] = tf.check_request_id(request_id)

        async def send() -> tuple[int, bytes]:
            async with self._http.session().request(method, self._config.base_url + path,
                                                    data=data, params=params, headers=headers,
                                                    timeout=self._http.timeout()) as resp:
                return resp.status, await _read(resp)
        return await guarded(f"{method} {path}", send)


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    return await read_bounded(resp, RESPONSE_BODY_MAX_BYTES, "paypal answer")


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("paypal answer is not JSON") from None
    if not isinstance(payload, dict):
        raise ProtocolError("paypal answer is not a JSON object")
    return payload

