"""Late writes to a PENDING order's one-way fields, as one scripted schedule on the real
OrderShard and OrderStore over the simulation's commit script (tests/sim/redis_sim.py, the
mirror of actors/store.py:_COMMIT_LUA), on the virtual-time loop.

The schedule: the charge answers WAITING with the channel's trade number; the write that records
it times out (it will run late). The window ends: the shard reads Redis, commits `cancel_sent`
and cancels; the payer had paid just before, so the channel reverses the payment. Now the late
write runs: without the guard on one-way fields it lands and takes `cancel_sent` back. The
cancel's CLOSED cannot be committed (Redis resets the connection), so the shard lets its
record go; the PAID notification then reads Redis, finds no `cancel_sent` and makes the order
SUCCEEDED while the channel gave the money back. With the guard the late write is refused, the
PAID fact is one the cancel decides (`paid_after_cancel`), and the retried cancel closes it.
"""
from __future__ import annotations

import asyncio
import random
from typing import Any, Callable

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.shard import OrderShard
from actors.store import OrderStore
from channels.base import ChannelResult
from core.states import Fact
from tests.sim.loop import SimClock
from tests.sim.redis_sim import SimRedis
from tests.sim.test_findings import Channel, _answer, cmd, paid_note, run, settings

pytestmark = pytest.mark.sim


class _Checks:
    """The part of World the commit script's mirror uses: its trace and store-level checks."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    def note(self, _text: str) -> None:
        return None

    def violation(self, kind: str, detail: str) -> None:
        self.violations.append(f"{kind}: {detail}")


class ScriptedRedis:
    """OrderStore's Redis client: SimRedis's commit script on its dicts, each commit's fate
    chosen by `fate(record)`: "run", "refuse" (connection reset, nothing applied) or "hold"
    (the reply times out; the command runs when `release_held` is called: late)."""

    def __init__(self, one_way_guard: bool) -> None:
        self.checks = _Checks()
        self.sim = SimRedis(self.checks, random.Random(0),  # type: ignore[arg-type]
                            one_way_guard=one_way_guard)
        self.fate: Callable[[dict[str, Any]], str] = lambda _rec: "run"
        self._held: list[Callable[[], list[Any]]] = []
        self.late_results: list[list[Any]] = []

    def register_script(self, _lua: str) -> Callable[..., Any]:
        async def script(keys: list[str], args: list[Any]) -> list[Any]:
            await asyncio.sleep(0.001)
            fates = {self.fate(orjson.loads(rec)) for rec in args[3::3]}
            if "refuse" in fates:
                raise RedisConnectionError("connection reset")
            if "hold" in fates:
                self._held.append(lambda: self.sim._commit(keys, args))
                raise RedisTimeoutError("Timeout reading from socket")
            return self.sim._commit(keys, args)
        return script

    def release_held(self) -> None:
        while self._held:
            self.late_results.append(self._held.pop(0)())

    async def get(self, key: str) -> bytes | None:
        await asyncio.sleep(0.001)
        return self.sim.strings.get(key)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        await asyncio.sleep(0.001)
        return [self.sim.strings.get(k) for k in keys]

    async def smembers(self, key: str) -> list[bytes]:
        await asyncio.sleep(0.001)
        return [m.encode() for m in self.sim.sets.get(key, {})]


def late_write_schedule(one_way_guard: bool) -> dict[str, Any]:
    """Runs the schedule above; what Redis holds at the end and what happened on the way."""
    async def scenario(clock: SimClock) -> dict[str, Any]:
        redis = ScriptedRedis(one_way_guard)
        held_once, refused_once = [False], [False]

        def fate(rec: dict[str, Any]) -> str:
            if rec["channel_trade_no"] == "T1" and not held_once[0]:
                held_once[0] = True              # the WAITING answer's write: it runs late
                return "hold"
            if rec["status"] == "CLOSED" and not refused_once[0]:
                refused_once[0] = True           # the cancel's answer: not committed
                return "refuse"
            return "run"
        redis.fate = fate
        channel = Channel()
        channel.charge_answers["alipay"] = _answer(Fact.WAITING, channel_trade_no="T1")

        async def reversal() -> ChannelResult:
            redis.release_held()                 # the late write lands after cancel_sent
            await asyncio.sleep(0.01)
            return ChannelResult(Fact.CLOSED, action="refund")
        channel.cancel_answer = reversal
        store = OrderStore(redis, "sim", 0, idempotency_ttl_s=60,  # type: ignore[arg-type]
                           commit_batch_max=8)
        shard = OrderShard(settings(), 0, store=store, channels=channel, clock=clock)
        reply = (await shard.submit([cmd()]))[0]
        assert reply is not None and reply["order"]["status"] == "PENDING"
        oid = reply["order"]["order_id"]
        while not refused_once[0]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)            # the cancel's CLOSED was refused; memory let go
        assert await shard.notify(paid_note(oid)) is True
        await asyncio.sleep(2.0)
        stored = orjson.loads(redis.sim.strings[store.order_key(oid)])
        return {"stored": stored, "late": redis.late_results, "cancels": len(channel.cancels),
                "paid_after_cancel": shard.counters["paid_after_cancel"],
                "violations": redis.checks.violations}
    result: dict[str, Any] = run(scenario)
    return result


def test_without_the_guard_a_late_write_reopens_the_cancels_door() -> None:
    r = late_write_schedule(one_way_guard=False)
    assert r["late"] == [[]]                             # the late write landed
    assert any(v.startswith("one_way_field_regressed") and "cancel_sent" in v
               for v in r["violations"])
    # SUCCEEDED, while the channel reversed the payment: the merchant ships, the payer is repaid
    assert (r["stored"]["status"], r["stored"]["resolved_by"]) == ("SUCCEEDED", "notify")
    assert r["paid_after_cancel"] == 0


def test_with_the_guard_the_late_write_is_refused_and_the_cancel_decides() -> None:
    r = late_write_schedule(one_way_guard=True)
    assert r["late"] == [[1, b"stale"]]                  # refused, nothing of it written
    assert r["violations"] == []
    assert (r["stored"]["status"], r["stored"]["failure_code"]) == ("CLOSED",
                                                                    "reversed_after_window")
    assert r["stored"]["cancel_sent"] is True
    assert r["paid_after_cancel"] == 1 and r["cancels"] == 2
