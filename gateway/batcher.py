"""Per-host micro-batching: many requests (creates, notifications) ride in one actor call.

A request names its shard; the batch goes to the actor hosting that shard (its lane: one host
runs several shards, actors/host.py), carrying each item's shard. A request for an idle lane
goes at once (no added latency at low load). While a call to a lane is in flight, new requests gather (for at most `batch_linger_us`, or until `batch_max_orders`),
so batches grow with load: with `shard_calls_inflight_max` small, every call carries what arrived
during the previous one. A reply the host did not have ready within its wait comes back later
through a per-lane long poll (`collect`), so one slow order never holds up its batch or the
next one; a ticket that turns late while a poll is out gets a poll of its own (a few per lane). Bounds: calls in flight and queued requests per lane; past the queue bound a request
fails fast (503).
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
from typing import Awaitable, Callable, Generic, TypeVar

from core.errors import Overloaded, PaycellError

POLLS_INFLIGHT_MAX = 4   # long polls in flight per lane, each watching the tickets late at its start

T = TypeVar("T")   # what a request carries to the shard
R = TypeVar("R")   # what the shard answers for it

# (lane, tickets, shards, items) -> one reply per item, None for one not ready yet
SubmitFn = Callable[[int, list[str], list[int], list[T]], Awaitable[list["R | None"]]]
CollectFn = Callable[[int, list[str]], Awaitable[dict[str, R]]]


_Queued = tuple[str, int, T, "asyncio.Future[R]"]   # (ticket, shard, item, the caller's future)


class ShardBatcher(Generic[T, R]):
    def __init__(self, submit: SubmitFn[T, R], lanes: int, lane_of: Callable[[int], int], *,
                 batch_max: int, linger_us: int, inflight_max: int, queue_max: int,
                 collect: CollectFn[R] | None = None) -> None:
        self._submit = submit
        self._lane_of = lane_of
        self._collect = collect
        self._batch_max = batch_max
        self._linger_s = linger_us / 1_000_000
        self._inflight_max = inflight_max
        self._queue_max = queue_max
        self._queues: list[list[_Queued[T, R]]] = [[] for _ in range(lanes)]
        self._inflight = [0] * lanes
        self._timers: list[asyncio.TimerHandle | None] = [None] * lanes
        self._late: list[dict[str, asyncio.Future[R]]] = [{} for _ in range(lanes)]
        self._watched: list[set[str]] = [set() for _ in range(lanes)]  # by a poll in flight
        self._polls = [0] * lanes
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefix = secrets.token_hex(4)
        self._seq = itertools.count()
        self.calls = 0
        self.items = 0
        self.late = 0

    async def submit(self, shard: int, item: T) -> R:
        lane = self._lane_of(shard)
        q = self._queues[lane]
        if len(q) >= self._queue_max:
            raise Overloaded(f"shard {shard}: its host's queue is full", retry_after_s=1)
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        q.append((f"{self._prefix}-{next(self._seq)}", shard, item, fut))
        if self._inflight[lane] == 0 or len(q) >= self._batch_max:
            self._flush(lane)
        elif self._timers[lane] is None:
            self._timers[lane] = asyncio.get_running_loop().call_later(
                self._linger_s, self._flush, lane)
        return await fut

    def _flush(self, lane: int) -> None:
        timer = self._timers[lane]
        if timer is not None:
            timer.cancel()
            self._timers[lane] = None
        q = self._queues[lane]
        while q and self._inflight[lane] < self._inflight_max:
            batch = q[:self._batch_max]
            del q[:self._batch_max]
            self._inflight[lane] += 1
            self._spawn(self._send(lane, batch))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, lane: int, batch: list[_Queued[T, R]]) -> None:
        self.calls += 1
        self.items += len(batch)
        try:
            replies = await self._submit(lane, [t for t, _, _, _ in batch],
                                         [s for _, s, _, _ in batch], [i for _, _, i, _ in batch])
            assert len(replies) == len(batch), (len(replies), len(batch))
            late = 0
            for (ticket, _, _, fut), reply in zip(batch, replies):
                if reply is None:
                    self._late[lane][ticket] = fut
                    late += 1
                elif not fut.done():
                    fut.set_result(reply)
            if late:
                self.late += late
                self._poll(lane)
        except Exception as e:  # PaycellError: 503 and the like; anything else is a bug (500)
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
        finally:
            self._inflight[lane] -= 1
            if self._queues[lane]:
                self._flush(lane)

    def _poll(self, lane: int) -> None:
        """Start a long poll for the late tickets that no poll in flight watches (at most
        POLLS_INFLIGHT_MAX per lane). A poll answers when the first of its tickets is ready, so
        a ticket must not wait behind a poll it is not in: a straggler of 60 ms would otherwise
        wait for the poll that watches a hung charge's 800 ms deadline."""
        assert self._collect is not None, "a host answered None without a collect function"
        late, watched = self._late[lane], self._watched[lane]
        if self._polls[lane] >= POLLS_INFLIGHT_MAX:
            return
        fresh = [t for t in late if t not in watched]
        if fresh:
            watched.update(fresh)
            self._polls[lane] += 1
            self._spawn(self._poll_once(lane, fresh))

    async def _poll_once(self, lane: int, tickets: list[str]) -> None:
        assert self._collect is not None
        late = self._late[lane]
        try:
            got = await self._collect(lane, tickets)
        except Exception as e:  # the host is gone (PaycellError: 503, the clients retry), or a bug
            got = {}
            for ticket in tickets:
                fut = late.pop(ticket, None)
                if fut is not None and not fut.done():
                    fut.set_exception(e)
        finally:
            self._watched[lane].difference_update(tickets)
            self._polls[lane] -= 1
        for ticket, reply in got.items():
            fut = late.pop(ticket, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)
        self._poll(lane)      # what is still late, and what came meanwhile
