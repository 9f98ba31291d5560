"""Merchant events on real parts: a merchant receiver on loopback (an aiohttp server), the real
stack (gateway -> shard actor -> sandbox) for orders and refunds, and a real redis-server under
the store-level cases (refused targets, dead letters, a notifier that starts after the commit)."""
from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator

import orjson
import pytest
import ray
from aiohttp import web

from actors.factory import redis_client
from actors.merchant_notify import MerchantNotifier
from actors.names import host_count, host_of, shard_host_name
from actors.store import OrderStore
from core.order import CreateOrder, Order
from core.settings import MerchantNotifySettings
from core.states import Fact, Rung
from gateway.client import PaycellClient, verify_event
from gateway.local import free_port
from tests.integration.stack import wait_until

pytestmark = pytest.mark.integration

SECRET = "demo-secret"


@dataclass
class Receiver:
    """A merchant's notify_url: /ok/<tag> answers 200, /fail<N>/<tag> 500 to the first N
    requests for each event id, then 200; /always500/<tag> always 500."""
    base: str
    got: dict[str, list[tuple[dict[str, str], bytes]]] = field(
        default_factory=lambda: defaultdict(list))

    def events(self, tag: str) -> list[dict[str, Any]]:
        return [verify_event(SECRET, h, b) for h, b in self.got[tag]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}")
    seen: dict[str, int] = defaultdict(int)

    async def handle(request: web.Request) -> web.Response:
        mode, tag = request.match_info["mode"], request.match_info["tag"]
        body = await request.read()
        rec.got[tag].append((dict(request.headers), body))
        eid = request.headers.get("X-Paycell-Event-Id", "")
        seen[eid] += 1
        if mode == "always500" or (mode.startswith("fail") and seen[eid] <= int(mode[4:])):
            return web.Response(status=500, text="try later")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{mode}/{tag}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield rec
    finally:
        await runner.cleanup()


def pay_body(notify_url: str) -> dict[str, Any]:
    return {"out_trade_no": f"mn-{secrets.token_hex(6)}", "user_id": "u-1", "amount": 1200,
            "currency": "CNY", "subject": "gems", "channel": "alipay",
            "payment": {"type": "barcode", "auth_code": "28763443825664394"},
            "notify_url": notify_url}


async def shard_stats(stack: Any) -> list[dict[str, Any]]:
    s = stack["settings"]
    hosts = host_count(s.orders)
    actors = [ray.get_actor(shard_host_name(s.orders.set_name, host_of(i, hosts)),
                            namespace=s.ray.namespace) for i in range(s.orders.shard_count)]
    return list(await asyncio.gather(*(a.call.remote(i, "stats") for i, a in enumerate(actors))))


# ---------------------------------------------------------------- the real stack
async def test_paid_order_event_is_signed_and_delivered_once(stack, receiver) -> None:
    tag = secrets.token_hex(4)
    async with PaycellClient(stack["url"], "demo-app", SECRET) as c:
        status, order = await c.create_order(pay_body(f"{receiver.base}/ok/{tag}"))
    assert (status, order["status"]) == (200, "SUCCEEDED"), order
    await wait_until(lambda: _has(receiver, tag, 1), 10)
    await asyncio.sleep(1.0)                       # nothing more comes
    [event] = receiver.events(tag)               # verify_event checked the signature
    assert event["event_id"] == f"ev_{order['order_id']}_succeeded"
    assert event["type"] == "order.succeeded"
    assert event["data"]["order_id"] == order["order_id"]
    assert event["data"]["status"] == "SUCCEEDED" and event["data"]["amount"] == 1200
    headers, _ = receiver.got[tag][0]
    assert headers["X-Paycell-Event-Id"] == event["event_id"]
    assert abs(int(headers["X-Paycell-Timestamp"]) - time.time()) < 30
    stats = await shard_stats(stack)
    assert sum(s["events_delivered"] for s in stats) >= 1


