"""Asynchronous notifications from a channel sandbox to the merchant's notify URL, on a compressed
version of the channel's retry schedule.

A Delivery is a ready-made HTTP POST (body, headers) plus the channel's rule for what counts as an
acknowledgement (Alipay: the body ``success``; WeChat Pay, Stripe, PayPal: any 2xx...). A refused
or failed delivery is retried after each delay of the `notify_retry_ms` knob, then given up.
Deliveries wait in one bounded queue served by a fixed number of workers; enqueueing never blocks
(a full queue drops and counts).
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field, replace
from typing import Callable

import aiohttp

from channels.sandbox.knobs import Knobs
from channels.sandbox.ledger import Ledger

NOTIFY_QUEUE_MAX = 100_000
NOTIFY_WORKERS = 16
NOTIFY_TIMEOUT_MS = 3000
ACK_READ_MAX_BYTES = 4096


def accept_2xx(status: int, body: bytes) -> bool:
    return 200 <= status < 300


@dataclass
class Delivery:
    out_trade_no: str
    url: str
    body: bytes
    headers: dict[str, str]
    accepted: Callable[[int, bytes], bool] = accept_2xx
    event: str = ""
    attempt: int = 0                  # deliveries already tried
    copies: list[int] = field(default_factory=list)

    def again(self) -> Delivery:
        """A fresh copy for a replay (its own retry count)."""
        return replace(self, attempt=0, copies=[])


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
        self._waiting = 0      # deliveries in their delay (notify_delay_ms, a retry's wait)
        self._posting = 0      # deliveries a worker is posting

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

    @property
    def pending(self) -> int:
        """Deliveries not yet done: in their delay, waiting for a worker, or being posted (what
        a benchmark waits for between its phases)."""
        return self._waiting + self._queue.qsize() + self._posting

    def send(self, delivery: Delivery) -> None:
        """Schedule `delivery` (never blocks); the knobs may drop, delay or duplicate it."""
        knobs = self._knobs()
        if not delivery.url or self._rng.random() < knobs.notify_drop_rate:
            self._ledger.notifies_dropped += 1
            return
        copies = 2 if self._rng.random() < knobs.notify_duplicate_rate else 1
        self._ledger.notifies_duplicated += copies - 1
        for _ in range(copies):
            self._later(knobs.notify_delay_ms, delivery.again())

    def replay(self, delivery: Delivery) -> None:
        """Deliver an earlier notification again now (duplicates and out-of-order tests)."""
        self._enqueue(delivery.again())

    def _later(self, delay_ms: int, delivery: Delivery) -> None:
        if delay_ms <= 0:
            self._enqueue(delivery)
        else:
            self._waiting += 1
            asyncio.get_running_loop().call_later(delay_ms / 1000, self._due, delivery)

    def _due(self, delivery: Delivery) -> None:
        self._waiting -= 1
        self._enqueue(delivery)

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
            self._posting += 1
            try:
                acked = await self._post(delivery)
            finally:
                self._posting -= 1
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
            async with self._session.post(delivery.url, data=delivery.body,
                                          headers=delivery.headers) as resp:
                body = await resp.content.read(ACK_READ_MAX_BYTES)
                return delivery.accepted(resp.status, body)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
