"""core.resp.LeanRedis against a real redis-server of this module's own: pipelining, error
replies, the NOSCRIPT fallback, a SIGKILLed and restarted server, a stopped (SIGSTOP) server."""
from __future__ import annotations

import asyncio
import signal
from typing import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.resp import LeanRedis, LuaScript
from gateway.local import free_port
from tests.integration.stack import OwnRedis, own_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    with own_redis(tmp_path_factory.mktemp("resp-redis")) as s:
        yield s


@pytest.fixture
async def lean(server: OwnRedis) -> AsyncIterator[LeanRedis]:
    client = LeanRedis("127.0.0.1", server.port, op_timeout_s=0.5)
    await client.execute("FLUSHALL")
    try:
        yield client
    finally:
        await client.close()


async def test_commands_issued_together_share_one_write_and_answer_in_order(lean: LeanRedis):
    await lean.execute("PING")
    writes = lean.writes
    await asyncio.gather(*(lean.execute("SET", f"k{i}", i) for i in range(200)))
    got = await asyncio.gather(*(lean.execute("GET", f"k{i}") for i in range(200)))
    assert got == [str(i).encode() for i in range(200)]
    assert lean.writes - writes == 2            # one write per turn of the loop, not per command
    assert await lean.execute("MGET", "k7", "nope", "k9") == [b"7", None, b"9"]
    assert await lean.execute("SET", "k7", "x", "NX") is None   # the nonce claim's reply
    assert lean.connects == 1


async def test_an_error_reply_raises_and_leaves_the_connection_usable(lean: LeanRedis):
    await lean.execute("SET", "s", "text")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await lean.execute("LPUSH", "s", "x")
    assert await lean.execute("GET", "s") == b"text"
    assert lean.connects == 1


async def test_a_script_the_server_lost_is_sent_whole_once(lean: LeanRedis):
    script = LuaScript("redis.call('INCR', KEYS[1]); return {ARGV[1], redis.call('GET', KEYS[1])}")
    assert await lean.execute("SCRIPT", "FLUSH") == b"OK"
    assert await lean.evalsha(script, ["n"], ["a"]) == [b"a", b"1"]   # NOSCRIPT, then EVAL
    assert await lean.execute("SCRIPT", "EXISTS", script.sha) == [1]
    assert await lean.evalsha(script, ["n"], ["b"]) == [b"b", b"2"]   # ran once each time


async def test_a_killed_server_fails_what_was_in_flight_and_the_next_command_reconnects(
        server: OwnRedis, lean: LeanRedis):
    await lean.execute("SET", "before", "1")
    server.signal(signal.SIGSTOP)          # the next command is surely in flight at the kill
    pending = asyncio.ensure_future(lean.execute("GET", "before"))
    await asyncio.sleep(0.05)
    server.kill_and_restart()              # (SIGKILL ends a stopped process too)
    with pytest.raises(RedisConnectionError):
        await pending
    assert await lean.execute("PING") == b"PONG"
    assert lean.connects == 2


async def test_a_stopped_server_times_out_and_then_answers_again(server: OwnRedis, lean: LeanRedis):
    await lean.execute("PING")
    server.signal(signal.SIGSTOP)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(RedisTimeoutError):
            await asyncio.gather(lean.execute("PING"), lean.execute("PING"))
        assert 0.45 <= loop.time() - t0 < 1.5
    finally:
        server.signal(signal.SIGCONT)
    assert await lean.execute("PING") == b"PONG"
    assert lean.connects == 2                # the overdue connection was closed, not reused


async def test_a_url_with_a_database_selects_it(server: OwnRedis):
    lean = LeanRedis.from_url(f"redis://127.0.0.1:{server.port}/3", op_timeout_s=1,
                              connect_timeout_s=1)
    other = aioredis.Redis(host="127.0.0.1", port=server.port, db=3)
    try:
        await lean.execute("SET", "in-db-3", "yes")
        assert await other.get("in-db-3") == b"yes"
    finally:
        await lean.close()
        await other.aclose()


async def test_nothing_listening_is_a_connection_error():
    lean = LeanRedis("127.0.0.1", free_port(), connect_timeout_s=1)
    with pytest.raises(RedisConnectionError):
        await lean.execute("PING")


async def test_a_connect_whose_waiters_all_gave_up_is_not_the_answer_to_the_next(
        server: OwnRedis):
    """The first command's caller is cancelled while Redis is down, so nobody waits for that
    connect's failure. Once Redis is back, the next command connects afresh."""
    lean = LeanRedis("127.0.0.1", server.port, op_timeout_s=1, connect_timeout_s=1)
    server.kill()
    try:
        first = asyncio.ensure_future(lean.execute("PING"))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.sleep(0.2)                     # that connect has failed by now
    finally:
        server.start_again()
    try:
        assert await lean.execute("PING") == b"PONG"
    finally:
        await lean.close()
