"""The Stripe connector (PaymentIntents, off-session card charges): HTTP I/O only. Requests are
built and answers mapped in channels.stripe.transformers.

Failures are mapped by what they mean for the money (transport errors in channels.transport):
  * the connection could not be established (refused, DNS, connect timeout)  -> NotSent
  * timeout, disconnect or reset after sending, an HTTP 5xx                  -> OutcomeUnknown
  * an answer that is not JSON, not the expected object, or an odd status    -> ProtocolError

Finding an order's PaymentIntent. Stripe makes the ids, so after a lost answer paycell does not
know the PaymentIntent's id; every create carries metadata[paycell_order_id] and the order id as
its Idempotency-Key. The connector looks an order up, most certain way first:
  1. the id, when this connector has seen it in an answer: GET /v1/payment_intents/{id};
  2. when this connector sent the create itself (it remembers when and for which customer, for
     the last RECENT_ORDERS_MAX orders): a *list* of the customer's PaymentIntents created around
     that moment. Lists are strongly consistent, so finding none is certain: exists=False;
  3. otherwise the Search API, metadata['paycell_order_id']:'<id>'. Stripe: "Don't use search
     in read-after-write flows where strict consistency is necessary. Under normal operating
     conditions, data is searchable in less than a minute. Occasionally, propagation of new or
     updated data can be up to an hour behind during outages." So a hit is re-read by id unless
     it is already final, and an empty search proves nothing: OutcomeUnknown, never exists=False.
(A create still executing at Stripe when the lookup runs may yet make a PaymentIntent: only the
cancel fence below closes that door.)

Cancel. A PaymentIntent that is not final is canceled (POST .../cancel); a succeeded one cannot
be (Stripe refuses; a refund would be a separate payment flow), so it is reported PAID. For an
order with no PaymentIntent the cancel is a fence built from Stripe's own idempotency rule: it
creates a never-confirmed PaymentIntent *under the order's Idempotency-Key* and cancels it. A late
create for the order then reuses that key with other parameters and Stripe refuses it (400
idempotency_error) without executing it. If the real create got the key first, the fence's create
is the one refused: the cancel then works on the PaymentIntent that create made, or answers
OutcomeUnknown while search cannot see it yet (the shard retries). One more case: this connector's
own create finished without making a PaymentIntent (a saved 500: Stripe replays it to any retry
with the same key and refuses the key with other parameters) and its consistent list window shows
none: nothing can be charged under the key, and the cancel answers CLOSED. Stripe prunes keys after at least 24 hours, so the fence holds for
that long: far longer than a delayed request can arrive.

Webhooks are configured per account in Stripe, not per request. Against the local sandbox (no
gateway_url configured) the connector tells the sandbox its notify URL in the non-Stripe header
Paycell-Sandbox-Webhook-Url; it never sends that header to a configured gateway.
"""
from __future__ import annotations

import secrets
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Mapping

import aiohttp

from channels import callbacks
from channels.base import (Ack, Capabilities, ChannelResult, ChargeRequest, Notification,
                           NotSent, OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus, Statement)
from channels.stripe import forms, signing, transformers as tf
from channels.transport import Transport, guarded, read_bounded
from core.clock import Clock, SystemClock
from core.settings import Settings
from core.states import Fact

RESPONSE_BODY_MAX_BYTES = 4 * 1_048_576
RECENT_ORDERS_MAX = 100_000
LIST_SLACK_S = 300            # clock skew allowed between paycell and Stripe for a list window
LIST_PAGES_MAX = 20           # a lookup list (one customer, ten minutes) longer than this: unknown
STATEMENT_PAGES_MAX = 10_000  # 1,000,000 balance transactions a day
SANDBOX_WEBHOOK_HEADER = "Paycell-Sandbox-Webhook-Url"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
ACK_ACCEPTED = Ack(200, "application/json", b'{"received":true}')
ACK_REFUSED = Ack(400, "application/json", b'{"received":false}')


@dataclass(frozen=True)
class StripeConfig:
    base_url: str                        # API base: https://api.stripe.com or <sandbox>/stripe
    secret_key: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    webhook_tolerance_s: int
    call_timeout_ms: int
    sandbox_webhook_url: str = ""        # only for the local sandbox (see module docstring)
    connections_max: int = 64

    def __post_init__(self) -> None:
        assert self.call_timeout_ms > 0 and self.webhook_tolerance_s > 0
        assert self.base_url.startswith(("http://", "https://")), "base_url"

    @classmethod
    def from_settings(cls, settings: Settings, notify_url: str) -> StripeConfig:
        s = settings.stripe
        return cls(base_url=settings.channel_base_url("stripe").rstrip("/"),
                   secret_key=s.secret_key.reveal(), webhook_secret=s.webhook_secret.reveal(),
                   webhook_tolerance_s=s.webhook_tolerance_s, call_timeout_ms=s.call_timeout_ms,
                   sandbox_webhook_url="" if s.gateway_url else notify_url)


