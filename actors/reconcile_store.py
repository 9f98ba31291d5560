"""What reconciliation reads and keeps in Redis.

Reads of paycell's orders go straight to the records (the shards commit before they change
memory, so Redis is the truth); every write to an order goes through its shard.

  pc:{<set>.<shard>}:o:<order_id>          order records (actors/store.py), read here
  pc:{<set>.<shard>}:r:<refund_id>, :ropen  refund records and open refunds, read here
  pc:{recon.<set>}:report:<channel>:<day>  the last report of a channel's day (JSON, with a TTL)
  pc:{recon.<set>}:running                 "<channel>:<day>" of runs in progress
  pc:{recon.<set>}:refunds                 hash: refund id -> JSON of a reconciliation refund
                                           (the money trail; kept without a TTL)

Which orders belong to a day: order ids carry their creation time (core.ids: the token's first 9
base-36 digits are epoch milliseconds), so a day's orders of one shard are found by one SCAN over
the shard's order keys, matched on the id prefix the day's milliseconds share, then filtered on
the exact time and read in MGET batches. No index is written on the order path; the scan walks
the shard's keyspace once per run (a batch job, bounded per step by reconcile.scan_count).

Every command here is idempotent (reads; a whole report or refund record written again), so a
connection the server closed (the first use of the pool after a redis-server restart: the
reconciler is idle until an operator asks) is retried once on a fresh one (core.redis_retry)
instead of answering 503.
"""
from __future__ import annotations

import asyncio
from datetime import date
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.reconcile_match import day_bounds
from actors.store import OrderStore
from core.errors import Unavailable
from core.redis_retry import retry_once_on_reset
from core.ids import ORDER_ID_RE, REFUND_ID_RE, parse_order_id, parse_refund_id
from core.order import Order
from core.refund import Refund
from core.settings import Settings

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
TIME_DIGITS = 9


def _b36(n: int, width: int = TIME_DIGITS) -> str:
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_B36[r])
    return "".join(reversed(out)).rjust(width, "0")


def created_ms(order_id: str) -> int | None:
    """The creation time an order or refund id carries (epoch ms), or None for one without."""
    m = ORDER_ID_RE.match(order_id) or REFUND_ID_RE.match(order_id)
    if m is None or len(m.group(4)) < TIME_DIGITS + 8:
        return None
    return int(m.group(4)[:TIME_DIGITS], 36)


def day_prefix(day: date) -> str:
    """The base-36 time prefix every order id created on `day` (UTC) shares."""
    start, end = day_bounds(day)
    a, b = _b36(int(start * 1000)), _b36(int(end * 1000) - 1)
    n = 0
    while n < TIME_DIGITS and a[n] == b[n]:
        n += 1
    return a[:n]


async def _call(client: aioredis.Redis, command: Callable[[], Awaitable[Any]]) -> Any:
    """One of this module's commands, all idempotent (reads, and writes of a whole value): run
    again once on a connection the server closed (core.redis_retry: the first use of the pool
    after a redis-server restart), else Unavailable."""
    try:
        return await retry_once_on_reset(client, command)
    except (RedisError, OSError, asyncio.TimeoutError) as e:
        raise Unavailable(f"reconciliation store unavailable: {type(e).__name__}") from None


