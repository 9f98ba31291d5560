"""Asynchronous trade notifications, delivered the way Alipay does it but on a compressed schedule.

A notification is the signed `trade_status_sync` form POSTed to the pay request's notify_url. It
counts as delivered only when the answer body is exactly ``success``; otherwise it is retried after
each delay of the `notify_retry_ms` knob, then given up. Deliveries wait in one bounded queue
served by a fixed number of workers; enqueueing never blocks (a full queue drops and counts).
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from channels.alipay import signing, transformers as tf
from channels.sandbox.knobs import Knobs
from channels.sandbox.ledger import Ledger, Trade, TradeStatus

NOTIFY_QUEUE_MAX = 100_000
NOTIFY_WORKERS = 16
NOTIFY_TIMEOUT_MS = 3000
ACK_BODY = b"success"
BUYER_ID = "2088102146225135"
SELLER_ID = "2088101117955611"


@dataclass
class Delivery:
    out_trade_no: str
    url: str
    form: dict[str, str]
    attempt: int = 0                  # deliveries already tried


def notify_form(trade: Trade, app_id: str, notify_id: str, now: datetime,
                private_key: RSAPrivateKey) -> dict[str, str]:
    """Alipay's signed trade_status_sync form for the trade's current status."""
    assert trade.status is not None
    amount = tf.fen_to_yuan(trade.total_amount)
    form = {
        "notify_time": tf.alipay_timestamp(now), "notify_type": "trade_status_sync",
        "notify_id": notify_id, "app_id": app_id, "charset": signing.CHARSET,
        "version": tf.VERSION, "sign_type": signing.SIGN_TYPE, "trade_no": trade.trade_no,
        "out_trade_no": trade.out_trade_no, "buyer_id": BUYER_ID, "seller_id": SELLER_ID,
        "trade_status": trade.status.value, "total_amount": amount, "subject": trade.subject,
    }
    if trade.gmt_create:
        form["gmt_create"] = tf.alipay_timestamp(trade.gmt_create)
    if trade.gmt_payment:
        form["gmt_payment"] = tf.alipay_timestamp(trade.gmt_payment)
        form["receipt_amount"] = form["buyer_pay_amount"] = form["invoice_amount"] = amount
        form["fund_bill_list"] = f'[{{"amount":"{amount}","fundChannel":"ALIPAYACCOUNT"}}]'
    if trade.status is TradeStatus.TRADE_CLOSED and trade.gmt_close:
        form["gmt_close"] = tf.alipay_timestamp(trade.gmt_close)
        if trade.refunds:
            form["refund_fee"] = amount
    return signing.sign_notification(form, private_key)


class Notifier:
    def __init__(self, ledger: Ledger, rng: random.Random, knobs: Callable[[], Knobs],
                 queue_max: int = NOTIFY_QUEUE_MAX, workers: int = NOTIFY_WORKERS,
                 timeout_ms: int = NOTIFY_TIMEOUT_MS) -> None:
        self._ledger, self._rng, self._knobs = ledger, rng, knobs
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=queue_max)
        self._workers_n, self._timeout_ms = workers, timeout_ms
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_ms / 1000))
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._workers_n)]

    async def stop(self) -> None:
        self._closed = True
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def send(self, trade: Trade, form: dict[str, str]) -> None:
        """Schedule delivery of `form` (never blocks); the knobs may drop or duplicate it."""
        knobs = self._knobs()
        if not trade.notify_url or self._rng.random() < knobs.notify_drop_rate:
            self._ledger.notifies_dropped += 1
            return
        copies = 2 if self._rng.random() < knobs.notify_duplicate_rate else 1
        for _ in range(copies):
            self._later(knobs.notify_delay_ms, Delivery(trade.out_trade_no, trade.notify_url, form))

    def _later(self, delay_ms: int, delivery: Delivery) -> None:
        if delay_ms <= 0:
            self._enqueue(delivery)
        else:
            asyncio.get_running_loop().call_later(delay_ms / 1000, self._enqueue, delivery)

    def _enqueue(self, delivery: Delivery) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._ledger.notifies_dropped += 1

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            acked = await self._post(delivery)
            trade = self._ledger.get(delivery.out_trade_no)
            if trade is not None:
                trade.notifies_sent += 1
                trade.notifies_acked += int(acked)
            retries = self._knobs().notify_retry_ms
            if not acked and delivery.attempt < len(retries):
                delay = retries[delivery.attempt]
                delivery.attempt += 1
                self._later(delay, delivery)
            elif not acked:
                self._ledger.notifies_dropped += 1

    async def _post(self, delivery: Delivery) -> bool:
        assert self._session is not None
        try:
            async with self._session.post(delivery.url, data=delivery.form) as resp:
                body = await resp.content.read(len(ACK_BODY) + 1)
                return resp.status == 200 and body == ACK_BODY
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
