"""Refunds through the real stack: gateway -> shard actor -> the channel's sandbox over HTTP, and
its refund notification back through /v1/notify/<channel>. The sandbox ledgers are the money
truth: `refund_list` per trade holds one entry per merchant refund number (paycell's refund id)."""
from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import replace
from typing import Any, AsyncIterator

import aiohttp
import jsonschema
import orjson
import pytest

from actors.client import ShardClient
from actors.factory import redis_client
from actors.store import OrderStore, RefundBase, RefundRefused
from core.errors import Unavailable
from core.ids import parse_order_id
from core.order import CreateOrder, Order
from core.refund import CreateRefund, Refund, RefundStatus, reserve, settle
from core.states import Fact, OrderStatus, Rung
from gateway.client import PaycellClient
from gateway.openapi import json_schema
from tests.integration.stack import kill_pid

pytestmark = pytest.mark.integration

PAYMENTS = {"alipay": ("CNY", {"type": "barcode", "auth_code": "28763443825664394"}),
            "stripe": ("USD", {"type": "card", "token": "pm_card_visa"})}
CHANNELS = sorted(PAYMENTS)


def client(stack: Any) -> PaycellClient:
    return PaycellClient(stack["url"], "demo-app", "demo-secret")


async def sandbox(stack: Any, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, stack["settings"].sandbox.url() + path, json=body) as r:
            assert r.status == 200, (path, r.status, await r.text())
            return await r.json()


async def trade(stack: Any, channel: str, order_id: str) -> dict[str, Any]:
    ledger = await sandbox(stack, "GET", f"/{channel}/_sandbox/ledger")
    return ledger["trades"][order_id]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def knobs(stack: Any, channel: str, **changes: Any) -> AsyncIterator[None]:
    before = await sandbox(stack, "GET", f"/{channel}/_sandbox/knobs")
    await sandbox(stack, "POST", f"/{channel}/_sandbox/knobs", changes)
    try:
        yield
    finally:
        await sandbox(stack, "POST", f"/{channel}/_sandbox/knobs",
                      {k: before[k] for k in changes})


async def paid(c: PaycellClient, channel: str, amount: int = 1200) -> dict[str, Any]:
    currency, payment = PAYMENTS[channel]
    status, o = await c.create_order({
        "out_trade_no": f"rf-{secrets.token_hex(6)}", "user_id": "u-9", "amount": amount,
        "currency": currency, "subject": "gems", "channel": channel, "payment": payment})
    assert (status, o["status"]) == (200, "SUCCEEDED"), o
    return o


async def refund_when(c: PaycellClient, order_id: str, refund_id: str, status: str,
                      timeout_s: float = 12.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        code, listed = await c.list_refunds(order_id)
        assert code == 200, listed
        r = next(r for r in listed["refunds"] if r["refund_id"] == refund_id)
        if r["status"] == status:
            return r  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"{refund_id} still {r['status']}, wanted {status}")
        await asyncio.sleep(0.1)


