"""Per-shard micro-batching: many requests (creates, notifications) ride in one actor call.

A request for an idle shard goes at once (no added latency at low load). While calls to a shard
are in flight, new requests gather for at most `batch_linger_us` or until `batch_max_orders`, so
batches grow with load. Bounds: `shard_calls_inflight_max` concurrent calls and
`shard_queue_max_orders` queued orders per shard; past the queue bound a request fails fast (503).
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

from core.errors import Overloaded, PaycellError

T = TypeVar("T")   # what a request carries to the shard
R = TypeVar("R")   # what the shard answers for it


class ShardBatcher(Generic[T, R]):
    def __init__(self, submit: Callable[[int, list[T]], Awaitable[list[R]]], shard_count: int, *,
                 batch_max: int, linger_us: int,
                 inflight_max: int, queue_max: int) -> None:
        self._submit = submit
        self._batch_max = batch_max
        self._linger_s = linger_us / 1_000_000
        self._inflight_max = inflight_max
        self._queue_max = queue_max
        self._queues: list[list[tuple[T, asyncio.Future[R]]]] = [[] for _ in range(shard_count)]
        self._inflight = [0] * shard_count
        self._timers: list[asyncio.TimerHandle | None] = [None] * shard_count
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.orders = 0

    async def submit(self, shard: int, item: T) -> R:
        q = self._queues[shard]
        if len(q) >= self._queue_max:
            raise Overloaded(f"shard {shard} queue is full", retry_after_s=1)
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        q.append((item, fut))
        if self._inflight[shard] == 0 or len(q) >= self._batch_max:
            self._flush(shard)
        elif self._timers[shard] is None:
            self._timers[shard] = asyncio.get_running_loop().call_later(
                self._linger_s, self._flush, shard)
        return await fut

    def _flush(self, shard: int) -> None:
        timer = self._timers[shard]
        if timer is not None:
            timer.cancel()
            self._timers[shard] = None
        q = self._queues[shard]
        while q and self._inflight[shard] < self._inflight_max:
            batch = q[:self._batch_max]
            del q[:self._batch_max]
            self._inflight[shard] += 1
            task = asyncio.get_running_loop().create_task(self._send(shard, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, shard: int, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.calls += 1
        self.orders += len(batch)
        try:
            replies = await self._submit(shard, [cmd for cmd, _ in batch])
            assert len(replies) == len(batch), (len(replies), len(batch))
            for (_, fut), reply in zip(batch, replies):
                if not fut.done():
                    fut.set_result(reply)
        except PaycellError as e:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
        finally:
            self._inflight[shard] -= 1
            if self._queues[shard]:
                self._flush(shard)