async def test_failing_receiver_gets_the_same_event_after_retries(stack, receiver) -> None:
    tag = secrets.token_hex(4)
    async with PaycellClient(stack["url"], "demo-app", SECRET) as c:
        status, order = await c.create_order(pay_body(f"{receiver.base}/fail2/{tag}"))
    assert status == 200, order
    started = time.monotonic()
    await wait_until(lambda: _has(receiver, tag, 3), 10)
    await asyncio.sleep(1.2)                       # past the next retry: no 4th request
    events = receiver.events(tag)
    assert len(events) == 3                        # 500, 500, 200
    assert {e["event_id"] for e in events} == {f"ev_{order['order_id']}_succeeded"}
    bodies = {b for _, b in receiver.got[tag]}
    assert len(bodies) == 1                        # the same event each time, re-signed
    stamps = [int(h["X-Paycell-Timestamp"]) for h, _ in receiver.got[tag]]
    assert stamps == sorted(stamps)
    assert time.monotonic() - started >= 0.8       # waited 0.3 s + 0.6 s between attempts


async def test_refund_event(stack, receiver) -> None:
    tag = secrets.token_hex(4)
    async with PaycellClient(stack["url"], "demo-app", SECRET) as c:
        status, order = await c.create_order(pay_body(f"{receiver.base}/ok/{tag}"))
        assert status == 200, order
        code, refund = await c.create_refund(order["order_id"],
                                             {"out_refund_no": "r1", "amount": 500})
        assert code in (200, 202), refund
        await wait_until(lambda: _has(receiver, tag, 2), 15)
    by_type = {e["type"]: e for e in receiver.events(tag)}
    assert set(by_type) == {"order.succeeded", "refund.succeeded"}
    r = by_type["refund.succeeded"]
    assert r["event_id"] == f"ev_{refund['refund_id']}_succeeded"
    assert r["data"]["refund_id"] == refund["refund_id"] and r["data"]["amount"] == 500
    assert r["data"]["status"] == "SUCCEEDED" and r["data"]["order_id"] == order["order_id"]


async def _has(rec: Receiver, tag: str, n: int) -> bool:
    return len(rec.got[tag]) >= n


# ---------------------------------------------------------------- store-level, real Redis
def settings(**changes: Any) -> MerchantNotifySettings:
    return replace(MerchantNotifySettings(retry_schedule_ms="100,200", poll_ms=50), **changes)


@pytest.fixture
async def store(stack_settings, stack_processes) -> AsyncIterator[OrderStore]:
    client = redis_client(stack_settings)
    s = OrderStore(client, f"mn{secrets.token_hex(3)}", 3, idempotency_ttl_s=60,
                   commit_batch_max=64, event_keep_s=3600)
    yield s
    await client.aclose()


async def paid_in_store(store: OrderStore, notify_url: str) -> Order:
    cmd = CreateOrder("demo-app", f"mn-{secrets.token_hex(6)}", "u", 600, "CNY", "gems",
                      "alipay", "barcode", "", notify_url=notify_url)
    oid = f"P_local_mn_3_{secrets.token_hex(8)}"
    o = replace(Order.new(oid, cmd, time.time()), charge_sent=True)
    await store.commit(o, new=True)
    paid, _ = o.learn(Fact.PAID, Rung.SYNC, time.time(), channel_trade_no="T1")
    await store.commit(paid)
    return paid


async def run_notifier(n: MerchantNotifier, seconds: float) -> None:
    n.start()
    await asyncio.sleep(seconds)
    await n.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_private_target_refused_when_not_allowed(store, receiver, host) -> None:
    tag = secrets.token_hex(4)
    url = f"{receiver.base}/ok/{tag}".replace("127.0.0.1", host)
    paid = await paid_in_store(store, url)
    n = MerchantNotifier(settings(allow_private_targets=False), 3, store=store,
                         app_secrets={"demo-app": SECRET})
    await run_notifier(n, 0.8)
    assert receiver.got[tag] == []                       # nothing reached the receiver
    event = await store.get_event(f"ev_{paid.order_id}_succeeded")
    assert event is not None and event["state"] == "refused" and event["attempts"] == "1"
    assert "loopback" in event["last_error"]
    assert n.counters["events_refused"] == 1 and n.counters["event_attempts_failed"] == 0
    assert await store.event_counts() == (0, 1)          # not due again; kept as dead


