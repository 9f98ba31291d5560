"""OrderStore against a real redis-server: atomic group commit, the idempotency fence, lookups."""
import asyncio
import time
from dataclasses import replace

import pytest

from actors.factory import redis_client
from actors.store import KeyTaken, OrderStore
from core.order import CreateOrder, Order
from core.states import Fact, Rung

pytestmark = pytest.mark.integration


def order(key: str, oid: str) -> Order:
    cmd = CreateOrder("demo-app", key, "u", 600, "CNY", "gems", "alipay", "barcode", "")
    return replace(Order.new(oid, cmd, time.time()), charge_sent=True)


@pytest.fixture
async def store(stack_settings, stack_processes):
    client = redis_client(stack_settings)
    s = OrderStore(client, "storetest", 7, idempotency_ttl_s=60, commit_batch_max=64)
    await client.delete(s.open_key)
    yield s
    await client.aclose()


async def test_group_commit_writes_all_and_tracks_open_orders(store):
    orders = [order(f"st-{i}", f"P_local_s0_7_{i:020d}") for i in range(100)]
    await asyncio.gather(*(store.commit(o, new=True) for o in orders))
    assert store.writes == 100 and store.commits < 100  # they shared script calls
    assert sorted(await store.open_ids()) == sorted(o.order_id for o in orders)
    paid, _ = orders[0].learn(Fact.PAID, Rung.SYNC, time.time(), channel_trade_no="T")
    await store.commit(paid)
    assert orders[0].order_id not in await store.open_ids()
    assert await store.get(orders[0].order_id) == paid
    found = await store.find_many([("demo-app", "st-1"), ("demo-app", "nope")])
    assert found == {("demo-app", "st-1"): orders[1], ("demo-app", "nope"): None}
    assert await store.find("demo-app", "st-0") == paid


async def test_a_second_order_for_one_key_is_refused_and_nothing_of_its_batch_is_lost(store):
    first = order("fence", "P_local_s0_7_fence000000000000001")
    await store.commit(first, new=True)
    twin = order("fence", "P_local_s0_7_fence000000000000002")
    other = order("fence-other", "P_local_s0_7_fence000000000000003")
    results = await asyncio.gather(store.commit(twin, new=True), store.commit(other, new=True),
                                   return_exceptions=True)
    assert isinstance(results[0], KeyTaken) and results[1] is None
    assert await store.find("demo-app", "fence") == first
    assert await store.get(twin.order_id) is None
    assert await store.find("demo-app", "fence-other") == other
    # the same order committed as new again (a retried write) is not a conflict
    await store.commit(first, new=True)


async def test_more_concurrent_reads_than_pooled_connections_all_succeed(store):
    from actors.factory import REDIS_CONNECTIONS_MAX
    o = order("many-readers", "P_local_s0_7_readers00000000001")
    await store.commit(o, new=True)
    n = REDIS_CONNECTIONS_MAX * 5
    results = await asyncio.gather(*(store.get(o.order_id) for _ in range(n)))
    assert results == [o] * n
