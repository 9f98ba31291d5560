"""Per-shard micro-batching: many requests (creates, notifications) ride in one actor call.

A request for an idle shard goes at once (no added latency at low load). While a call to a shard
is in flight, new requests gather (for at most `batch_linger_us`, or until `batch_max_orders`),
so batches grow with load: with `shard_calls_inflight_max` small, every call carries what arrived
during the previous one. A reply the shard did not have ready within its wait comes back later
through a per-shard long poll (`collect`), so one slow order never holds up its batch or the
next one. Bounds: calls in flight and queued requests per shard; past the queue bound a request
fails fast (503).
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
from typing import Awaitable, Callable, Generic, TypeVar

from core.errors import Overloaded, PaycellError

T = TypeVar("T")   # what a request carries to the shard
R = TypeVar("R")   # what the shard answers for it

SubmitFn = Callable[[int, list[str], list[T]], Awaitable[list["R | None"]]]
CollectFn = Callable[[int, list[str]], Awaitable[dict[str, R]]]


class ShardBatcher(Generic[T, R]):
    def __init__(self, submit: SubmitFn[T, R], shard_count: int, *, batch_max: int,
                 linger_us: int, inflight_max: int, queue_max: int,
                 collect: CollectFn[R] | None = None) -> None:
        self._submit = submit
        self._collect = collect
        self._batch_max = batch_max
        self._linger_s = linger_us / 1_000_000
        self._inflight_max = inflight_max
        self._queue_max = queue_max
        self._queues: list[list[tuple[str, T, asyncio.Future[R]]]] = [
            [] for _ in range(shard_count)]
        self._inflight = [0] * shard_count
        self._timers: list[asyncio.TimerHandle | None] = [None] * shard_count
        self._late: list[dict[str, asyncio.Future[R]]] = [{} for _ in range(shard_count)]
        self._collectors: list[asyncio.Task[None] | None] = [None] * shard_count
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefix = secrets.token_hex(4)
        self._seq = itertools.count()
        self.calls = 0
        self.items = 0
        self.late = 0

    async def submit(self, shard: int, item: T) -> R:
        q = self._queues[shard]
        if len(q) >= self._queue_max:
            raise Overloaded(f"shard {shard} queue is full", retry_after_s=1)
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        q.append((f"{self._prefix}-{next(self._seq)}", item, fut))
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
            self._spawn(self._send(shard, batch))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, shard: int, batch: list[tuple[str, T, asyncio.Future[R]]]) -> None:
        self.calls += 1
        self.items += len(batch)
        try:
            replies = await self._submit(shard, [t for t, _, _ in batch], [i for _, i, _ in batch])
            assert len(replies) == len(batch), (len(replies), len(batch))
            for (ticket, _, fut), reply in zip(batch, replies):
                if reply is None:
                    self._await_late(shard, ticket, fut)
                elif not fut.done():
                    fut.set_result(reply)
        except PaycellError as e:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
        finally:
            self._inflight[shard] -= 1
            if self._queues[shard]:
                self._flush(shard)

    def _await_late(self, shard: int, ticket: str, fut: asyncio.Future[R]) -> None:
        assert self._collect is not None, "a shard answered None without a collect function"
        self.late += 1
        self._late[shard][ticket] = fut
        collector = self._collectors[shard]
        if collector is None or collector.done():
            self._collectors[shard] = self._spawn(self._collect_loop(shard))

    async def _collect_loop(self, shard: int) -> None:
        assert self._collect is not None
        late = self._late[shard]
        while late:
            tickets = list(late)
            try:
                got = await self._collect(shard, tickets)
            except PaycellError as e:  # the shard is gone: these clients retry with their key
                for ticket in tickets:
                    fut = late.pop(ticket)
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for ticket, reply in got.items():
                if ticket in late:
                    fut = late.pop(ticket)
                    if not fut.done():
                        fut.set_result(reply)