class OrderReader:
    """Read-only access to the SET's order records."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        o, rc = settings.orders, settings.reconcile
        self._r = client
        self._region, self._set = o.region, o.set_name
        self._stores = [OrderStore(client, o.set_name, i, idempotency_ttl_s=o.idempotency_ttl_s,
                                   commit_batch_max=o.commit_batch_max)
                        for i in range(o.shard_count)]
        self._scan_count = rc.scan_count
        self._batch = rc.read_batch_max

    async def get_many(self, order_ids: list[str]) -> dict[str, Order | None]:
        """Records of this SET's orders (ids of other SETs or shards answer None)."""
        out: dict[str, Order | None] = {oid: None for oid in order_ids}
        keys: list[tuple[str, str]] = []
        for oid in order_ids:
            ref = parse_order_id(oid)
            if ref is not None and (ref.region, ref.set_name) == (self._region, self._set) \
                    and ref.shard < len(self._stores):
                keys.append((oid, self._stores[ref.shard].order_key(oid)))
        for i in range(0, len(keys), self._batch):
            chunk = keys[i:i + self._batch]
            raws = await _call(self._r, lambda: self._r.mget([k for _, k in chunk]))
            for (oid, _), raw in zip(chunk, raws):
                if raw:
                    out[oid] = Order.from_record(orjson.loads(raw))
        return out

    async def day_orders(self, day: date) -> AsyncIterator[Order]:
        """Every order of this SET created on `day` (UTC), shard by shard."""
        start, end = day_bounds(day)
        lo, hi = int(start * 1000), int(end * 1000)
        prefix = day_prefix(day)
        for shard, store in enumerate(self._stores):
            pattern = store.order_key(f"P_{self._region}_{self._set}_{shard}_{prefix}") + "*"
            cursor: int = 0
            while True:
                cursor, keys = await _call(self._r, lambda: self._r.scan(
                    cursor, match=pattern, count=self._scan_count))
                ids = [k.decode().rsplit(":o:", 1)[1] for k in keys]
                mine = [oid for oid in ids if lo <= (created_ms(oid) or lo) < hi]
                for oid, order in (await self.get_many(mine)).items():
                    if order is not None and start <= order.created_at < end:
                        yield order
                if cursor == 0:
                    break


    async def get_refunds(self, refund_ids: list[str]) -> dict[str, Refund | None]:
        """Records of this SET's refunds (other ids answer None)."""
        out: dict[str, Refund | None] = {rid: None for rid in refund_ids}
        keys: list[tuple[str, str]] = []
        for rid in refund_ids:
            ref = parse_refund_id(rid)
            if ref is not None and (ref.region, ref.set_name) == (self._region, self._set) \
                    and ref.shard < len(self._stores):
                keys.append((rid, self._stores[ref.shard].refund_key(rid)))
        for i in range(0, len(keys), self._batch):
            chunk = keys[i:i + self._batch]
            raws = await _call(self._r, lambda: self._r.mget([k for _, k in chunk]))
            for (rid, _), raw in zip(chunk, raws):
                if raw:
                    out[rid] = Refund.from_record(orjson.loads(raw))
        return out

    async def day_refunds(self, day: date) -> AsyncIterator[Refund]:
        """The SET's open (PENDING) refunds created on `day` (UTC)."""
        start, end = day_bounds(day)
        lo, hi = int(start * 1000), int(end * 1000)
        for store in self._stores:
            members = await _call(self._r, lambda: self._r.smembers(store.open_refunds_key))
            ids = sorted(m.decode() for m in members)
            mine = [rid for rid in ids if lo <= (created_ms(rid) or lo) < hi]
            for i in range(0, len(mine), self._batch):
                for refund in (await self.get_refunds(mine[i:i + self._batch])).values():
                    if refund is not None and start <= refund.created_at < end:
                        yield refund


class ReportStore:
    """The last report of each channel's day, and which runs are in progress."""

    def __init__(self, client: aioredis.Redis, set_name: str, ttl_days: int) -> None:
        self._r = client
        self._prefix = f"pc:{{recon.{set_name}}}"
        self._ttl_s = ttl_days * 86_400

    def key(self, channel: str, day: str) -> str:
        return f"{self._prefix}:report:{channel}:{day}"

    @property
    def running_key(self) -> str:
        return f"{self._prefix}:running"

    async def load(self, channel: str, day: str) -> dict[str, Any] | None:
        raw = await _call(self._r, lambda: self._r.get(self.key(channel, day)))
        return orjson.loads(raw) if raw else None

    async def save(self, report: dict[str, Any]) -> None:
        channel, day = report["channel"], report["day"]
        body = orjson.dumps(report)

        def write() -> Awaitable[Any]:
            pipe = self._r.pipeline(transaction=True)
            pipe.set(self.key(channel, day), body, ex=self._ttl_s)
            if report["status"] == "running":
                pipe.sadd(self.running_key, f"{channel}:{day}")
            else:
                pipe.srem(self.running_key, f"{channel}:{day}")
            return pipe.execute()
        await _call(self._r, write)

    async def running(self) -> list[tuple[str, str]]:
        members = await _call(self._r, lambda: self._r.smembers(self.running_key))
        return [(c, d) for c, _, d in (m.decode().partition(":") for m in members)]


class RefundLog:
    """Every refund reconciliation asked for, by its deterministic id (written before the channel
    sees the refund, updated with its answer)."""

    def __init__(self, client: aioredis.Redis, set_name: str) -> None:
        self._r = client
        self.key = f"pc:{{recon.{set_name}}}:refunds"

    async def get_many(self, refund_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not refund_ids:
            return {}
        raws = await _call(self._r, lambda: self._r.hmget(self.key, refund_ids))
        return {rid: orjson.loads(raw) for rid, raw in zip(refund_ids, raws) if raw}

    async def put(self, record: dict[str, Any]) -> None:
        body = orjson.dumps(record)
        await _call(self._r, lambda: self._r.hset(self.key, record["refund_id"], body))
