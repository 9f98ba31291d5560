"""A simulated Redis under the real actors.store.OrderStore: durable dict, faults, and a checker.

The shard's store in the simulation is the production `OrderStore` (group commit, the fence on
idempotency keys, reads by MGET); only its Redis client is this object, which answers the four
commands OrderStore sends (GET, MGET, SMEMBERS and the commit script) from dicts that outlive
every shard incarnation (Redis is the durable truth; a shard crash loses nothing committed).

The commit script is the same algorithm as `actors/store.py:_COMMIT_LUA` for order writes (the
simulation makes no refunds): a new order whose idempotency key names another order, a write
that takes back a one-way field of the stored order (`regresses`), or a write that changes a
final order's status refuses the whole batch and returns the refused positions with their
reason; otherwise every record is written, idempotency keys set for new orders, and the open
set kept.
(TTL is not simulated: a run lasts minutes of virtual time, keys live 30 days.)

Timing: commands run one at a time in the order they were sent (one Redis thread), each after
its latency; a reply later than the client's socket timeout is a TimeoutError, whether or not
the command ran. Faults, per command, when the world's faults are on:
  fail      refused before running (connection reset): nothing applied
  ack_lost  ran in order, reply lost: the client sees a timeout
  late      reply lost, and the command runs later, after commands sent after it (a stalled
            connection's data processed after a new connection's)
  stall     the server stalls: this command and everything queued behind it wait
  outage    in an outage window every command is refused
Every write of an order record is checked as it lands: the record's identity never changes, a
final status is never left for another status (the store-level form of "final is final"), and
no one-way field is taken back (`charge_sent`, `cancel_sent` cleared, `tried_channels`
shortened, `channel` changed without a failover: the doors the shard closed stay closed).
"""
from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any, Callable

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from tests.sim.world import World

_FINAL = {"SUCCEEDED", "FAILED", "CLOSED"}
SERVICE_S = 0.00001   # one command's time in the Redis thread
_IDENTITY = ("order_id", "app_id", "out_trade_no", "amount", "currency", "fingerprint",
             "created_at")
_ONE_WAY = ("charge_sent", "cancel_sent", "tried_channels", "channel")