async def openapi(stack: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(stack["url"] + "/v1/openapi.json") as r:
        return orjson.loads(await r.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("channel", CHANNELS)
async def test_partial_refunds_up_to_the_paid_amount_match_the_ledger(stack: Any,
                                                                      channel: str) -> None:
    doc = await openapi(stack)
    refund_schema, list_schema = json_schema(doc, "Refund"), json_schema(doc, "RefundList")
    problem_schema = json_schema(doc, "Problem")
    async with client(stack) as c:
        o = await paid(c, channel, 1200)
        oid = o["order_id"]
        s1, a = await c.create_refund(oid, {"out_refund_no": "part-1", "amount": 500,
                                            "reason": "one item missing"})
        s2, b = await c.create_refund(oid, {"out_refund_no": "part-2", "amount": 700})
        assert (s1, a["status"], a["resolved_by"], a["amount"]) == (200, "SUCCEEDED", "sync", 500)
        assert (s2, b["status"], b["currency"]) == (200, "SUCCEEDED", o["currency"])
        for r in (a, b):
            jsonschema.validate(r, refund_schema)
            assert r["refund_id"].startswith("R_") and len(r["refund_id"]) <= 32
            assert r["order_id"] == oid
            # Stripe names its refund (re_...); alipay.trade.refund answers no refund number
            assert bool(r["channel_refund_no"]) is (channel == "stripe")
        s3, over = await c.create_refund(oid, {"out_refund_no": "part-3", "amount": 1})
        assert (s3, over["code"]) == (422, "refund_exceeds_paid"), over
        jsonschema.validate(over, problem_schema)
        _, order = await c.get_order(oid)
        assert order["refunded_amount"] == 1200
        code, listed = await c.list_refunds(oid)
        assert code == 200
        jsonschema.validate(listed, list_schema)
        assert [(r["out_refund_no"], r["status"]) for r in listed["refunds"]] == [
            ("part-1", "SUCCEEDED"), ("part-2", "SUCCEEDED")]
    t = await trade(stack, channel, oid)
    assert t["refunded_amount"] == 1200 and t["refund_calls"] == 2 and t["charges"] == 1
    assert {k: (v["amount"], v["state"]) for k, v in t["refund_list"].items()} == {
        a["refund_id"]: (500, "SUCCESS"), b["refund_id"]: (700, "SUCCESS")}


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_full_refund_and_its_idempotent_replay(stack: Any, channel: str) -> None:
    async with client(stack) as c:
        oid = (await paid(c, channel, 600))["order_id"]
        body = {"out_refund_no": "full", "amount": 600}
        s1, r1 = await c.create_refund(oid, body)
        s2, r2 = await c.create_refund(oid, body)
        s3, conflict = await c.create_refund(oid, {**body, "amount": 500})
    assert (s1, s2, r1["status"]) == (200, 200, "SUCCEEDED") and r1 == r2
    assert (s3, conflict["code"]) == (409, "idempotency_conflict")
    t = await trade(stack, channel, oid)
    assert (t["refunded_amount"], t["refund_calls"], list(t["refund_list"])) == (
        600, 1, [r1["refund_id"]])


async def test_an_over_refund_is_refused_and_the_ledger_is_unchanged(stack: Any) -> None:
    async with client(stack) as c:
        oid = (await paid(c, "alipay", 600))["order_id"]
        before = await trade(stack, "alipay", oid)
        status, p = await c.create_refund(oid, {"out_refund_no": "too-much", "amount": 601})
        assert (status, p["code"], p["status"]) == (422, "refund_exceeds_paid", 422)
        assert "600" in p["detail"]
        _, listed = await c.list_refunds(oid)
        _, order = await c.get_order(oid)
    assert listed["refunds"] == [] and order["refunded_amount"] == 0
    assert await trade(stack, "alipay", oid) == before


async def test_bad_refunds_are_4xx_and_change_nothing(stack: Any) -> None:
    async with client(stack) as c:
        oid = (await paid(c, "alipay", 600))["order_id"]
        status, p = await c.create_refund(oid, {"out_refund_no": "bad key!", "amount": 0})
        assert (status, p["code"]) == (400, "invalid_request")
        assert {e["field"] for e in p["errors"]} == {"out_refund_no", "amount"}
        assert (await c.create_refund("P_local_s0_1_zzzzzzzzzzzzzzzzzzz",
                                      {"out_refund_no": "x", "amount": 1}))[0] == 404
        assert (await c.list_refunds("not-an-order"))[0] == 404
        _, declined = await c.create_order({
            "out_trade_no": f"rf-{secrets.token_hex(6)}", "user_id": "u", "amount": 1001,
            "currency": "CNY", "subject": "gems", "channel": "alipay",
            "payment": PAYMENTS["alipay"][1]})
        assert declined["status"] == "FAILED"
        status, p = await c.create_refund(declined["order_id"],
                                          {"out_refund_no": "x", "amount": 1})
        assert (status, p["code"]) == (409, "order_not_refundable")
    async with PaycellClient(stack["url"], "demo-app", "demo-secret") as c:
        _, listed = await c.list_refunds(oid)
    assert listed["refunds"] == [] and (await trade(stack, "alipay", oid))["refund_calls"] == 0


async def test_twenty_concurrent_identical_refunds_make_one_refund_at_the_channel(
        stack: Any) -> None:
    async with client(stack) as c:
        oid = (await paid(c, "alipay", 900))["order_id"]
        body = {"out_refund_no": "same", "amount": 300}
        results = await asyncio.gather(*(c.create_refund(oid, body) for _ in range(20)))
    assert {s for s, _ in results} == {200}
    assert all(r == results[0][1] for _, r in results)
    t = await trade(stack, "alipay", oid)
    assert (t["refund_calls"], len(t["refund_list"]), t["refunded_amount"]) == (1, 1, 300)


async def test_different_refunds_racing_for_the_rest_are_not_all_accepted(stack: Any) -> None:
    async with client(stack) as c:
        oid = (await paid(c, "alipay", 1000))["order_id"]
        results = await asyncio.gather(*(
            c.create_refund(oid, {"out_refund_no": f"race-{i}", "amount": 400})
            for i in range(6)))
    ok = [r for s, r in results if s == 200]
    refused = [r for s, r in results if s != 200]
    assert len(ok) == 2 and {r["code"] for r in refused} == {"refund_exceeds_paid"}
    t = await trade(stack, "alipay", oid)
    assert (t["refunded_amount"], len(t["refund_list"])) == (800, 2)


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_processing_refund_is_202_then_succeeds(stack: Any, channel: str) -> None:
    async with client(stack) as c:
        oid = (await paid(c, channel, 800))["order_id"]
        async with knobs(stack, channel, refund_delay_ms=1500):
            status, r = await c.create_refund(oid, {"out_refund_no": "slow", "amount": 800})
            assert (status, r["status"], r["resolved_by"]) == (202, "PENDING", None), r
            done = await refund_when(c, oid, r["refund_id"], "SUCCEEDED")
    assert done["resolved_by"] in ("notify", "query")
    t = await trade(stack, channel, oid)
    assert (t["refund_calls"], t["refunded_amount"]) == (1, 800)
    assert t["refund_list"][r["refund_id"]]["state"] == "SUCCESS"


async def test_the_channels_refund_notification_resolves_a_pending_refund(stack: Any) -> None:
    async with client(stack) as c:
        oid = (await paid(c, "alipay", 700))["order_id"]
        # finished at the channel 0.2 s later and notified at once; the first query would be
        # at 1 s (orders.refund_query_first_delay_ms in tests/integration/stack.py)
        async with knobs(stack, "alipay", refund_delay_ms=200, notify_delay_ms=0):
            status, r = await c.create_refund(oid, {"out_refund_no": "n", "amount": 700})
            assert status == 202
            done = await refund_when(c, oid, r["refund_id"], "SUCCEEDED")
    assert done["resolved_by"] == "notify"
    assert (await trade(stack, "alipay", oid))["refund_calls"] == 1


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_refund_whose_answer_is_lost_is_resolved_by_query(stack: Any,
                                                                  channel: str) -> None:
    async with client(stack) as c:
        oid = (await paid(c, channel, 900))["order_id"]
        async with knobs(stack, channel, error_rate=1.0):   # a system error: nothing done
            status, r = await c.create_refund(oid, {"out_refund_no": "lost", "amount": 400})
        assert (status, r["status"]) == (202, "PENDING"), r
        done = await refund_when(c, oid, r["refund_id"], "SUCCEEDED")
        assert done["resolved_by"] == "query"
        _, order = await c.get_order(oid)
    assert order["refunded_amount"] == 400
    t = await trade(stack, channel, oid)
    assert list(t["refund_list"]) == [r["refund_id"]] and t["refunded_amount"] == 400


async def test_a_late_refund_answer_is_202_then_counts_as_sync(stack: Any) -> None:
    async with client(stack) as c:
        oid = (await paid(c, "alipay", 500))["order_id"]
        async with knobs(stack, "alipay", latency_ms=1500):
            t0 = time.monotonic()
            status, r = await c.create_refund(oid, {"out_refund_no": "late", "amount": 500})
            waited = time.monotonic() - t0
            assert (status, r["status"]) == (202, "PENDING") and 0.7 < waited < 1.4, waited
            done = await refund_when(c, oid, r["refund_id"], "SUCCEEDED")
    assert done["resolved_by"] == "sync"
    assert (await trade(stack, "alipay", oid))["refund_calls"] == 1


async def test_a_killed_shard_rebuilds_its_open_refunds_and_settles_them(stack: Any) -> None:
    shards = ShardClient(stack["settings"])
    async with client(stack) as c:
        oid = (await paid(c, "alipay", 1100))["order_id"]
        shard = parse_order_id(oid).shard
        async with knobs(stack, "alipay", refund_delay_ms=2500, notify_drop_rate=1.0):
            status, r = await c.create_refund(oid, {"out_refund_no": "k", "amount": 1100})
            assert status == 202
            victim = (await shards.ping(shard))["pid"]
            kill_pid(victim)
            for _ in range(100):   # Ray restarts it; the gateway's keepalive wakes it up
                with contextlib.suppress(Exception):
                    if (await shards.ping(shard))["pid"] != victim:
                        break
                await asyncio.sleep(0.1)
            done = await refund_when(c, oid, r["refund_id"], "SUCCEEDED", timeout_s=20)
    assert done["resolved_by"] == "query"
    t = await trade(stack, "alipay", oid)
    # The new incarnation does not know the channel accepted it, and Alipay's query shows an
    # unfinished refund as none: it may resend, under the same refund id. One refund, still.
    assert list(t["refund_list"]) == [r["refund_id"]] and t["refunded_amount"] == 1100
    assert 1 <= t["refund_calls"] <= 1 + stack["settings"].orders.refund_resends_max


EVERY_CHANNEL = {
    "alipay": ("CNY", {"type": "barcode", "auth_code": "28763443825664394"}),
    "wechatpay": ("CNY", {"type": "barcode", "auth_code": "134567890123456789"}),
    "qpay": ("CNY", {"type": "barcode", "auth_code": "910123456789012345"}),
    "stripe": ("USD", {"type": "card", "token": "pm_card_visa"}),
    "paypal": ("USD", {"type": "card", "token": "8kk8451t"}),
    "unionpay": ("CNY", {"type": "card", "token": "6226090000000048"}),
}


@pytest.mark.parametrize("channel", sorted(EVERY_CHANNEL))
async def test_every_channel_refunds_in_part_then_in_full(stack: Any, channel: str) -> None:
    currency, payment = EVERY_CHANNEL[channel]
    async with client(stack) as c:
        status, o = await c.create_order({
            "out_trade_no": f"rf-{secrets.token_hex(6)}", "user_id": "u-9", "amount": 1000,
            "currency": currency, "subject": "gems", "channel": channel, "payment": payment})
        assert (status, o["status"]) == (200, "SUCCEEDED"), o
        results = [await c.create_refund(o["order_id"], {"out_refund_no": no, "amount": amount})
                   for no, amount in (("p1", 300), ("p2", 700))]
        finals = [r if r["status"] != "PENDING" else
                  await refund_when(c, o["order_id"], r["refund_id"], "SUCCEEDED")
                  for _, r in results]
        assert [r["status"] for r in finals] == ["SUCCEEDED", "SUCCEEDED"], finals
        assert (await c.get_order(o["order_id"]))[1]["refunded_amount"] == 1000
        over = await c.create_refund(o["order_id"], {"out_refund_no": "p3", "amount": 1})
        assert over[0] == 422


# ---- the commit script against a real redis-server -------------------------------------------

@pytest.fixture
async def store(stack_settings: Any, stack_processes: Any) -> AsyncIterator[OrderStore]:
    client_ = redis_client(stack_settings)
    s = OrderStore(client_, "refundtest", 5, idempotency_ttl_s=60, commit_batch_max=64)
    await client_.delete(s.open_key, s.open_refunds_key)
    yield s
    await client_.aclose()


async def stored_paid_order(s: OrderStore, amount: int = 600) -> Order:
    key = f"k-{secrets.token_hex(4)}"
    cmd = CreateOrder("demo-app", key, "u", amount, "CNY", "gems", "alipay", "barcode")
    o = Order.new(f"P_local_s0_5_{secrets.token_hex(8)}", cmd, time.time())
    await s.commit(o, new=True)
    done, _ = o.learn(Fact.PAID, Rung.SYNC, time.time())
    await s.commit(done)
    return done


def new_refund(order: Order, no: str, amount: int) -> Refund:
    cmd = CreateRefund("demo-app", order.order_id, no, amount)
    return Refund.new(f"R_local_s0_5_{secrets.token_hex(8)}", cmd, order, time.time())


def base(order: Order) -> RefundBase:
    return RefundBase(order.refund_reserved, order.refunded_amount)


async def test_store_commits_a_refund_with_its_order_and_tracks_open_refunds(store) -> None:
    o = await stored_paid_order(store)
    r = new_refund(o, "a", 200)
    held = reserve(o, 200)
    await store.commit_refund(held, r, base=base(o), new=True)
    assert await store.open_refund_ids() == [r.refund_id]
    assert await store.find_refund(o.order_id, "a") == r
    assert (await store.get(o.order_id)).refund_reserved == 200
    ok, _ = r.learn(RefundStatus.SUCCEEDED, Rung.SYNC, time.time())
    settled = settle(held, ok, time.time())
    await store.commit_refund(settled, ok, base=base(held))
    assert await store.open_refund_ids() == []
    assert await store.refunds_of(o.order_id) == [ok]
    stored = await store.get(o.order_id)
    assert (stored.refund_reserved, stored.refunded_amount) == (200, 200)


async def test_store_refuses_refund_writes_that_break_the_rules_and_writes_nothing(store) -> None:
    o = await stored_paid_order(store, 600)
    first = new_refund(o, "a", 400)
    held = reserve(o, 400)
    await store.commit_refund(held, first, base=base(o), new=True)
    cases = [
        # another refund under the same out_refund_no
        ("taken", reserve(held, 100), new_refund(o, "a", 100), base(held), True),
        # computed from an order that did not know of the first refund
        ("stale", reserve(o, 100), new_refund(o, "b", 100), base(o), True),
        # more than the order's amount, whatever the shard believed
        ("exceeds", replace(held, refund_reserved=601), new_refund(o, "c", 201), base(held),
         True),
        # settling a refund that is not PENDING (never written)
        ("stale", held, replace(new_refund(o, "d", 1), status=RefundStatus.FAILED), base(held),
         False),
    ]
    for reason, order, refund, b, new in cases:
        with pytest.raises(RefundRefused) as e:
            await store.commit_refund(order, refund, base=b, new=new)
        assert e.value.reason == reason
    paid = await stored_paid_order(store)
    # a plain write may not take a final order back to PENDING (the guard on final orders)
    with pytest.raises(Unavailable):
        await store.commit(replace(paid, status=OrderStatus.PENDING))
    assert (await store.get(paid.order_id)).status is OrderStatus.SUCCEEDED
    cmd = CreateOrder("demo-app", f"k-{secrets.token_hex(4)}", "u", 600, "CNY", "gems",
                      "alipay", "barcode")
    not_paid = Order.new(f"P_local_s0_5_{secrets.token_hex(8)}", cmd, time.time())
    await store.commit(not_paid, new=True)
    with pytest.raises(RefundRefused) as e:
        await store.commit_refund(reserve(not_paid, 1), new_refund(not_paid, "x", 1),
                                  base=base(not_paid), new=True)
    assert e.value.reason == "state"
    assert [r.refund_id for r in await store.refunds_of(o.order_id)] == [first.refund_id]
    assert (await store.get(o.order_id)).refund_reserved == 400
    assert await store.refunds_of(not_paid.order_id) == []


async def test_a_refused_refund_write_does_not_hold_back_its_batch(store) -> None:
    o = await stored_paid_order(store, 600)
    other = await stored_paid_order(store, 300)
    good = new_refund(other, "g", 300)
    bad = new_refund(o, "b", 100)
    results = await asyncio.gather(
        store.commit_refund(reserve(other, 300), good, base=base(other), new=True),
        store.commit_refund(reserve(o, 100), bad, base=RefundBase(50, 0), new=True),
        return_exceptions=True)
    assert results[0] is None and isinstance(results[1], RefundRefused)
    assert await store.refunds_of(other.order_id) == [good]
    assert await store.refunds_of(o.order_id) == []
