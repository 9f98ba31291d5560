"""OrderStore against a real redis-server: atomic group commit, the idempotency fence, lookups,
and the commit script's guard on a PENDING order's one-way fields."""
import asyncio
import time
from dataclasses import replace

import pytest

from actors.factory import redis_client
from actors.store import KeyTaken, OrderStore, RefundBase, RefundRefused
from core.errors import Unavailable
from core.order import CreateOrder, Order
from core.refund import CreateRefund, Refund, reserve
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
    assert await store.find("demo-app", "st-1") == orders[1]
    assert await store.find("demo-app", "nope") is None
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


# ---- one-way fields of a PENDING order (the commit script's regresses())
async def test_once_cancel_sent_is_stored_no_write_takes_it_back(store):
    """A late write computed before the shard fenced the order (its reply timed out, or from a
    stale incarnation) is refused, whether it keeps the order PENDING or makes it final; the
    cancel's own answer, which carries cancel_sent, lands."""
    o = order("fence-cancel", "P_local_s0_7_cancelsent000000001")
    await store.commit(o, new=True)
    fenced = replace(o, cancel_sent=True, updated_at=o.updated_at + 1)
    await store.commit(fenced)
    late_waiting = replace(o, channel_trade_no="T-late")            # no cancel_sent
    late_paid, _ = o.learn(Fact.PAID, Rung.NOTIFY, time.time(), channel_trade_no="T-late")
    for late in (late_waiting, late_paid):
        with pytest.raises(Unavailable):
            await store.commit(late)
        assert await store.get(o.order_id) == fenced
        assert o.order_id in await store.open_ids()
    closed, _ = fenced.learn(Fact.CLOSED, Rung.QUERY, time.time(), failure_code="closed_unpaid")
    await store.commit(closed)
    assert await store.get(o.order_id) == closed
    assert o.order_id not in await store.open_ids()


async def test_once_charge_sent_is_stored_no_write_clears_it(store):
    o = order("fence-charge", "P_local_s0_7_chargesent000000001")
    await store.commit(replace(o, charge_sent=False), new=True)    # committed before charging
    await store.commit(o)                                          # charge_sent: True
    with pytest.raises(Unavailable):
        await store.commit(replace(o, charge_sent=False, channel_trade_no="T1"))
    assert (await store.get(o.order_id)).charge_sent is True


async def test_a_failover_is_never_undone_by_a_write_from_before_it(store):
    first = replace(order("fence-route", "P_local_s0_7_failover0000000001"), routed=True)
    await store.commit(first, new=True)
    moved = replace(first, channel="wechatpay", tried_channels="alipay")
    await store.commit(moved)
    declined, _ = first.learn(Fact.DECLINED, Rung.SYNC, time.time(), failure_code="NO_MONEY")
    for late in (declined,                                          # the first channel's answer
                 replace(moved, channel="alipay"),                  # channel back, tried kept
                 replace(moved, tried_channels="wechatpay", channel="stripe")):  # not extended
        with pytest.raises(Unavailable):
            await store.commit(late)
        assert await store.get(first.order_id) == moved
    again = replace(moved, channel="stripe", tried_channels="alipay,wechatpay")
    await store.commit(again)                                       # the next failover
    assert await store.get(first.order_id) == again
    with pytest.raises(Unavailable):                                # the one before it, late
        await store.commit(replace(moved, channel_trade_no="T1"))
    paid, _ = again.learn(Fact.PAID, Rung.SYNC, time.time())
    await store.commit(paid)
    assert await store.get(first.order_id) == paid


async def test_a_refused_late_write_does_not_hold_back_its_batch(store):
    a = order("fence-batch-a", "P_local_s0_7_batch000000000000a1")
    b = order("fence-batch-b", "P_local_s0_7_batch000000000000b1")
    await asyncio.gather(store.commit(a, new=True), store.commit(b, new=True))
    await store.commit(replace(a, cancel_sent=True))
    b_paid, _ = b.learn(Fact.PAID, Rung.SYNC, time.time())
    results = await asyncio.gather(store.commit(replace(a, channel_trade_no="T")),
                                   store.commit(b_paid), return_exceptions=True)
    assert isinstance(results[0], Unavailable) and results[1] is None
    assert await store.get(b.order_id) == b_paid
    assert (await store.get(a.order_id)).cancel_sent is True


async def test_a_refund_write_carrying_an_order_record_from_before_the_fence_is_refused(store):
    """A refund write carries its order's record; it may not take a one-way field back either
    (an order paid as the answer of its cancel keeps cancel_sent)."""
    o = order("fence-refund", "P_local_s0_7_refundfence00000001")
    await store.commit(o, new=True)
    fenced = replace(o, cancel_sent=True)
    await store.commit(fenced)
    paid, _ = fenced.learn(Fact.PAID, Rung.QUERY, time.time())
    await store.commit(paid)
    cmd = CreateRefund("demo-app", o.order_id, "r1", 100)
    r = Refund.new("R_local_s0_7_refundfence00000001", cmd, paid, time.time())
    stale = replace(paid, cancel_sent=False)
    with pytest.raises(RefundRefused) as e:
        await store.commit_refund(reserve(stale, 100), r, base=RefundBase(0, 0), new=True)
    assert e.value.reason == "stale"
    assert await store.refunds_of(o.order_id) == []
    await store.commit_refund(reserve(paid, 100), r, base=RefundBase(0, 0), new=True)
    assert (await store.get(o.order_id)).refund_reserved == 100