@dataclass
class _Sent:
    """What this connector knows of an order's create: the PaymentIntent id once an answer named
    it, and when (unix seconds) and for which customer it sent the create."""
    pi_id: str = ""
    sent_at: int = 0
    customer: str = ""


class StripeConnector:
    """channels.base.Connector for Stripe PaymentIntents confirmed off-session."""

    name = "stripe"
    # Stripe's limits (docs.stripe.com): amounts up to eight digits (99999999, "$999,999.99");
    # minimum charge USD 0.50 (EUR 0.50, GBP 0.30, HKD 4.00, SGD 0.50, JPY 50: the sandbox and
    # Stripe refuse smaller ones with amount_too_small); 100 read and 100 write operations per
    # second in live mode (docs.stripe.com/rate-limits). Stripe documents no fixed refund window
    # or refund count for cards (an issuer may fail a refund of an old charge: that arrives as a
    # failed refund), so paycell's own bounds stand: 365 days and 50 refunds a payment.
    capabilities = Capabilities(currencies=tf.CURRENCIES, payment_types=frozenset({"card"}),
                                countries=frozenset(), amount_min=50, amount_max=99_999_999,
                                qps=100, refund_window_days=365, partial_refunds_max=50)

    def __init__(self, config: StripeConfig, session: aiohttp.ClientSession | None,
                 clock: Clock | None = None, nonce: Callable[[], str] | None = None) -> None:
        self._config = config
        self._http = Transport(session, config.call_timeout_ms, config.connections_max)
        self._clock: Clock = clock or SystemClock()
        self._nonce = nonce or (lambda: secrets.token_hex(8))
        self._recent: OrderedDict[str, _Sent] = OrderedDict()

    async def close(self) -> None:
        """Close the HTTP session if this connector created it (never an injected one)."""
        await self._http.close()

    # ---- Connector ------------------------------------------------------------------------

    async def charge(self, req: ChargeRequest) -> ChannelResult:
        caps = self.capabilities
        if req.currency not in caps.currencies or req.payment_type not in caps.payment_types:
            raise ValueError(f"stripe cannot charge {req.currency}/{req.payment_type}")
        if not req.payment_token:
            raise ValueError("stripe off-session charges need a saved payment method")
        self._remember(req.order_id, sent_at=self._now(), customer=req.payer_id)
        status, payload = await self._call("POST", "/v1/payment_intents", tf.create_params(req),
                                           idempotency_key=req.order_id)
        try:
            result = tf.map_charge(status, payload, req)
        except tf.IdempotencyConflict:     # the key holds an earlier request: not this window's
            pi, _certain = await self._lookup(req.order_id, window=False)
            if pi is None:
                raise OutcomeUnknown("stripe: the order's key is taken; no PaymentIntent found yet")
            result = tf.map_intent(pi, req.order_id)
            if result.fact is Fact.PAID and (result.amount, result.currency) != (req.amount,
                                                                                 req.currency):
                raise ProtocolError("stripe: the order's PaymentIntent has another amount")
        self._remember(req.order_id, pi_id=result.channel_trade_no)
        return result

    async def query(self, order_id: str, currency: str = "") -> ChannelResult:
        pi, certain = await self._lookup(order_id)
        if pi is not None:
            return tf.map_intent(pi, order_id)
        if not certain:
            raise OutcomeUnknown("stripe search found no PaymentIntent; its index may lag")
        return ChannelResult(Fact.WAITING, raw_status="not_found", exists=False)

    async def cancel(self, order_id: str) -> ChannelResult:
        pi, certain = await self._lookup(order_id)
        if pi is None:
            try:
                pi = await self._fence(order_id)
            except tf.IdempotencyConflict:      # a finished create holds the key
                pi, _ = await self._lookup(order_id, window=False)
                if pi is None and certain:
                    return ChannelResult(Fact.CLOSED, raw_status="key_held_without_intent",
                                         action="close")
                if pi is None:
                    raise OutcomeUnknown("stripe: the order's key is taken; its PaymentIntent "
                                         "is not found yet") from None
        current = tf.map_intent(pi, order_id)
        if current.fact in (Fact.PAID, Fact.CLOSED):
            return current
        pi_id = current.channel_trade_no
        status, payload = await self._call("POST", f"/v1/payment_intents/{_seg(pi_id)}/cancel",
                                           tf.cancel_params(), tf.cancel_key(pi_id, self._nonce()))
        closed = tf.map_cancel(status, payload, order_id)
        if closed is not None:
            return closed
        fresh = await self._retrieve(pi_id)          # refused for its state: what is it now?
        now = tf.map_intent(fresh, order_id) if fresh is not None else None
        if now is None or now.fact not in (Fact.PAID, Fact.CLOSED):
            raise OutcomeUnknown(f"stripe refused to cancel {pi_id} and it is not final")
        return now

    async def refund(self, req: RefundRequest) -> RefundResult:
        pi_id = req.channel_trade_no
        if not pi_id:
            pi, certain = await self._lookup(req.order_id)
            if pi is None and not certain:
                raise OutcomeUnknown("stripe: the order's PaymentIntent is not found yet")
            if pi is None:
                return RefundResult(RefundStatus.FAILED, req.refund_id, raw_status="not_found",
                                    failure_code="payment_not_found")
            pi_id = str(pi["id"])
        status, payload = await self._call("POST", "/v1/refunds", tf.refund_params(req, pi_id),
                                           idempotency_key=req.refund_id)
        try:
            return tf.map_refund(status, payload, req.refund_id)
        except tf.IdempotencyConflict:        # the refund id was used with another amount
            return await self._refund_lookup(req.order_id, req.refund_id, pi_id)

    async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
        pi, certain = await self._lookup(order_id)
        if pi is None and not certain:
            raise OutcomeUnknown("stripe: the order's PaymentIntent is not found yet")
        if pi is None:
            return RefundResult(RefundStatus.FAILED, refund_id, raw_status="not_found",
                                exists=False)
        return await self._refund_lookup(order_id, refund_id, str(pi["id"]))

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notification:
        if len(body) > tf.NOTIFY_BODY_MAX_BYTES:
            raise ProtocolError("stripe webhook body too large")
        header = callbacks.header(headers, signing.SIGNATURE_HEADER)
        if not signing.verify(body, header, self._config.webhook_secret, self._now(),
                              self._config.webhook_tolerance_s):
            raise ProtocolError("stripe webhook signature does not verify")
        return tf.map_event(tf.parse_json(body))

    def ack(self, accepted: bool) -> Ack:
        return ACK_ACCEPTED if accepted else ACK_REFUSED

    async def statement(self, day: date) -> Statement:
        txns: list[Mapping[str, Any]] = []
        after = ""
        for _ in range(STATEMENT_PAGES_MAX):
            payload = await self._get("/v1/balance_transactions", tf.balance_params(day, after))
            page, more = tf.page_of(payload, "list")
            txns.extend(page)
            if not more or not page:
                return tf.build_statement(day, txns)
            after = str(page[-1].get("id") or "")
        raise ProtocolError(f"stripe balance history of {day} exceeds {STATEMENT_PAGES_MAX} pages")

    # ---- lookups --------------------------------------------------------------------------

    async def _lookup(self, order_id: str,
                      window: bool = True) -> tuple[Mapping[str, Any] | None, bool]:
        """(the order's PaymentIntent or None, whether None is certain). The list window answers
        for the PaymentIntent *this connector's create* could have made; a key conflict says an
        earlier request made one at another time, so that lookup goes by id or search."""
        sent = self._recent.get(order_id)
        if sent is not None and sent.pi_id:
            pi = await self._retrieve(sent.pi_id)
            if pi is not None:
                return pi, True
        if window and sent is not None and sent.sent_at:
            return await self._list_window(order_id, sent), True
        payload = await self._get("/v1/payment_intents/search",
                                  {"query": tf.search_query(order_id), "limit": tf.LIST_LIMIT})
        hit = tf.pick_intent(tf.page_of(payload, "search_result")[0], order_id)
        if hit is None:
            return None, False
        if tf.fact_of(hit) in (Fact.PAID, Fact.CLOSED):
            return hit, True                  # final states do not go stale
        fresh = await self._retrieve(str(hit["id"]))
        return fresh or hit, True

    async def _list_window(self, order_id: str, sent: _Sent) -> Mapping[str, Any] | None:
        after = ""
        for _ in range(LIST_PAGES_MAX):
            params = tf.window_params(sent.customer, sent.sent_at, LIST_SLACK_S, after)
            page, more = tf.page_of(await self._get("/v1/payment_intents", params), "list")
            hit = tf.pick_intent(page, order_id)
            if hit is not None:
                self._remember(order_id, pi_id=str(hit["id"]))
                return hit
            if not more or not page:
                return None
            after = str(page[-1].get("id") or "")
        raise OutcomeUnknown(f"stripe: more than {LIST_PAGES_MAX} pages around the create")

    async def _retrieve(self, pi_id: str) -> Mapping[str, Any] | None:
        status, payload = await self._call("GET", f"/v1/payment_intents/{_seg(pi_id)}", {})
        return tf.map_read(status, payload, "retrieve payment_intent")

    async def _fence(self, order_id: str) -> Mapping[str, Any]:
        status, payload = await self._call("POST", "/v1/payment_intents",
                                           tf.fence_params(order_id), idempotency_key=order_id)
        if status != 200:
            err = tf.read_error(status, payload)
            tf.raise_transport(err, "fence payment_intent")   # a taken key: IdempotencyConflict
            raise ProtocolError(f"stripe refused the cancel fence: {err.type} {err.code}")
        if not tf.is_fence(payload):
            raise ProtocolError("stripe answered the fence with another PaymentIntent")
        self._remember(order_id, pi_id=str(payload.get("id") or ""))
        return payload

    async def _refund_lookup(self, order_id: str, refund_id: str, pi_id: str) -> RefundResult:
        after = ""
        for _ in range(LIST_PAGES_MAX):
            params: dict[str, Any] = {"payment_intent": pi_id, "limit": tf.LIST_LIMIT}
            if after:
                params["starting_after"] = after
            page, more = tf.page_of(await self._get("/v1/refunds", params), "list")
            hit = tf.pick_refund(page, refund_id)
            if hit is not None:
                return tf.map_refund_object(hit, refund_id)
            if not more or not page:
                return RefundResult(RefundStatus.FAILED, refund_id, raw_status="not_found",
                                    exists=False)
            after = str(page[-1].get("id") or "")
        raise OutcomeUnknown(f"stripe: more than {LIST_PAGES_MAX} pages of refunds")

    def _remember(self, order_id: str, pi_id: str = "", sent_at: int = 0,
                  customer: str = "") -> None:
        sent = self._recent.pop(order_id, None) or _Sent()
        if pi_id:
            sent.pi_id = pi_id
        if sent_at:
            sent.sent_at, sent.customer = sent_at, customer
        self._recent[order_id] = sent
        while len(self._recent) > RECENT_ORDERS_MAX:
            self._recent.popitem(last=False)

    def _now(self) -> int:
        return int(self._clock.now().timestamp())

    # ---- HTTP -----------------------------------------------------------------------------

    async def _get(self, path: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        status, payload = await self._call("GET", path, params)
        found = tf.map_read(status, payload, f"GET {path}")
        if found is None:
            raise ProtocolError(f"stripe GET {path}: resource_missing")
        return found

    async def _call(self, method: str, path: str, params: Mapping[str, Any],
                    idempotency_key: str = "") -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": signing.bearer(self._config.secret_key),
                   "Stripe-Version": tf.API_VERSION, "Accept": "application/json"}
        encoded = forms.form_body(params)
        url = f"{self._config.base_url}{path}"
        body: str | None = None
        if method == "POST":
            assert idempotency_key and len(idempotency_key) <= tf.IDEMPOTENCY_KEY_MAX_CHARS
            headers["Idempotency-Key"] = idempotency_key
            headers["Content-Type"] = FORM_CONTENT_TYPE
            if self._config.sandbox_webhook_url:
                headers[SANDBOX_WEBHOOK_HEADER] = self._config.sandbox_webhook_url
            body = encoded
        elif encoded:
            url = f"{url}?{encoded}"
        what = f"{method} {path}"
        return await guarded(what, lambda: self._send(method, url, headers, body), timed=True)

    async def _send(self, method: str, url: str, headers: dict[str, str],
                    body: str | None) -> tuple[int, dict[str, Any]]:
        async with self._http.session().request(method, url, data=body, headers=headers,
                                                timeout=self._http.timeout()) as resp:
            raw = await read_bounded(resp, RESPONSE_BODY_MAX_BYTES, "stripe answer")
            try:
                return resp.status, tf.parse_json(raw)
            except ProtocolError:
                if resp.status >= 500:
                    raise OutcomeUnknown(f"stripe answered HTTP {resp.status}") from None
                if resp.status == 429:
                    raise NotSent("stripe answered HTTP 429") from None
                raise


def _seg(identifier: str) -> str:
    return urllib.parse.quote(identifier, safe="")



