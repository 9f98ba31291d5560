"""Durable order and refund state in Redis, with group commit.

Keys carry a hash tag per shard (``{<set>.<shard>}``) so one shard's writes stay in one Redis
Cluster slot and can share a MULTI/EXEC:
  pc:{tag}:o:<order_id>                 the order record (orjson)
  pc:{tag}:idem:<app_id>:<out_trade_no> the order id for an idempotency key (TTL)
  pc:{tag}:open                         set of order ids not yet final
  pc:{tag}:r:<refund_id>                a refund record (orjson)
  pc:{tag}:ri:<order_id>                the order's refunds: hash out_refund_no -> refund id
                                        (its idempotency index; kept as long as the order)
  pc:{tag}:ropen                        set of refund ids not yet final
  pc:{tag}:ev:<event_id>                a merchant event (hash: body, url, app_id, state,
                                        attempts, last_error); expires after event_keep_s
  pc:{tag}:evdue                        sorted set: pending event ids by when they are due
  pc:{tag}:evdead                       sorted set: dead or refused event ids by when (bounded)
An order or refund write that makes it final carries its merchant event when the order has a
notify_url (actors/merchant_notify.py): the event lands in the same atomic script call as the
final state, so it is never lost to a crash between the two, and only when that call moved the
object out of its open set, so a repeated or retried final write never enqueues it twice.
A refund write carries its order's record too (the order's refund sums change with it), in one
write unit, so both land together or neither does.
Writes queued while a commit is in flight ride in the next one: one round trip and, with
``appendfsync always``, one fsync for many state changes. A batch is one call of a small Lua
script, so it is atomic (all of it or none of it reaches the AOF) and costs one reply to parse.
A commit returns only once Redis has acknowledged it: callers acknowledge nothing not durable.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.errors import Unavailable
from core.events import order_event, refund_event
from core.order import Order
from core.refund import Refund
from core.resp import LeanRedis, LuaScript


# KEYS[1] open orders, KEYS[2] open refunds; then each write's keys. ARGV[1] idempotency TTL (s);
# then each write's arguments, the first of which is its flag:
#   order write   flag [n](p|f)   keys: order, idempotency    args: flag, order id, order record
#   refund write  flag R[n](p|f)  keys: order, refund, the order's refunds (hash out_refund_no ->
#                 refund id)      args: flag, refund id, out_refund_no, refund record, order
#                 record, the order's refund_reserved and refunded_amount the write is based on,
#                 refund_reserved after it
# (n: new, p/f: the order's / the refund's status is pending / final.)
# A final write may carry a merchant event (flag has 'e'): two more keys, the event's hash and
# the due set, and six more args: event id, body, url, app id, due time, seconds to keep it. It
# is written (HSETNX: never twice) only when this write removes the order or refund from its
# open set, i.e. when it is the write that made it final.
# Nothing of the batch is written if any write is refused; the refused ones come back as
# {position (1-based), reason} pairs:
#   taken    a new order's idempotency key, or a new refund's out_refund_no, names another one
#   state    a new refund's order is not stored SUCCEEDED
#   exceeds  the refunds would reserve more than the order's amount
#   stale    the stored order's refund sums differ from the write's base, or the refund being
#            updated is no longer PENDING (another writer was first); or a plain write to an
#            order no longer open would change its final status or its refund sums; or any
#            write would take back one of the order's one-way fields (`charge_sent`,
#            `cancel_sent` cleared, `tried_channels` shortened, or `channel` changed without
#            it growing: see regresses())
# so one key can never name two orders or refunds, the refunds of an order never reserve
# more than it was paid, and a door the shard closed (the cancel's fence, a failover) stays
# closed, whatever a lost reply or a stale shard incarnation believes.
_COMMIT_LUA = """
local ttl = tonumber(ARGV[1])
local writes, k, a = {}, 3, 2
while a <= #ARGV do
  local flag = ARGV[a]
  local w = {new = string.find(flag, 'n', 1, true) ~= nil, final = string.sub(flag, -1) == 'f',
             order = KEYS[k]}
  if string.sub(flag, 1, 1) == 'R' then
    w.refund, w.index = KEYS[k + 1], KEYS[k + 2]
    w.id, w.no, w.rec, w.orec = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    w.base_reserved, w.base_refunded = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
    w.reserved = tonumber(ARGV[a + 7])
    k, a = k + 3, a + 8
  else
    w.idem, w.id, w.orec = KEYS[k + 1], ARGV[a + 1], ARGV[a + 2]
    k, a = k + 2, a + 3
  end
  if string.find(flag, 'e', 1, true) then
    w.ev, w.due = KEYS[k], KEYS[k + 1]
    w.eid, w.ebody, w.eurl, w.eapp = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
    w.eat, w.ekeep = ARGV[a + 4], tonumber(ARGV[a + 5])
    k, a = k + 2, a + 6
  end
  table.insert(writes, w)
