"""One actor process, several order shards.

A shard is the unit of partitioning: its order ids, Redis keys, locks and recovery are its own.
A process is the unit of CPU. Running each shard in its own process made throughput fall as
shards were added on a 2-core machine (bench.scale: 8 shard processes did 0.73x of one): more
processes than cores only add context switches, and every process gets smaller batches. So
shard s lives in host s % shard_actors, and the gateway batches per host: one actor call carries
the orders of every shard the host runs, and one long poll collects their late replies from the
board the host's shards share.

A host restart is the restart of each of its shards (each rebuilds its open orders from Redis).
"""
from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from typing import Any

from actors.board import TaskBoard
from actors.link import LinkServer
from actors.shard import OrderShard
from channels.base import Notification
from core import heap
from core.errors import NotFound
from core.order import CreateOrder

# What `call` may run on a shard: its read, refund, reconciliation and operator methods.
SHARD_METHODS = frozenset({"get", "find", "create_refund", "list_refunds", "settle",
                           "settle_refunds", "reconcile_close", "ping", "stats"})


class ShardHost:
    def __init__(self, host: int, shards: dict[int, OrderShard],
                 replies: TaskBoard[str, dict[str, Any]]) -> None:
        self._host = host
        self._shards = shards
        self._replies = replies

    node_id = ""              # set by the Ray wrapper (actors.factory): the node it runs on
    link_address = "127.0.0.1"  # set by the Ray wrapper: the node's address, for open_link
    _link: LinkServer | None = None

    async def open_link(self) -> tuple[str, int, bytes]:
        """Where a caller reaches this incarnation's hot methods directly (actors/link.py):
        (address, port, token). Asked through Ray, so only Ray's callers learn the token."""
        if self._link is None:
            self._link = LinkServer(self, self.link_address)
        return await self._link.start()

    def _shard(self, shard: int) -> OrderShard:
        sh = self._shards.get(shard)
        if sh is None:        # a gateway with another layout: never guess, refuse
            raise NotFound(f"shard {shard} does not run in host {self._host}")
        return sh

    async def ping(self) -> dict[str, Any]:
        pings = await asyncio.gather(*(sh.ping() for sh in self._shards.values()))
        return {"host": self._host, "pid": os.getpid(), "node": self.node_id,
                "shards": sorted(self._shards), "open": sum(p["open"] for p in pings),
                "gc": heap.pauses()}

    async def call(self, shard: int, method: str, *args: Any) -> Any:
        """One call of a shard's read, refund, reconciliation or operator method."""
        if method not in SHARD_METHODS:
            raise ValueError(f"not a shard method: {method}")
        return await getattr(self._shard(shard), method)(*args)

    async def submit(self, shards: list[int], tickets: list[str], cmds: list[CreateOrder],
                     wait_s: float | None = None) -> list[dict[str, Any] | None]:
        """A batch of create-and-pay commands for any of this host's shards: each shard takes
        its part (OrderShard.submit), and the replies come back in the batch's order."""
        parts = _split(shards)
        answers = await asyncio.gather(*(
            self._shard(s).submit([cmds[i] for i in idx], [tickets[i] for i in idx], wait_s)
            for s, idx in parts.items()))
        out: list[dict[str, Any] | None] = [None] * len(cmds)
        for idx, replies in zip(parts.values(), answers):
            for i, reply in zip(idx, replies):
                out[i] = reply
        return out

    async def await_replies(self, tickets: list[str], wait_s: float
                            ) -> dict[str, dict[str, Any]]:
        """Long poll for replies not ready when their batch answered (any shard of the host)."""
        return await self._replies.collect(tickets, wait_s)

    async def notify_many(self, shards: list[int], notes: list[Notification]) -> list[bool]:
        parts = _split(shards)
        answers = await asyncio.gather(*(
            self._shard(s).notify_many([notes[i] for i in idx]) for s, idx in parts.items()))
        out = [False] * len(notes)
        for idx, results in zip(parts.values(), answers):
            for i, ok in zip(idx, results):
                out[i] = ok
        return out


def _split(shards: list[int]) -> dict[int, list[int]]:
    """Positions of a batch's items by shard."""
    parts: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(shards):
        parts[s].append(i)
    return parts
