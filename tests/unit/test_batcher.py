"""gateway.batcher.ShardBatcher with a scripted shard: no Ray."""
import asyncio

import pytest

from core.errors import Overloaded, Unavailable
from gateway.batcher import ShardBatcher


class FakeShard:
    def __init__(self, call_s=0.0, late=(), late_s=0.2):
        self.calls: list[list[str]] = []
        self.shards: list[list[int]] = []
        self.collects = 0
        self.call_s, self.late, self.late_s = call_s, set(late), late_s
        self.pending: dict[str, str] = {}
        self.fail: Exception | None = None
        self.fail_collect: Exception | None = None

    async def submit(self, lane, tickets, shards, items):
        self.calls.append(list(items))
        self.shards.append(list(shards))
        await asyncio.sleep(self.call_s)
        if self.fail:
            raise self.fail
        out = []
        for t, item in zip(tickets, items):
            if item in self.late:
                self.pending[t] = f"late:{item}"
                out.append(None)
            else:
                out.append(f"ok:{item}")
        return out

    async def collect(self, shard, tickets):
        self.collects += 1
        await asyncio.sleep(self.late_s)
        if self.fail_collect:
            raise self.fail_collect
        return {t: self.pending.pop(t) for t in tickets if t in self.pending}


def batcher(shard, inflight_max=1, queue_max=100, batch_max=64, lanes=2):
    return ShardBatcher(shard.submit, lanes, lambda s: s % lanes, batch_max=batch_max, linger_us=500,
                        inflight_max=inflight_max, queue_max=queue_max, collect=shard.collect)


async def test_an_idle_shard_gets_the_request_at_once():
    shard = FakeShard()
    b = batcher(shard)
    assert await b.submit(0, "a") == "ok:a"
    assert shard.calls == [["a"]]


async def test_requests_gather_while_a_call_is_in_flight():
    shard = FakeShard(call_s=0.05)
    b = batcher(shard)
    replies = await asyncio.gather(*(b.submit(0, f"r{i}") for i in range(10)))
    assert replies == [f"ok:r{i}" for i in range(10)]
    assert [len(c) for c in shard.calls] == [1, 9]


async def test_a_late_reply_comes_by_collect_and_does_not_hold_the_next_batch():
    shard = FakeShard(late={"slow"}, late_s=0.3)
    b = batcher(shard)
    loop = asyncio.get_running_loop()
    slow = asyncio.ensure_future(b.submit(0, "slow"))
    await asyncio.sleep(0.01)
    t0 = loop.time()
    assert await b.submit(0, "fast") == "ok:fast"
    assert loop.time() - t0 < 0.1
    assert await slow == "late:slow"
    assert shard.collects >= 1 and b.late == 1


async def test_shards_of_one_host_share_its_calls():
    host = FakeShard(call_s=0.05)
    b = batcher(host, lanes=1)
    replies = await asyncio.gather(*(b.submit(i % 3, f"r{i}") for i in range(7)))
    assert replies == [f"ok:r{i}" for i in range(7)]
    assert host.calls == [["r0"], [f"r{i}" for i in range(1, 7)]]
    assert host.shards == [[0], [1, 2, 0, 1, 2, 0]]


async def test_batch_max_splits_batches():
    shard = FakeShard(call_s=0.05)
    b = batcher(shard, inflight_max=1, batch_max=4)
    await asyncio.gather(*(b.submit(1, i) for i in range(9)))
    assert [len(c) for c in shard.calls] == [1, 4, 4]


async def test_a_full_queue_fails_fast_with_overloaded():
    shard = FakeShard(call_s=0.2)
    b = batcher(shard, queue_max=3)
    first = [asyncio.ensure_future(b.submit(0, i)) for i in range(4)]  # 1 sent, 3 queued
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await b.submit(0, "one too many")
    assert len(await asyncio.gather(*first)) == 4


async def test_a_failed_call_fails_its_requests_and_later_ones_go_through():
    shard = FakeShard()
    shard.fail = Unavailable("shard down", retry_after_s=1)
    b = batcher(shard)
    with pytest.raises(Unavailable):
        await b.submit(0, "a")
    shard.fail = None
    assert await b.submit(0, "b") == "ok:b"


async def test_a_bug_in_a_call_or_a_poll_fails_its_requests_instead_of_hanging_them():
    shard = FakeShard(late={"slow"}, late_s=0.01)
    shard.fail = TypeError("unhashable type: 'list'")
    b = batcher(shard)
    with pytest.raises(TypeError):
        await asyncio.wait_for(b.submit(0, "a"), 1.0)
    shard.fail, shard.fail_collect = None, KeyError("t")
    with pytest.raises(KeyError):
        await asyncio.wait_for(b.submit(0, "slow"), 1.0)
    shard.fail_collect = None
    assert await b.submit(1, "b") == "ok:b"


async def test_a_failed_collect_fails_the_waiting_requests():
    shard = FakeShard(late={"slow"}, late_s=0.01)
    shard.fail_collect = Unavailable("shard restarted", retry_after_s=1)
    b = batcher(shard)
    with pytest.raises(Unavailable):
        await b.submit(0, "slow")


class TimedHost:
    """Each item is ready `delay` seconds after its batch arrived; a batch answers what is ready
    within `wait_s`, and a collect answers when the first of its own tickets is ready."""
    def __init__(self, delays, wait_s=0.02):
        self.delays, self.wait_s = delays, wait_s
        self.ready_at: dict[str, float] = {}
        self.replies: dict[str, str] = {}
        self.collects: list[list[str]] = []

    async def submit(self, lane, tickets, shards, items):
        now = asyncio.get_running_loop().time()
        for t, item in zip(tickets, items):
            self.ready_at[t], self.replies[t] = now + self.delays[item], f"ok:{item}"
        await asyncio.sleep(self.wait_s)
        now = asyncio.get_running_loop().time()
        return [self.replies[t] if self.ready_at[t] <= now else None for t in tickets]

    async def collect(self, lane, tickets):
        self.collects.append(list(tickets))
        first = min(self.ready_at[t] for t in tickets)
        await asyncio.sleep(max(0.0, first - asyncio.get_running_loop().time()))
        now = asyncio.get_running_loop().time()
        return {t: self.replies[t] for t in tickets if self.ready_at[t] <= now}


async def test_a_straggler_does_not_wait_behind_the_poll_of_a_hung_order():
    host = TimedHost({"hung": 0.8, "straggler": 0.1})
    b = ShardBatcher(host.submit, 1, lambda s: 0, batch_max=64, linger_us=500, inflight_max=1,
                     queue_max=100, collect=host.collect)
    loop = asyncio.get_running_loop()
    hung = asyncio.ensure_future(b.submit(0, "hung"))
    await asyncio.sleep(0.05)                  # the hung order's poll is out
    t0 = loop.time()
    assert await b.submit(0, "straggler") == "ok:straggler"
    assert loop.time() - t0 < 0.3              # ~0.1 s, not the hung order's 0.8 s
    assert await hung == "ok:hung"
    assert host.collects[:2] == [[host.collects[0][0]], [host.collects[1][0]]]
    assert b.late == 2