end

-- An order's one-way fields, stored `s` against a write's `n`: once the charge or the cancel may
-- have reached the channel, and once a channel certainly did not charge (failover), no write
-- says otherwise. A write that would is a late one (a command whose reply timed out, run after
-- newer ones) or from a stale shard incarnation: it would reopen a door the shard closed (a
-- PAID fact applied although the cancel, already sent, reverses the payment).
local function regresses(s, n)
  if (s.charge_sent == true and n.charge_sent ~= true)
      or (s.cancel_sent == true and n.cancel_sent ~= true) then
    return true
  end
  local st, nt = s.tried_channels or '', n.tried_channels or ''
  if st == nt then return s.channel ~= n.channel end
  return st ~= '' and string.sub(nt, 1, #st + 1) ~= st .. ','
end

local function refund_refusal(w)
  if w.new then
    local holder = redis.call('HGET', w.index, w.no)
    if holder and holder ~= w.id then return 'taken' end
  else
    local raw = redis.call('GET', w.refund)
    if not raw or cjson.decode(raw).status ~= 'PENDING' then return 'stale' end
  end
  local raw = redis.call('GET', w.order)
  if not raw then return 'state' end
  local o = cjson.decode(raw)
  if w.new and o.status ~= 'SUCCEEDED' then return 'state' end
  if (tonumber(o.refund_reserved) or 0) ~= w.base_reserved
      or (tonumber(o.refunded_amount) or 0) ~= w.base_refunded then
    return 'stale'
  end
  if w.reserved > tonumber(o.amount) then return 'exceeds' end
  if regresses(o, cjson.decode(w.orec)) then return 'stale' end
  return nil
end

local function emit(w)
  if w.ev and redis.call('HSETNX', w.ev, 'body', w.ebody) == 1 then
    redis.call('HSET', w.ev, 'url', w.eurl, 'app_id', w.eapp, 'state', 'pending',
               'attempts', 0)
    redis.call('EXPIRE', w.ev, w.ekeep)
    redis.call('ZADD', w.due, w.eat, w.eid)
  end
end

-- A plain write to a stored order: it may not take back a one-way field (regresses), and when
-- the order is no longer open (final) it may not change its status or its refund sums (only
-- refund writes do). A write that would is a late one or from a stale shard incarnation.
local function order_refusal(w)
  local raw = redis.call('GET', w.order)
  if not raw then return nil end
  local s, n = cjson.decode(raw), cjson.decode(w.orec)
  if regresses(s, n) then return 'stale' end
  if redis.call('SISMEMBER', KEYS[1], w.id) == 1 then return nil end
  if (s.status ~= 'PENDING' and s.status ~= n.status)
      or (tonumber(s.refund_reserved) or 0) ~= (tonumber(n.refund_reserved) or 0)
      or (tonumber(s.refunded_amount) or 0) ~= (tonumber(n.refunded_amount) or 0) then
    return 'stale'
  end
  return nil
end

local refused = {}
for i, w in ipairs(writes) do
  local why = nil
  if w.refund then
    why = refund_refusal(w)
  else
    if w.new then
      local holder = redis.call('GET', w.idem)
      if holder and holder ~= w.id then why = 'taken' end
    end
    why = why or order_refusal(w)
  end
  if why then
    table.insert(refused, i)
    table.insert(refused, why)
  end
end
if #refused > 0 then
  return refused
end
for _, w in ipairs(writes) do
  redis.call('SET', w.order, w.orec)
  if w.refund then
    redis.call('SET', w.refund, w.rec)
    if w.new then
      redis.call('HSET', w.index, w.no, w.id)
    end
    if w.final then
      if redis.call('SREM', KEYS[2], w.id) == 1 then emit(w) end
    else
      redis.call('SADD', KEYS[2], w.id)
    end
  else
    if w.new then
      redis.call('SET', w.idem, w.id, 'EX', ttl)
    end
    if w.final then
      if redis.call('SREM', KEYS[1], w.id) == 1 then emit(w) end
    else
      redis.call('SADD', KEYS[1], w.id)
    end
  end
end
return {}
"""


# Due events, at most ARGV[2] of them, each leased until ARGV[3] (not due again before then).
_TAKE_DUE_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id)
end
return ids
"""


# An operator's replay of a given-up event (gateway/dead_events.py). KEYS: the event's hash, the
# due set, the dead set; ARGV: event id, due time, seconds to keep it. A dead or refused event is
# put back on the schedule, due now, its attempts from 0 (the whole retry schedule again), kept
# event_keep_s from now; any other state is left alone. Returns the state it found ('' for none).
_REPLAY_EVENT_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'dead' or state == 'refused' then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'attempts', 0)
  redis.call('HINCRBY', KEYS[1], 'replays', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return state
"""


def event_set_keys(set_name: str, shard: int) -> tuple[str, str]:
    """(due events, dead or refused events) of one shard: what /metrics counts."""
    tag = f"{{{set_name}.{shard}}}"
    return f"pc:{tag}:evdue", f"pc:{tag}:evdead"


class KeyTaken(Exception):
    """A new order's idempotency key already names another order (nothing was written)."""


class RefundRefused(Exception):
    """The commit script refused a refund write (nothing of it was written); `reason` is
    taken | state | exceeds | stale (see _COMMIT_LUA)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RefundBase:
    """The order's refund sums a refund write was computed from (checked by the script)."""
    reserved: int
    refunded: int


@dataclass(slots=True)
class _Write:
    order: Order
    new: bool
    done: asyncio.Future[None]
    refund: Refund | None = None
    base: RefundBase | None = None


class OrderStore:
    def __init__(self, client: aioredis.Redis, set_name: str, shard: int, *,
                 idempotency_ttl_s: int, commit_batch_max: int, event_keep_s: int = 0,
                 fast: LeanRedis | None = None) -> None:
        self._r = client
        # The hot path (the commit script, the order and idempotency reads) goes through `fast`
        # when given (core/resp.py: one pipelined connection the host's shards share); the rest,
        # and everything when it is None (the simulation's store), through redis-py.
        self._fast = fast
        self._tag = f"{{{set_name}.{shard}}}"
        self._ttl = idempotency_ttl_s
        self._batch_max = commit_batch_max
        self._queue: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._commit_script = client.register_script(_COMMIT_LUA)
        self._commit_lua = LuaScript(_COMMIT_LUA)
        # Merchant events (0: none are written; the simulation's store runs without them).
        self._event_keep_s = event_keep_s
        self._take_due_script = client.register_script(_TAKE_DUE_LUA) if event_keep_s else None
        self._replay_script = client.register_script(_REPLAY_EVENT_LUA) if event_keep_s else None
        self.on_events: Callable[[], None] | None = None   # called after a commit with events
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

    def refund_key(self, refund_id: str) -> str:
        return f"pc:{self._tag}:r:{refund_id}"

    def refunds_key(self, order_id: str) -> str:
        return f"pc:{self._tag}:ri:{order_id}"

    @property
    def open_refunds_key(self) -> str:
        return f"pc:{self._tag}:ropen"

    def event_key(self, event_id: str) -> str:
        return f"pc:{self._tag}:ev:{event_id}"

    @property
    def due_events_key(self) -> str:
        return f"pc:{self._tag}:evdue"      # (event_set_keys names the same two)

    @property
    def dead_events_key(self) -> str:
        return f"pc:{self._tag}:evdead"

    # ---- reads ----
    async def get(self, order_id: str) -> Order | None:
        raw = await self._get(self.order_key(order_id))
        return Order.from_record(orjson.loads(raw)) if raw else None

    async def find(self, app_id: str, out_trade_no: str) -> Order | None:
        order_id = await self._get(self.idem_key(app_id, out_trade_no))
        if not order_id:
            return None
        return await self.get(order_id.decode() if isinstance(order_id, bytes) else order_id)

    async def _get(self, key: str) -> Any:
        if self._fast is not None:
            return await self._call(self._fast.execute("GET", key))
        return await self._call(self._r.get(key))

    async def open_ids(self) -> list[str]:
        return [m.decode() for m in await self._call(self._r.smembers(self.open_key))]

    async def get_refund(self, refund_id: str) -> Refund | None:
        raw = await self._call(self._r.get(self.refund_key(refund_id)))
        return Refund.from_record(orjson.loads(raw)) if raw else None

    async def find_refund(self, order_id: str, out_refund_no: str) -> Refund | None:
        refund_id = await self._call(self._r.hget(self.refunds_key(order_id), out_refund_no))
        if not refund_id:
            return None
        return await self.get_refund(_text(refund_id))

    async def refunds_of(self, order_id: str) -> list[Refund]:
        """Every refund of the order, oldest first (two round trips)."""
        ids = await self._call(self._r.hvals(self.refunds_key(order_id)))
        if not ids:
            return []
        raws = await self._call(self._r.mget([self.refund_key(_text(i)) for i in ids]))
        refunds = [Refund.from_record(orjson.loads(raw)) for raw in raws if raw]
        return sorted(refunds, key=lambda r: (r.created_at, r.refund_id))

    async def open_refund_ids(self) -> list[str]:
        return [_text(m) for m in await self._call(self._r.smembers(self.open_refunds_key))]

    # ---- writes (group commit) ----
    async def commit(self, order: Order, *, new: bool = False) -> None:
        """Durably write `order` (and, when `new`, its idempotency key); raises Unavailable."""
        await self._enqueue(_Write(order, new, self._future()))

    async def commit_refund(self, order: Order, refund: Refund, *, base: RefundBase,
                            new: bool = False) -> None:
        """Durably write `refund` and its `order` together (when `new`, the refund's
        out_refund_no too). Raises RefundRefused (see _COMMIT_LUA) or Unavailable."""
        assert refund.order_id == order.order_id
        await self._enqueue(_Write(order, new, self._future(), refund, base))

    def _future(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, write: _Write) -> None:
        self._queue.append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        await write.done

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
                    if i not in taken:
                        self._queue.append(w)
                    elif w.refund is not None:
                        w.done.set_exception(RefundRefused(taken[i]))
                    elif taken[i] == "stale":   # a late or stale write: the shard re-reads
                        w.done.set_exception(Unavailable("stale order write refused"))
                    else:
                        w.done.set_exception(KeyTaken(w.order.out_trade_no))
                continue
            for w in batch:
                if not w.done.done():
                    w.done.set_result(None)

    async def _write(self, batch: list[_Write]) -> dict[int, str]:
        """One atomic script call; the 0-based positions of refused writes and why (then
        nothing was written)."""
        keys = [self.open_key, self.open_refunds_key]
        args: list[Any] = [self._ttl]
        events = 0
        for w in batch:
            o, r = w.order, w.refund
            event = self._event_of(w)
            e = "e" if event else ""
            if r is None:
                keys += [self.order_key(o.order_id), self.idem_key(o.app_id, o.out_trade_no)]
                flag = ("n" if w.new else "") + e + ("f" if o.status.is_final else "p")
                args += [flag, o.order_id, orjson.dumps(o.to_record())]
            else:
                assert w.base is not None
                keys += [self.order_key(o.order_id), self.refund_key(r.refund_id),
                         self.refunds_key(o.order_id)]
                flag = "R" + ("n" if w.new else "") + e + ("f" if r.status.is_final else "p")
                args += [flag, r.refund_id, r.out_refund_no, orjson.dumps(r.to_record()),
                         orjson.dumps(o.to_record()), w.base.reserved, w.base.refunded,
                         o.refund_reserved]
            if event:
                eid, body, at = event
                keys += [self.event_key(eid), self.due_events_key]
                args += [eid, body, o.notify_url, o.app_id, repr(at), self._event_keep_s]
                events += 1
        if self._fast is not None:
            refused = await self._fast.evalsha(self._commit_lua, keys, args)
        else:
            refused = await self._commit_script(keys=keys, args=args)
        if refused:
            return {int(refused[i]) - 1: _text(refused[i + 1])
                    for i in range(0, len(refused), 2)}
        self.commits += 1
        self.writes += len(batch)
        if events and self.on_events is not None:
            self.on_events()
        return {}

    def _event_of(self, w: _Write) -> tuple[str, bytes, float] | None:
        """(event id, body, due time) of the merchant event a final write carries, if any."""
        o, r = w.order, w.refund
        if not self._event_keep_s or not o.notify_url:
            return None
        if r is None:
            if not o.status.is_final:
                return None
            eid, body = order_event(o)
            return eid, body, o.updated_at
        if not r.status.is_final:
            return None
        eid, body = refund_event(r)
        return eid, body, r.updated_at

    # ---- merchant events (actors/merchant_notify.py)
    async def take_due_events(self, now: float, limit: int, lease_s: float) -> list[str]:
        """Up to `limit` due event ids, each leased (not due again) for `lease_s`."""
        assert self._take_due_script is not None, "the store keeps no events"
        ids = await self._call(self._take_due_script(
            keys=[self.due_events_key], args=[repr(now), limit, repr(now + lease_s)]))
        return [_text(i) for i in ids]

    async def get_event(self, event_id: str) -> dict[str, str] | None:
        raw = await self._call(self._r.hgetall(self.event_key(event_id)))
        return {_text(k): _text(v) for k, v in raw.items()} if raw else None

    async def event_retry(self, event_id: str, attempts: int, error: str, at: float) -> None:
        """A failed attempt: count it and make the event due again at `at`."""
        async with self._r.pipeline(transaction=True) as p:
            p.hset(self.event_key(event_id),
                   mapping={"attempts": attempts, "last_error": error})
            p.zadd(self.due_events_key, {event_id: at})
            await self._call(p.execute())

    async def event_settled(self, event_id: str, state: str, attempts: int, error: str,
                            now: float, dead_kept_max: int) -> None:
        """The event is done: `delivered`, or `dead` / `refused` (kept in the dead set)."""
        async with self._r.pipeline(transaction=True) as p:
            p.hset(self.event_key(event_id), mapping={"state": state, "attempts": attempts,
                                                      "last_error": error})
            p.zrem(self.due_events_key, event_id)
            if state != "delivered":
                p.zadd(self.dead_events_key, {event_id: now})
                p.zremrangebyrank(self.dead_events_key, 0, -dead_kept_max - 1)
            await self._call(p.execute())

    async def drop_due_event(self, event_id: str) -> None:
        """An id in the due set whose record is gone (expired)."""
        await self._call(self._r.zrem(self.due_events_key, event_id))

    async def dead_events(self, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` ids of the dead set (dead or refused events), the most recently given
        up first, each with when (Unix s)."""
        raw = await self._call(self._r.zrevrange(self.dead_events_key, 0, limit - 1,
                                                 withscores=True))
        return [(_text(m), float(at)) for m, at in raw]

    async def get_events(self, event_ids: list[str]) -> list[dict[str, str] | None]:
        """get_event for many, in one round trip."""
        if not event_ids:
            return []
        async with self._r.pipeline(transaction=False) as p:
            for eid in event_ids:
                p.hgetall(self.event_key(eid))
            raws = await self._call(p.execute())
        return [{_text(k): _text(v) for k, v in raw.items()} if raw else None for raw in raws]

    async def replay_event(self, event_id: str, now: float) -> str:
        """Put a dead or refused event back on the schedule (see _REPLAY_EVENT_LUA); the state
        it found: dead | refused (replayed), pending | delivered (left alone), '' (none)."""
        assert self._replay_script is not None, "the store keeps no events"
        found = await self._call(self._replay_script(
            keys=[self.event_key(event_id), self.due_events_key, self.dead_events_key],
            args=[event_id, repr(now), self._event_keep_s]))
        return _text(found)

    async def event_counts(self) -> tuple[int, int]:
        """(pending, dead or refused) events of this shard."""
        async with self._r.pipeline(transaction=False) as p:
            p.zcard(self.due_events_key)
            p.zcard(self.dead_events_key)
            due, dead = await self._call(p.execute())
        return int(due), int(dead)

    async def _call(self, aw: Any) -> Any:
        try:
            return await aw
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            raise Unavailable(f"order store unavailable: {type(e).__name__}") from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