async def test_dead_after_the_schedule_and_no_duplicate_enqueue(store, receiver) -> None:
    tag = secrets.token_hex(4)
    paid = await paid_in_store(store, f"{receiver.base}/always500/{tag}")
    await store.commit(replace(paid, conflicts=1))       # a repeated final write: no 2nd event
    n = MerchantNotifier(settings(), 3, store=store, app_secrets={"demo-app": SECRET})
    await run_notifier(n, 1.2)
    assert len(receiver.got[tag]) == 3                   # 1 + len(schedule) attempts
    event = await store.get_event(f"ev_{paid.order_id}_succeeded")
    assert event is not None and (event["state"], event["attempts"]) == ("dead", "3")
    assert event["last_error"] == "HTTP 500"
    assert n.counters["events_dead"] == 1 and await store.event_counts() == (0, 1)


async def test_event_committed_before_any_notifier_runs_is_delivered_later(store,
                                                                           receiver) -> None:
    """The event is written with the final state: a shard that crashed right after the commit
    loses nothing; the next incarnation's notifier delivers it."""
    tag = secrets.token_hex(4)
    paid = await paid_in_store(store, f"{receiver.base}/ok/{tag}")
    assert await store.event_counts() == (1, 0)
    n = MerchantNotifier(settings(), 3, store=store, app_secrets={"demo-app": SECRET})
    await run_notifier(n, 0.5)
    [event] = receiver.events(tag)
    assert event["event_id"] == f"ev_{paid.order_id}_succeeded"
    assert event["data"] == paid.to_api()
    stored = await store.get_event(event["event_id"])
    assert stored is not None and stored["state"] == "delivered"
    await store.commit(paid)                              # the final write again (lost reply)
    assert await store.event_counts() == (0, 0)           # nothing enqueued a second time


async def test_metrics_count_due_and_dead_events_per_shard(stack, receiver) -> None:
    import aiohttp
    s = stack["settings"]
    client = redis_client(s)
    store = OrderStore(client, s.orders.set_name, 1, idempotency_ttl_s=60, commit_batch_max=8,
                       event_keep_s=3600)
    try:
        before = await store.event_counts()
        await client.zadd(store.dead_events_key, {"ev_metrics_probe": time.time()})
        async with aiohttp.ClientSession() as http:
            async with http.get(stack["url"] + "/metrics") as r:
                text = await r.text()
        assert f'paycell_merchant_events_dead{{shard="1"}} {float(before[1] + 1)}' in text
        assert 'paycell_merchant_events_due{shard="0"}' in text
    finally:
        await client.zrem(store.dead_events_key, "ev_metrics_probe")
        await client.aclose()


# ---------------------------------------------------------------- operators: dead events
OPERATOR = ("local-operator", "local-operator-secret")


async def _dead(ops: PaycellClient, limit: int = 1000) -> dict[str, Any]:
    status, body, _ = await ops.request("GET", f"/v1/ops/events/dead?limit={limit}", None)
    assert status == 200, body
    return body


