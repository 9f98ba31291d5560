"""Process faults on the real stack, and the loopback-only rule."""
import asyncio
import ipaddress
import os
import secrets

import pytest

from actors.client import ShardClient
from tests.integration.stack import kill_pid, listeners_of_tree
from tests.integration.test_order_path import body, client

pytestmark = pytest.mark.integration

ORDERS = 240
CONCURRENCY = 12
RETRIES_MAX = 40


async def _pay_with_retries(c, b, acked, attempts):
    """A merchant that retries with the same key on 503, as the API tells it to."""
    for _ in range(RETRIES_MAX):
        attempts[b["out_trade_no"]] = attempts.get(b["out_trade_no"], 0) + 1
        status, o = await c.create_order(b)
        if status in (200, 202):
            acked[b["out_trade_no"]] = o
            return
        assert status == 503 and o["code"] in ("unavailable", "overloaded"), (status, o)
        await asyncio.sleep(0.2)
    raise AssertionError(f"{b['out_trade_no']} never acknowledged")


async def test_killing_a_shard_actor_under_load_loses_no_acknowledged_order(stack):
    shards = ShardClient(stack["settings"])
    victim = (await shards.ping(0))["pid"]
    acked: dict[str, dict] = {}
    attempts: dict[str, int] = {}
    run = secrets.token_hex(4)
    bodies = [body(key=f"kill-{run}-{i}") for i in range(ORDERS)]
    sem = asyncio.Semaphore(CONCURRENCY)

    async with client(stack) as c:
        async def one(b):
            async with sem:
                await _pay_with_retries(c, b, acked, attempts)

        async def killer():
            while len(acked) < ORDERS // 3:
                await asyncio.sleep(0.01)
            kill_pid(victim)

        await asyncio.gather(killer(), *(one(b) for b in bodies))
        assert (await shards.ping(0))["pid"] != victim  # Ray restarted it
        # the pings went over host links: the first incarnation's, then the new one's, found
        # through Ray after the old link was lost with its process
        assert shards.links_opened == 2 and shards.link_calls >= 2
        # every acknowledged order is there, under the same id, and settles
        for key, o in acked.items():
            s1, by_key = await c.find_order(key)
            assert s1 == 200 and by_key["order_id"] == o["order_id"], (key, by_key)
        for key, o in acked.items():
            if o["status"] == "PENDING":
                for _ in range(100):
                    _, now = await c.get_order(o["order_id"])
                    if now["status"] != "PENDING":
                        break
                    await asyncio.sleep(0.1)
    assert len(acked) == ORDERS
    assert sum(attempts.values()) > ORDERS, "the kill did not hit any request"
    ledger = (await stack["sandbox"].ledger())["trades"]
    ids = {o["order_id"] for o in acked.values()}
    # (only this test's trades: the reconcile test double-charges its own on purpose)
    assert all(ledger[i]["charges"] <= 1 and ledger[i]["pay_calls"] <= 1 for i in ids if i in ledger)


def test_no_paycell_process_listens_beyond_loopback(stack):
    found = listeners_of_tree(os.getpid())
    ports = {port for _, port, _ in found}
    s = stack["settings"]
    assert {s.redis.port, s.sandbox.port, s.gateway.port} <= ports, found
    assert len(found) >= 6  # redis, sandbox, gateway and Ray's own servers
    for ip, port, name in found:
        addr = ipaddress.ip_address(ip)
        mapped = getattr(addr, "ipv4_mapped", None)
        assert addr.is_loopback or (mapped is not None and mapped.is_loopback), (ip, port, name)
