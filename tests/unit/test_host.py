"""actors.host.ShardHost: several OrderShards in one process, one batch call and one reply board
for all of them (no Ray; the shards run on in-memory stores and a scripted channel)."""
import asyncio

import pytest

from actors.host import ShardHost
from actors.names import host_count, host_of, shard_host_name, shards_of
from actors.shard import OrderShard, reply_board
from channels.base import Notification
from core.errors import NotFound
from core.ids import parse_order_id
from core.states import Fact
from tests.unit.test_shard import MemStore, ScriptedChannel, cmd, settings


def host(shard_ids=(0, 2), charge_delay_s=0.0):
    s = settings()
    board = reply_board(1000, "host 0")
    stores = {i: MemStore() for i in shard_ids}
    channels = {i: ScriptedChannel(charge_delay_s) for i in shard_ids}
    shards = {i: OrderShard(s, i, store=stores[i], channels=channels[i], replies=board)
              for i in shard_ids}
    return ShardHost(0, shards, board), stores, channels


def test_shards_are_dealt_round_robin_over_at_most_shard_count_hosts():
    s = settings(shard_count=8, shard_actors=3)
    assert host_count(s.orders) == 3
    assert [shards_of(h, s.orders) for h in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert all(host_of(i, 3) == h for h in range(3) for i in shards_of(h, s.orders))
    assert host_count(settings(shard_count=1, shard_actors=4).orders) == 1
    assert shard_host_name("s0", 1) == "paycell.s0.shards.1"


async def test_one_batch_for_two_shards_answers_in_its_own_order():
    h, stores, channels = host()
    keys = [f"k{i}" for i in range(6)]
    shards = [0, 2, 2, 0, 2, 0]
    replies = await h.submit(shards, [f"t{i}" for i in range(6)], [cmd(k) for k in keys], None)
    assert [r["order"]["out_trade_no"] for r in replies] == keys
    assert all(r["order"]["status"] == "SUCCEEDED" for r in replies)
    # each order lives in the shard its slot named: its id, its store, its channel calls
    assert [parse_order_id(r["order"]["order_id"]).shard for r in replies] == shards
    assert sorted(o.out_trade_no for o in stores[0].records.values()) == ["k0", "k3", "k5"]
    assert sorted(o.out_trade_no for o in stores[2].records.values()) == ["k1", "k2", "k4"]
    assert (len(channels[0].charges), len(channels[2].charges)) == (3, 3)


async def test_late_replies_of_both_shards_come_by_one_long_poll():
    h, _, _ = host(charge_delay_s=0.15)
    first = await h.submit([0, 2], ["a", "b"], [cmd("a"), cmd("b")], 0.01)
    assert first == [None, None]                 # not ready within the batch's wait
    got: dict = {}
    for _ in range(20):
        got.update(await h.await_replies([t for t in ("a", "b") if t not in got], 0.5))
        if len(got) == 2:
            break
    assert {t: r["order"]["out_trade_no"] for t, r in got.items()} == {"a": "a", "b": "b"}


async def test_calls_name_their_shard_and_a_foreign_shard_is_refused():
    h, _, _ = host()
    [reply] = await h.submit([2], ["t"], [cmd("x")], None)
    order_id = reply["order"]["order_id"]
    got = await h.call(2, "get", "demo-app", order_id)
    assert got["order_id"] == order_id
    assert await h.call(0, "find", "demo-app", "x") is None   # shard 0 never had it
    with pytest.raises(NotFound):
        await h.call(1, "get", "demo-app", order_id)          # shard 1 runs elsewhere
    with pytest.raises(ValueError):
        await h.call(2, "_remember", order_id)                # not a shard method
    info = await h.ping()
    assert (info["shards"], info["open"]) == ([0, 2], 0)


async def test_notifications_for_two_shards_in_one_call():
    h, _, channels = host(charge_delay_s=5)
    pending = asyncio.ensure_future(h.submit([0, 2], ["a", "b"], [cmd("a"), cmd("b")], None))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if channels[0].charges and channels[2].charges:
            break
    oids = [channels[0].charges[0], channels[2].charges[0]]
    notes = [Notification(oid, Fact.PAID, f"T{i}", 600, "CNY", f"n{i}", "TRADE_SUCCESS")
             for i, oid in enumerate(oids)]
    assert await h.notify_many([2, 0], notes[::-1]) == [True, True]
    replies = await pending
    assert [(r["order"]["status"], r["order"]["resolved_by"]) for r in replies] == \
        [("SUCCEEDED", "notify")] * 2