async def _replay(ops: PaycellClient, event_id: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = await ops.request("POST", f"/v1/ops/events/{event_id}/replay", None)
    return status, body


async def test_an_operator_replays_a_dead_event_once_the_merchant_answers(stack,
                                                                         receiver) -> None:
    """The merchant fails every attempt of the schedule (4 with the tests' 3 retries): the
    event is dead and listed. The merchant is fixed; the operator replays it: delivered under
    the same event id, gone from the list, and a second replay changes nothing."""
    tag = secrets.token_hex(4)
    async with PaycellClient(stack["url"], "demo-app", SECRET) as c:
        status, order = await c.create_order(pay_body(f"{receiver.base}/fail4/{tag}"))
    assert status == 200, order
    eid = f"ev_{order['order_id']}_succeeded"
    shard = int(order["order_id"].split("_")[3])
    async with PaycellClient(stack["url"], *OPERATOR) as ops:
        async def listed() -> dict[str, Any] | None:
            return next((e for e in (await _dead(ops))["events"] if e["event_id"] == eid),
                        None)
        dead = await wait_until(listed, 15)
        assert len(receiver.got[tag]) == 4                   # all of the schedule, all 500
        assert dead == {**dead, "state": "dead", "attempts": 4, "last_error": "HTTP 500",
                        "type": "order.succeeded", "app_id": "demo-app", "replays": 0,
                        "shard": shard, "url": f"{receiver.base}/fail4/{tag}"}
        assert (await _dead(ops))["kept"] >= 1
        assert (await _dead(ops, limit=1))["count"] == 1

        status, replayed = await _replay(ops, eid)
        assert (status, replayed["replayed"], replayed["state"],
                replayed["previous_state"]) == (200, True, "pending", "dead"), replayed
        status, again = await _replay(ops, eid)               # due, or delivered by now
        assert status == 200 and again["replayed"] is False, again
        assert again["state"] in ("pending", "delivered"), again

        await wait_until(lambda: _has(receiver, tag, 5), 10)  # the 5th request: 200
        events = receiver.events(tag)
        assert {e["event_id"] for e in events} == {eid}       # the same event id throughout
        assert len({b for _, b in receiver.got[tag]}) == 1    # and the same event
        assert await wait_until(lambda: _gone(ops, eid), 10)
        status, done = await _replay(ops, eid)
        assert (status, done["replayed"], done["state"]) == (200, False, "delivered"), done
        assert "already delivered" in done["detail"]
        await asyncio.sleep(1.0)
        assert len(receiver.got[tag]) == 5                    # nothing sent again

        # bad input: a clear 4xx, and nothing changes
        for bad, code in ((f"ev_{order['order_id']}_failed", 404),    # no such event
                          ("ev_nothing_here", 400), (eid.replace("ev_", "ew_"), 400)):
            status, body = await _replay(ops, bad)
            assert status == code, (bad, body)
        status, body, _ = await ops.request("GET", "/v1/ops/events/dead?limit=0", None)
        assert (status, body["code"]) == (400, "invalid_request")
    async with PaycellClient(stack["url"], "demo-app", SECRET) as merchant:
        status, body = await _replay(merchant, eid)
        assert status == 401, body
    assert len(receiver.got[tag]) == 5


async def _gone(ops: PaycellClient, eid: str) -> bool:
    return all(e["event_id"] != eid for e in (await _dead(ops))["events"])


async def test_a_replay_of_a_refused_event_and_of_one_still_due(store, receiver) -> None:
    """Store level, real Redis: a refused event goes back on the schedule like a dead one (its
    record kept longer, its replays counted); one still due is left alone."""
    tag = secrets.token_hex(4)
    paid = await paid_in_store(store, f"{receiver.base}/ok/{tag}")
    eid = f"ev_{paid.order_id}_succeeded"
    assert await store.replay_event(eid, time.time()) == "pending"     # due: left alone
    assert await store.event_counts() == (1, 0)
    await store.event_settled(eid, "refused", 1, "loopback", time.time(), 10)
    assert [e for e, _ in await store.dead_events(10)] == [eid]
    now = time.time()
    assert await store.replay_event(eid, now) == "refused"
    event = await store.get_event(eid)
    assert event is not None
    assert (event["state"], event["attempts"], event["replays"]) == ("pending", "0", "1")
    assert await store.event_counts() == (1, 0) and await store.dead_events(10) == []
    assert await store.take_due_events(now + 1, 10, 30) == [eid]       # due now
    assert await store.replay_event(f"ev_{paid.order_id}_closed", now) == ""
