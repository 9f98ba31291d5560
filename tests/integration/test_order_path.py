"""The real path of an order: HTTP -> gateway -> shard actor (its Alipay connector) -> HTTP ->
sandbox."""
import asyncio
import secrets

import pytest

from gateway.client import PaycellClient

pytestmark = pytest.mark.integration


def body(amount=600, key=None, **extra):
    b = {"out_trade_no": key or f"it-{secrets.token_hex(6)}", "user_id": "u-42",
         "amount": amount, "currency": "CNY", "subject": "60 gems", "channel": "alipay",
         "payment": {"type": "barcode", "auth_code": "28763443825664394"}}
    b.update(extra)
    return b


def client(stack):
    return PaycellClient(stack["url"], "demo-app", "demo-secret")


async def order_when(c, order_id, status, timeout_s=10.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        code, o = await c.get_order(order_id)
        assert code == 200, o
        if o["status"] == status:
            return o
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{order_id}: still {o['status']}, wanted {status}")
        await asyncio.sleep(0.1)


async def test_paid_end_to_end(stack):
    b = body()
    async with client(stack) as c:
        status, o = await c.create_order(b)
        assert status == 200, o
        assert (o["status"], o["resolved_by"], o["amount"], o["currency"]) == \
            ("SUCCEEDED", "sync", 600, "CNY")
        assert o["channel_trade_no"] and o["app_id"] == "demo-app"
        s2, by_id = await c.get_order(o["order_id"])
        s3, by_key = await c.find_order(b["out_trade_no"])
    assert s2 == s3 == 200 and by_id == by_key == o
    trade = (await stack["sandbox"].ledger())["trades"][o["order_id"]]
    assert trade["status"] == "PAID" and trade["charges"] == 1


async def test_twenty_concurrent_requests_with_one_key_make_one_charge(stack):
    b = body()
    async with client(stack) as c:
        results = await asyncio.gather(*(c.create_order(b) for _ in range(20)))
    statuses = {s for s, _ in results}
    ids = {o["order_id"] for _, o in results}
    assert statuses == {200} and len(ids) == 1
    assert all(o == results[0][1] for _, o in results)
    trade = (await stack["sandbox"].ledger())["trades"][ids.pop()]
    assert trade["pay_calls"] == 1 and trade["charges"] == 1


async def test_same_key_different_body_is_409_and_changes_nothing(stack):
    b = body()
    async with client(stack) as c:
        s1, o1 = await c.create_order(b)
        s2, problem = await c.create_order({**b, "amount": 700})
        s3, again = await c.find_order(b["out_trade_no"])
    assert (s1, s2, s3) == (200, 409, 200)
    assert problem["code"] == "idempotency_conflict" and problem["status"] == 409
    assert again == o1 and again["amount"] == 600


async def test_declined_is_200_failed(stack):
    async with client(stack) as c:
        s, o = await c.create_order(body(amount=1001))
    assert s == 200 and o["status"] == "FAILED" and o["resolved_by"] == "sync"
    assert o["failure"]["code"] == "ACQ.BUYER_BALANCE_NOT_ENOUGH"


async def test_hang_past_deadline_answers_202_within_the_deadline(stack):
    deadline_s = stack["settings"].orders.sync_deadline_ms / 1000
    async with client(stack) as c:
        t0 = asyncio.get_running_loop().time()
        s, o = await c.create_order(body(amount=1004))
        elapsed = asyncio.get_running_loop().time() - t0
        assert s == 202 and o["status"] == "PENDING" and o["resolved_by"] is None
        assert deadline_s <= elapsed < deadline_s + 0.3, elapsed
        final = await order_when(c, o["order_id"], "SUCCEEDED")
    assert final["resolved_by"] in ("sync", "notify")
    trade = (await stack["sandbox"].ledger())["trades"][o["order_id"]]
    assert trade["pay_calls"] == 1 and trade["charges"] == 1


async def test_lost_response_and_lost_notification_is_resolved_by_query(stack):
    async with client(stack) as c:
        s, o = await c.create_order(body(amount=1006))
        assert s == 202 and o["status"] == "PENDING"
        final = await order_when(c, o["order_id"], "SUCCEEDED")
    assert final["resolved_by"] == "query" and final["channel_trade_no"]
    trade = (await stack["sandbox"].ledger())["trades"][o["order_id"]]
    assert trade["pay_calls"] == 1 and trade["charges"] == 1 and trade["query_calls"] >= 1


async def test_lost_response_is_resolved_by_notification(stack):
    async with client(stack) as c:
        s, o = await c.create_order(body(amount=1005))
        assert s in (200, 202)
        final = await order_when(c, o["order_id"], "SUCCEEDED")
    assert final["resolved_by"] == "notify"
    trade = (await stack["sandbox"].ledger())["trades"][o["order_id"]]
    assert trade["charges"] == 1 and trade["notifies_acked"] >= 1


@pytest.mark.parametrize("amount", [1003, 1007], ids=["payer-never-confirms",
                                                    "unknown-error-nothing-committed"])
async def test_unpaid_at_window_end_is_cancelled_and_closed_never_charged(stack, amount):
    window_s = stack["settings"].orders.async_window_ms / 1000
    async with client(stack) as c:
        s, o = await c.create_order(body(amount=amount))
        assert s == 202
        final = await order_when(c, o["order_id"], "CLOSED", timeout_s=window_s + 6)
    assert final["resolved_by"] == "query"
    trade = (await stack["sandbox"].ledger())["trades"][o["order_id"]]
    assert trade["status"] == "CLOSED" and trade["charges"] == 0
    assert trade["pay_calls"] == 1 and trade["cancel_calls"] >= 1 and trade["query_calls"] >= 2
