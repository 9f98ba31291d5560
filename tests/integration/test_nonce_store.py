"""RedisNonceStore against a real redis-server on a free loopback port."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from typing import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.errors import Unauthenticated, Unavailable
from gateway.auth import NONCE_TTL_MARGIN_S, RedisNonceStore, authenticate
from gateway.client import signed_headers
from gateway.local import free_port

pytestmark = pytest.mark.integration

REDIS_SERVER = "/usr/bin/redis-server"
APPS = {"app-a": "secret-of-a-123"}
WINDOW_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "redis-server exited at start"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"redis-server did not listen on {port} within {timeout_s} s")


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
async def redis(redis_port: int) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_port)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


def headers(now: float, nonce: str = "abcdefghABCDEFGH12345678") -> dict[str, str]:
    return signed_headers("app-a", APPS["app-a"], "GET", "/v1/orders/x", b"", now=now,
                          nonce=nonce)


async def test_claim_is_once_per_app_and_nonce(redis: aioredis.Redis) -> None:
    store = RedisNonceStore(redis)
    assert await store.claim("app-a", "n" * 16, 60) is True
    assert await store.claim("app-a", "n" * 16, 60) is False
    assert await store.claim("app-b", "n" * 16, 60) is True
    assert sorted(await redis.keys("pc:nonce:*")) == [b"pc:nonce:app-a:" + b"n" * 16,
                                                     b"pc:nonce:app-b:" + b"n" * 16]


async def test_ttl_is_set_and_expiry_frees_the_nonce(redis: aioredis.Redis) -> None:
    store = RedisNonceStore(redis, prefix="t")
    assert await store.claim("app-a", "m" * 16, 1) is True
    ttl_ms = await redis.pttl("t:app-a:" + "m" * 16)
    assert 0 < ttl_ms <= 1000
    await asyncio.sleep(1.2)
    assert await store.claim("app-a", "m" * 16, 1) is True


async def test_replay_refused_across_a_gateway_restart(redis: aioredis.Redis,
                                                       redis_port: int) -> None:
    now = time.time()
    first = RedisNonceStore(redis)
    assert await authenticate(headers(now), "GET", "/v1/orders/x", b"", APPS, first, now,
                              WINDOW_S) == "app-a"
    ttl_s = await redis.ttl("pc:nonce:app-a:abcdefghABCDEFGH12345678")
    assert WINDOW_S < ttl_s <= WINDOW_S + NONCE_TTL_MARGIN_S
    restarted = aioredis.Redis(host="127.0.0.1", port=redis_port)  # a new gateway process
    try:
        with pytest.raises(Unauthenticated, match="nonce already used"):
            await authenticate(headers(now), "GET", "/v1/orders/x", b"", APPS,
                               RedisNonceStore(restarted), now + 1, WINDOW_S)
    finally:
        await restarted.aclose()


async def test_forged_request_leaves_no_key(redis: aioredis.Redis) -> None:
    now = time.time()
    forged = headers(now)
    forged["X-Paycell-Signature"] = "f" * 64
    with pytest.raises(Unauthenticated, match="signature"):
        await authenticate(forged, "GET", "/v1/orders/x", b"", APPS, RedisNonceStore(redis), now,
                           WINDOW_S)
    assert await redis.keys("pc:nonce:*") == []


async def test_unreachable_redis_is_unavailable() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5,
                          retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(Unavailable) as err:
            await RedisNonceStore(dead).claim("app-a", "n" * 16, 60)
        assert err.value.retry_after_s == 1
    finally:
        await dead.aclose()


async def test_concurrent_claims_share_a_pipeline_and_stay_once_each(
        redis: aioredis.Redis) -> None:
    store = RedisNonceStore(redis)
    nonces = [f"{i:016d}" for i in range(200)]
    # every nonce twice, all in one turn of the loop: exactly one of each pair wins
    results = await asyncio.gather(*(store.claim("app-a", n, 60) for n in nonces + nonces))
    assert results[:200] == [True] * 200 and results[200:] == [False] * 200
    assert len(await redis.keys("pc:nonce:app-a:*")) == 200


async def test_claims_fail_with_unavailable_when_redis_is_gone(redis_port: int) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    store = RedisNonceStore(dead)
    results = await asyncio.gather(*(store.claim("app-a", f"{i:016d}", 60) for i in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results), results
    await dead.aclose()
