"""The UnionPay connector: HTTP I/O only. Requests are built and answers mapped in transformers.

Every answer is verified (signPubKeyCert chained to the configured root, then the signature);
failures are mapped by what they mean for the money (transport errors in channels.transport):
  * the connection could not be established (refused, DNS, connect timeout)  -> NotSent
  * timeout, disconnect or reset after sending, an HTTP 5xx                  -> OutcomeUnknown
  * an answer that is unsigned, badly signed, unparseable or an odd status   -> ProtocolError
A consume or refund that UnionPay accepted (00, 03-05, 12) is followed by a queryTrans of its
orderId, which says whether the money moved; if that query fails, the outcome is unknown.

txnTime: UnionPay finds a trade by orderId AND txnTime, so every call about a trade must repeat
the txnTime it was sent with. paycell ids carry their creation time (ids.embedded_time), which is
used as txnTime: nothing to remember, valid after a restart. Ids without one (tests, foreign
callers) get the time of their first use in this process, remembered in a bounded per-merchant
table shared by the connectors of the process; after a restart such an id would be queried with
another txnTime, and UnionPay would answer 34 (no such trade) even if it exists. Only ids made by
core.ids are safe across restarts.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Awaitable, Mapping, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from channels.base import (Ack, Capabilities, ChannelResult, ChargeRequest, Notification,
                           NotSent, OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus, Statement)
from channels.transport import Transport, form_body, guarded, read_bounded
from channels.unionpay import signing, transformers as tf
from channels.unionpay.ids import cancel_wire_id, embedded_time, to_wire_id
from core.clock import Clock, SystemClock
from core.settings import Settings
from core.states import Fact

RESPONSE_BODY_MAX_BYTES = 64 * 1_048_576     # a bill answer carries the whole zip
CONNECTIONS_MAX = 64
TXN_TIMES_REMEMBERED_MAX = 200_000
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
ACK_ACCEPTED = Ack(200, "text/plain", b"ok")
ACK_REFUSED = Ack(400, "text/plain", b"fail")
T = TypeVar("T")


class TxnTimes:
    """The txnTime of each paycell id: its embedded creation time, else its first use here."""

    def __init__(self, remembered_max: int = TXN_TIMES_REMEMBERED_MAX) -> None:
        assert remembered_max > 0
        self._max = remembered_max
        self._seen: OrderedDict[str, datetime] = OrderedDict()

    def of(self, paycell_id: str, now: datetime) -> datetime:
        embedded = embedded_time(paycell_id)
        if embedded is not None:
            return embedded
        seen = self._seen.get(paycell_id)
        if seen is not None:
            self._seen.move_to_end(paycell_id)
            return seen
        self._seen[paycell_id] = now
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return now


@functools.lru_cache(maxsize=64)
def shared_txn_times(mer_id: str) -> TxnTimes:
    """One table per merchant for the whole process (connectors are built per use)."""
    return TxnTimes()


@dataclass(frozen=True)
class UnionPayConfig:
    merchant: tf.Merchant
    base_url: str
    private_key: RSAPrivateKey = field(repr=False)
    sign_cert_id: str
    trust: signing.Trust = field(repr=False)
    call_timeout_ms: int
    notify_url: str
    pay_timeout_s: int = 900

    def __post_init__(self) -> None:
        assert self.call_timeout_ms > 0, self.call_timeout_ms
        assert self.pay_timeout_s > 0, self.pay_timeout_s
        assert self.base_url.startswith(("http://", "https://")), "base_url"

    @classmethod
    def from_settings(cls, settings: Settings, notify_url: str) -> UnionPayConfig:
        u = settings.unionpay
        return cls(
            merchant=tf.Merchant(u.mer_id, u.token_requestor_id),
            base_url=settings.channel_base_url("unionpay").rstrip("/"),
            private_key=signing.load_private_key(u.merchant_private_key_path),
            sign_cert_id=u.sign_cert_id,
            trust=signing.Trust(signing.load_cert(u.root_cert_path),
                                signing.load_cert(u.middle_cert_path)),
            call_timeout_ms=u.call_timeout_ms,
            notify_url=notify_url,
            pay_timeout_s=u.pay_timeout_s,
        )


class UnionPayConnector:
    """channels.base.Connector for UnionPay token (saved card) payments, gateway 5.1.0."""

    name = "unionpay"
    # txnAmt is N1..12 fen. UnionPay publishes no request rate: qps is an assumption, as are the
    # refund window (退货 within a year) and the partial-refund count.
    capabilities = Capabilities(currencies=frozenset(tf.CURRENCY_CODES),
                                payment_types=frozenset({"card"}), amount_min=1,
                                amount_max=tf.AMOUNT_FEN_MAX, qps=100, refund_window_days=365,
                                partial_refunds_max=50)

    def __init__(self, config: UnionPayConfig, session: aiohttp.ClientSession | None,
                 clock: Clock | None = None, txn_times: TxnTimes | None = None) -> None:
        self._config = config
        self._m = config.merchant
        self._http = Transport(session, config.call_timeout_ms, CONNECTIONS_MAX)
        self._clock: Clock = clock or SystemClock()
        self._times = txn_times or shared_txn_times(config.merchant.mer_id)

    async def close(self) -> None:
        """Close the HTTP session if this connector created it (never an injected one)."""
        await self._http.close()

    # ---- Connector ------------------------------------------------------------------------

    async def charge(self, req: ChargeRequest) -> ChannelResult:
        caps = self.capabilities
        if not caps.accepts(req.amount, req.currency, req.payment_type):
            raise ValueError(f"unionpay cannot charge {req.amount} {req.currency}/"
                             f"{req.payment_type}")
        wire = to_wire_id(req.order_id)
        at = self._times.of(req.order_id, self._clock.now())
        timeout_at = at + timedelta(seconds=self._config.pay_timeout_s)
        params = tf.consume_params(self._m, req, wire, at, timeout_at,
                                   req.notify_url or self._config.notify_url)
        answer = await self._call(tf.PATH_BACK, params, "consume")
        if not tf.needs_query(answer, self._m, wire):
            return tf.declined(answer)
        queried = await _after_accept(self._query(wire, at))
        return tf.charge_result(queried, req, answer.get("respCode") == tf.CODE_DUPLICATE)

    async def query(self, order_id: str, currency: str = "CNY") -> ChannelResult:
        wire = to_wire_id(order_id)
        return await self._query(wire, self._times.of(order_id, self._clock.now()))

    async def cancel(self, order_id: str) -> ChannelResult:
        """Paid: 消费撤销 (action "refund"), or PAID if UnionPay will not reverse it. Failed:
        nothing to do. Processing or unknown: 冲正 of orderId + txnTime (action "close")."""
        wire = to_wire_id(order_id)
        at = self._times.of(order_id, self._clock.now())
        found = await self._query(wire, at)
        if found.fact is Fact.PAID:
            assert found.amount is not None
            cancel_wire = cancel_wire_id(wire)
            params = tf.cancel_params(self._m, cancel_wire, wire, found.channel_trade_no,
                                      found.amount, found.currency, self._clock.now(),
                                      self._config.notify_url)
            answer = await self._call(tf.PATH_BACK, params, "consume cancel")
            return tf.map_cancel(answer, self._m, cancel_wire, found)
        if found.exists and found.fact is Fact.CLOSED:
            return ChannelResult(Fact.CLOSED, found.channel_trade_no, raw_status=found.raw_status,
                                 action="close")
        answer = await self._call(tf.PATH_BACK, tf.reversal_params(self._m, wire, at), "reversal")
        return tf.map_reversal(answer, self._m, wire)

    async def refund(self, req: RefundRequest) -> RefundResult:
        if req.currency not in self.capabilities.currencies:
            raise ValueError(f"unionpay cannot refund {req.currency}")
        wire_order, wire_refund = to_wire_id(req.order_id), to_wire_id(req.refund_id)
        orig_query_id = req.channel_trade_no
        if not orig_query_id:
            found = await self.query(req.order_id, req.currency)
            if found.fact is not Fact.PAID:
                return RefundResult(RefundStatus.FAILED, req.refund_id, raw_status="35",
                                    failure_code="35", failure_message="原交易不存在或状态不正确")
            orig_query_id = found.channel_trade_no
        at = self._times.of(req.refund_id, self._clock.now())
        params = tf.refund_params(self._m, req, wire_refund, wire_order, orig_query_id, at,
                                  req.notify_url or self._config.notify_url)
        answer = await self._call(tf.PATH_BACK, params, "refund")
        if not tf.needs_query(answer, self._m, wire_refund, tf.REFUND_FAIL_CODES):
            return tf.refund_failed(answer, req.refund_id)
        queried = await _after_accept(self._refund_query(wire_refund, at, req.refund_id))
        return tf.refund_result(queried, req, answer.get("respCode") == tf.CODE_DUPLICATE)

    async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
        at = self._times.of(refund_id, self._clock.now())
        return await self._refund_query(to_wire_id(refund_id), at, refund_id)

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notification:
        content_type = headers.get("Content-Type", "")
        if not content_type.lower().startswith(FORM_CONTENT_TYPE):
            raise ProtocolError("unionpay notification is not a urlencoded form")
        form = signing.open_signed(tf.parse_form(body), self._config.trust, self._clock.now())
        return tf.map_notification(form, self._m)

    def ack(self, accepted: bool) -> Ack:
        return ACK_ACCEPTED if accepted else ACK_REFUSED

    async def statement(self, day: date) -> Statement:
        answer = await self._call(tf.PATH_FILE, tf.file_params(self._m, day, self._clock.now()),
                                  "file transfer")
        code = answer.get("respCode", "")
        if code != tf.CODE_OK:   # 98 文件不存在: not generated (yet); nothing to reconcile with
            raise OutcomeUnknown(f"unionpay fileTransRequest answered respCode {code}")
        return tf.parse_statement(answer, day, self._m, self.name)

    # ---- calls ----------------------------------------------------------------------------

    async def _query(self, wire: str, at: datetime) -> ChannelResult:
        answer = await self._call(tf.PATH_QUERY, tf.query_params(self._m, wire, at), "query")
        return tf.map_query(answer, self._m, wire)

    async def _refund_query(self, wire: str, at: datetime, refund_id: str) -> RefundResult:
        answer = await self._call(tf.PATH_QUERY, tf.query_params(self._m, wire, at),
                                  "refund query")
        return tf.map_refund_query(answer, self._m, wire, refund_id)

    async def _call(self, path: str, params: dict[str, str], what: str) -> dict[str, str]:
        signed = signing.sign_params(params, self._config.private_key, self._config.sign_cert_id)
        body = await guarded(f"unionpay {what}", lambda: self._post(path, signed))
        try:
            text = body.decode(signing.CHARSET)
        except UnicodeDecodeError:
            raise ProtocolError(f"unionpay {what} answer is not utf-8") from None
        answer = signing.parse_answer(text)
        return signing.open_signed(answer, self._config.trust, self._clock.now())

    async def _post(self, path: str, form: dict[str, str]) -> bytes:
        headers = {"Content-Type": f"{FORM_CONTENT_TYPE};charset={signing.CHARSET}"}
        async with self._http.session().post(self._config.base_url + path,
                                             data=form_body(form, signing.CHARSET),
                                             headers=headers,
                                             timeout=self._http.timeout()) as resp:
            if resp.status >= 500:
                raise OutcomeUnknown(f"unionpay gateway answered HTTP {resp.status}")
            if resp.status != 200:
                raise ProtocolError(f"unionpay gateway answered HTTP {resp.status}")
            return await read_bounded(resp, RESPONSE_BODY_MAX_BYTES, "unionpay answer")


async def _after_accept(call: Awaitable[T]) -> T:
    """The query that follows an accepted request: not reaching UnionPay now says nothing about
    the request already accepted, so NotSent becomes OutcomeUnknown."""
    try:
        return await call
    except NotSent as e:
        raise OutcomeUnknown(f"accepted, then the confirming query was not sent: {e}") from None