class SimRedis:
    def __init__(self, world: "World", rng: random.Random, *, fence: bool = True,
                 amnesia: bool = False, final_guard: bool = True,
                 one_way_guard: bool = True) -> None:
        self._world = world
        self._rng = rng
        self._fence = fence       # False: a bug injected by the checkers' own tests
        self._final_guard = final_guard   # False: the script before 2026-11-25 (no stale guard)
        self._one_way_guard = one_way_guard   # False: the script before the one-way guard
        self._amnesia = amnesia   # True: acknowledges a new order's write and drops it (a bug)
        self.strings: dict[str, bytes] = {}
        self.sets: dict[str, dict[str, None]] = {}   # ordered sets: deterministic SMEMBERS
        self._free_at = 0.0
        self.outstanding = 0          # commands sent and not yet run or answered
        self.commits_applied = 0
        self.commits_refused = 0

    # ---- the commands OrderStore uses
    def register_script(self, _lua: str) -> Callable[..., Any]:
        async def script(keys: list[str], args: list[Any]) -> list[int]:
            result: list[int] = await self._command("commit", lambda: self._commit(keys, args))
            return result
        return script

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self._command("get", lambda: self.strings.get(key))
        return result

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        result: list[bytes | None] = await self._command(
            "mget", lambda: [self.strings.get(k) for k in keys])
        return result

    async def smembers(self, key: str) -> list[bytes]:
        result: list[bytes] = await self._command(
            "smembers", lambda: [m.encode() for m in self.sets.get(key, {})])
        return result

    # ---- timing and faults
    async def _command(self, kind: str, run: Callable[[], Any]) -> Any:
        world = self._world
        world.check_caller_alive(f"redis {kind}")
        loop = asyncio.get_running_loop()
        now = loop.time()
        sw, rng = world.swarm, self._rng
        latency = rng.uniform(*sw.redis_latency_s)
        fut: asyncio.Future[Any] = loop.create_future()
        faults = world.faults_on
        if faults and world.in_redis_outage():
            world.fault("redis_outage_refused")
            loop.call_at(now + latency, _fail, fut, RedisConnectionError("connection refused"))
            return await fut
        if faults and rng.random() < sw.p_redis_fail:
            world.fault("redis_fail")
            loop.call_at(now + latency, _fail, fut, RedisConnectionError("connection reset"))
            return await fut
        if faults and rng.random() < sw.p_redis_stall:
            world.fault("redis_stall")
            latency += rng.uniform(0.0, sw.redis_stall_s)
        run_at = max(now + latency, self._free_at + SERVICE_S)   # strictly in order sent
        self._free_at = run_at
        reply_lost = False
        if faults and rng.random() < sw.p_redis_late:
            world.fault("redis_late")
            run_at = now + sw.redis_op_timeout_s + rng.uniform(0.0, sw.redis_late_s)
            reply_lost = True
        elif faults and rng.random() < sw.p_redis_ack_lost:
            world.fault("redis_ack_lost")
            reply_lost = True
        reply_at = run_at + rng.uniform(*sw.redis_latency_s)
        timeout_at = now + sw.redis_op_timeout_s
        if reply_at > timeout_at:
            reply_lost = True
        # Outstanding until it has run and its caller has its answer (or its timeout): a
        # converged world has no write that lands, or is learnt, later.
        parts = [2]

        def part_done(*_args: object) -> None:
            parts[0] -= 1
            if parts[0] == 0:
                self.outstanding -= 1
        self.outstanding += 1
        fut.add_done_callback(part_done)

        def execute() -> None:
            result = run()
            part_done()
            if not reply_lost:
                loop.call_at(reply_at, _resolve, fut, result)

        loop.call_at(run_at, execute)
        if reply_lost:
            loop.call_at(timeout_at, _fail, fut, RedisTimeoutError("Timeout reading from socket"))
        return await fut

    # ---- the commit script (actors/store.py:_COMMIT_LUA)
    def _commit(self, keys: list[str], args: list[Any]) -> list[Any]:
        # KEYS: open orders, open refunds, then (order, idempotency key) per order write; the
        # simulation makes no refunds, so every write is an order write (3 args each).
        assert not any(str(a).startswith("R") for a in args[1::3]), "refund writes not simulated"
        n = (len(args) - 1) // 3
        refused: list[tuple[int, bytes]] = []
        open_set = self.sets.setdefault(keys[0], {})
        for i in range(n):
            flag, oid = args[1 + 3 * i], args[2 + 3 * i]
            if flag.startswith("n"):
                holder = self.strings.get(keys[3 + 2 * i])
                if holder is not None and holder.decode() != oid and self._fence:
                    refused.append((i + 1, b"taken"))
                    continue
            if self._stale_write(keys[2 + 2 * i], args[3 + 3 * i], oid in open_set):
                refused.append((i + 1, b"stale"))
        if refused:
            self._world.note(f"redis refused {[(args[2 + 3 * (i - 1)], r) for i, r in refused]}")
            self.commits_refused += 1
            return [x for pos, why in refused for x in (pos, why)]   # {position, reason} pairs
        self.commits_applied += 1
        for i in range(n):
            flag, oid, rec = args[1 + 3 * i], args[2 + 3 * i], args[3 + 3 * i]
            if self._amnesia and flag.startswith("n") and self._rng.random() < 0.2:
                continue
            self._check_write(keys[2 + 2 * i], rec)
            self._world.note(f"redis write {oid} {flag} {orjson.loads(rec)['status']}")
            self.strings[keys[2 + 2 * i]] = rec
            if flag.startswith("n"):
                self.strings[keys[3 + 2 * i]] = oid.encode()
            if flag.endswith("f"):
                open_set.pop(oid, None)
            else:
                open_set[oid] = None
        return []

    def _stale_write(self, key: str, rec: bytes, is_open: bool) -> bool:
        """The script's rules for a plain write to a stored order (order_refusal): it may not
        take back a one-way field, and, once the order is no longer open (final), it may not
        change the stored status or refund sums."""
        raw = self.strings.get(key)
        if raw is None:
            return False
        stored, new = orjson.loads(raw), orjson.loads(rec)
        if self._one_way_guard and regresses(stored, new):
            return True
        if not self._final_guard or is_open:
            return False
        return ((stored["status"] != "PENDING" and stored["status"] != new["status"])
                or stored.get("refund_reserved", 0) != new.get("refund_reserved", 0)
                or stored.get("refunded_amount", 0) != new.get("refunded_amount", 0))

    def _check_write(self, key: str, rec: bytes) -> None:
        old_raw = self.strings.get(key)
        if old_raw is None:
            return
        old, new = orjson.loads(old_raw), orjson.loads(rec)
        for name in _IDENTITY:
            if old.get(name) != new.get(name):
                self._world.violation("record_identity_changed",
                                      f"{old['order_id']}: {name} {old.get(name)!r} -> "
                                      f"{new.get(name)!r}")
        if old["status"] in _FINAL and new["status"] != old["status"]:
            self._world.violation("final_status_overwritten",
                                  f"{old['order_id']}: stored {old['status']} overwritten "
                                  f"with {new['status']}")
        if regresses(old, new):
            fields = {f: (old.get(f), new.get(f)) for f in _ONE_WAY if old.get(f) != new.get(f)}
            self._world.violation("one_way_field_regressed",
                                  f"{old['order_id']}: {new['status']} write takes back "
                                  f"{fields}")

    # ---- the final read (the oracle's view, no faults)
    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for k, v in self.strings.items() if ":o:" in k]


def regresses(stored: dict[str, Any], new: dict[str, Any]) -> bool:
    """The script's regresses(): the write clears `charge_sent` or `cancel_sent`, shortens
    `tried_channels`, or changes `channel` without growing it."""
    if (stored.get("charge_sent") and not new.get("charge_sent")) \
            or (stored.get("cancel_sent") and not new.get("cancel_sent")):
        return True
    st, nt = stored.get("tried_channels", ""), new.get("tried_channels", "")
    if st == nt:
        return bool(stored.get("channel") != new.get("channel"))
    return st != "" and not nt.startswith(st + ",")


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
