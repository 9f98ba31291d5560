"""RedisNonceStore against a real redis-server on a free loopback port."""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.errors import Unauthenticated, Unavailable
from core.resp import LeanRedis
from gateway.auth import NONCE_TTL_MARGIN_S, RedisNonceStore, authenticate
from gateway.client import signed_headers
from gateway.local import free_port
from tests.integration.stack import own_redis

pytestmark = pytest.mark.integration

APPS = {"app-a": "secret-of-a-123"}
WINDOW_S = 300


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server of this module's own (its tests flush it), started like paycell's."""
    with own_redis(tmp_path_factory.mktemp("nonce-redis")) as server:
        yield server.port


@pytest.fixture
async def redis(redis_port: int) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_port)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["redis-py", "lean"])
async def stores(request: pytest.FixtureRequest, redis_port: int
                 ) -> AsyncIterator[Callable[..., RedisNonceStore]]:
    """Makes RedisNonceStores on one client: redis-py alone (the baselines), or with the
    gateway's lean connection (core/resp.py)."""
    leans: list[LeanRedis] = []

    def make(client: aioredis.Redis, prefix: str = "pc:nonce", port: int = redis_port
             ) -> RedisNonceStore:
        if request.param == "redis-py":
            return RedisNonceStore(client, prefix=prefix)
        leans.append(LeanRedis("127.0.0.1", port, connect_timeout_s=0.5))
        return RedisNonceStore(client, prefix=prefix, fast=leans[-1])
    try:
        yield make
    finally:
        for lean in leans:
            await lean.close()


def headers(now: float, nonce: str = "abcdefghABCDEFGH12345678") -> dict[str, str]:
    return signed_headers("app-a", APPS["app-a"], "GET", "/v1/orders/x", b"", now=now,
                          nonce=nonce)


async def test_claim_is_once_per_app_and_nonce(redis: aioredis.Redis, stores: Any) -> None:
    store = stores(redis)
    assert await store.claim("app-a", "n" * 16, 60) is True
    assert await store.claim("app-a", "n" * 16, 60) is False
    assert await store.claim("app-b", "n" * 16, 60) is True
    assert sorted(await redis.keys("pc:nonce:*")) == [b"pc:nonce:app-a:" + b"n" * 16,
                                                     b"pc:nonce:app-b:" + b"n" * 16]


async def test_ttl_is_set_and_expiry_frees_the_nonce(redis: aioredis.Redis, stores: Any) -> None:
    store = stores(redis, prefix="t")
    assert await store.claim("app-a", "m" * 16, 1) is True
    ttl_ms = await redis.pttl("t:app-a:" + "m" * 16)
    assert 0 < ttl_ms <= 1000
    await asyncio.sleep(1.2)
    assert await store.claim("app-a", "m" * 16, 1) is True


async def test_replay_refused_across_a_gateway_restart(redis: aioredis.Redis,
                                                       redis_port: int, stores: Any) -> None:
    now = time.time()
    first = stores(redis)
    assert await authenticate(headers(now), "GET", "/v1/orders/x", b"", APPS, first, now,
                              WINDOW_S) == "app-a"
    ttl_s = await redis.ttl("pc:nonce:app-a:abcdefghABCDEFGH12345678")
    assert WINDOW_S < ttl_s <= WINDOW_S + NONCE_TTL_MARGIN_S
    restarted = aioredis.Redis(host="127.0.0.1", port=redis_port)  # a new gateway process
    try:
        with pytest.raises(Unauthenticated, match="nonce already used"):
            await authenticate(headers(now), "GET", "/v1/orders/x", b"", APPS,
                               stores(restarted), now + 1, WINDOW_S)
    finally:
        await restarted.aclose()


async def test_forged_request_leaves_no_key(redis: aioredis.Redis, stores: Any) -> None:
    now = time.time()
    forged = headers(now)
    forged["X-Paycell-Signature"] = "f" * 64
    with pytest.raises(Unauthenticated, match="signature"):
        await authenticate(forged, "GET", "/v1/orders/x", b"", APPS, stores(redis), now,
                           WINDOW_S)
    assert await redis.keys("pc:nonce:*") == []


async def test_unreachable_redis_is_unavailable(stores: Any) -> None:
    port = free_port()
    dead = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5,
                          retry=Retry(NoBackoff(), 0))
    store = stores(dead, port=port)
    try:  # three claims in one pipeline: each fails with 503 and a Retry-After
        results = await asyncio.gather(*(store.claim("app-a", f"{i:016d}", 60)
                                         for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, Unavailable) and r.retry_after_s == 1 for r in results), results
    finally:
        await dead.aclose()


async def test_concurrent_claims_share_a_pipeline_and_stay_once_each(
        redis: aioredis.Redis, stores: Any) -> None:
    store = stores(redis)
    nonces = [f"{i:016d}" for i in range(200)]
    # every nonce twice, all in one turn of the loop: exactly one of each pair wins
    results = await asyncio.gather(*(store.claim("app-a", n, 60) for n in nonces + nonces))
    assert results[:200] == [True] * 200 and results[200:] == [False] * 200
    assert len(await redis.keys("pc:nonce:app-a:*")) == 200

