"""Durable order state in Redis, with group commit.

Keys carry a hash tag per shard (``{<set>.<shard>}``) so one shard's writes stay in one Redis
Cluster slot and can share a MULTI/EXEC:
  pc:{tag}:o:<order_id>                 the order record (orjson)
  pc:{tag}:idem:<app_id>:<out_trade_no> the order id for an idempotency key (TTL)
  pc:{tag}:open                         set of order ids not yet final
Writes queued while a commit is in flight ride in the next one: one round trip and, with
``appendfsync always``, one fsync for many state changes. A batch is one call of a small Lua
script, so it is atomic (all of it or none of it reaches the AOF) and costs one reply to parse.
A commit returns only once Redis has acknowledged it: callers acknowledge nothing not durable.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.errors import Unavailable
from core.order import Order


# KEYS: open set, then per write: order key, idempotency key.
# ARGV: idempotency TTL (s), then per write: flag (n new / p pending / f final), order id, record.
# A new order whose idempotency key exists (another order has the key) is refused: nothing of the
# batch is written and the 1-based positions of the refused writes come back, so that one key
# can never name two orders, whatever a lost reply made the shard believe.
_COMMIT_LUA = """
local ttl = tonumber(ARGV[1])
local n = (#ARGV - 1) / 3
local taken = {}
for i = 0, n - 1 do
  local flag, oid = ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  if string.sub(flag, 1, 1) == 'n' then
    local holder = redis.call('GET', KEYS[3 + 2 * i])
    if holder and holder ~= oid then
      table.insert(taken, i + 1)
    end
  end
end
if #taken > 0 then
  return taken
end
for i = 0, n - 1 do
  local flag, oid, rec = ARGV[2 + 3 * i], ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  redis.call('SET', KEYS[2 + 2 * i], rec)
  if string.sub(flag, 1, 1) == 'n' then
    redis.call('SET', KEYS[3 + 2 * i], oid, 'EX', ttl)
  end
  if string.sub(flag, -1) == 'f' then
    redis.call('SREM', KEYS[1], oid)
  else
    redis.call('SADD', KEYS[1], oid)
  end
end
return {}
"""


class KeyTaken(Exception):
    """A new order's idempotency key already names another order (nothing was written)."""


@dataclass(slots=True)
class _Write:
    order: Order
    new: bool
    done: asyncio.Future[None]


class OrderStore:
    def __init__(self, client: aioredis.Redis, set_name: str, shard: int, *,
                 idempotency_ttl_s: int, commit_batch_max: int) -> None:
        self._r = client
        self._tag = f"{{{set_name}.{shard}}}"
        self._ttl = idempotency_ttl_s
        self._batch_max = commit_batch_max
        self._queue: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._commit_script = client.register_script(_COMMIT_LUA)
        self.commits = 0    # observability: commit script calls
        self.writes = 0     # observability: order writes committed

    # ---- keys ----
    def order_key(self, order_id: str) -> str:
        return f"pc:{self._tag}:o:{order_id}"

    def idem_key(self, app_id: str, out_trade_no: str) -> str:
        return f"pc:{self._tag}:idem:{app_id}:{out_trade_no}"

    @property
    def open_key(self) -> str:
        return f"pc:{self._tag}:open"

    # ---- reads ----
    async def get(self, order_id: str) -> Order | None:
        raw = await self._call(self._r.get(self.order_key(order_id)))
        return Order.from_record(orjson.loads(raw)) if raw else None

    async def find(self, app_id: str, out_trade_no: str) -> Order | None:
        order_id = await self._call(self._r.get(self.idem_key(app_id, out_trade_no)))
        if not order_id:
            return None
        return await self.get(order_id.decode() if isinstance(order_id, bytes) else order_id)

    async def find_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Order | None]:
        """Idempotency lookups for a batch in two round trips (MGET keys, MGET records)."""
        if not keys:
            return {}
        ids = await self._call(self._r.mget([self.idem_key(a, k) for a, k in keys]))
        found = {key: (oid.decode() if isinstance(oid, bytes) else oid)
                 for key, oid in zip(keys, ids) if oid}
        out: dict[tuple[str, str], Order | None] = {key: None for key in keys}
        if found:
            raws = await self._call(self._r.mget([self.order_key(o) for o in found.values()]))
            for key, raw in zip(found, raws):
                out[key] = Order.from_record(orjson.loads(raw)) if raw else None
        return out

    async def open_ids(self) -> list[str]:
        return [m.decode() for m in await self._call(self._r.smembers(self.open_key))]

    # ---- writes (group commit) ----
    async def commit(self, order: Order, *, new: bool = False) -> None:
        """Durably write `order` (and, when `new`, its idempotency key); raises Unavailable."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(order, new, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        await fut

    async def _flush_loop(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self._batch_max], self._queue[self._batch_max:]
            try:
                taken = await self._write(batch)
            except (RedisError, OSError, asyncio.TimeoutError) as e:
                for w in batch:
                    if not w.done.done():
                        w.done.set_exception(Unavailable(f"order store unavailable: {type(e).__name__}"))
                continue
            if taken:  # refuse those, and write the rest again in the next round
                for i, w in enumerate(batch):
                    if i in taken:
                        w.done.set_exception(KeyTaken(w.order.out_trade_no))
                    else:
                        self._queue.append(w)
                continue
            for w in batch:
                if not w.done.done():
                    w.done.set_result(None)

    async def _write(self, batch: list[_Write]) -> set[int]:
        """One atomic script call; the 0-based positions of refused new orders (then nothing
        was written)."""
        keys = [self.open_key]
        args: list[Any] = [self._ttl]
        for w in batch:
            o = w.order
            keys += [self.order_key(o.order_id), self.idem_key(o.app_id, o.out_trade_no)]
            flag = ("n" if w.new else "") + ("f" if o.status.is_final else "p")
            args += [flag, o.order_id, orjson.dumps(o.to_record())]
        taken = await self._commit_script(keys=keys, args=args)
        if taken:
            return {int(i) - 1 for i in taken}
        self.commits += 1
        self.writes += len(batch)
        return set()

    async def _call(self, aw: Any) -> Any:
        try:
            return await aw
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            raise Unavailable(f"order store unavailable: {type(e).__name__}") from None
