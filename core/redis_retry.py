"""Idempotent Redis commands that survive a redis-server restart.

When redis-server restarts, every connection a client's pool holds was closed by the old
process, and redis-py finds out only when it uses one: the first command on it fails with
ConnectionError ("Connection closed by server"). A caller that is idle across the restart (the
reconciler, until an operator asks) would answer its first request 503. For a command that is
safe to run twice (a read; a write of a whole value), `retry_once_on_reset` drops the pool's
idle connections (they are as stale as the one that failed) and runs the command once more, on
a fresh connection. A second failure, a timeout (the server may be slow, not gone) and every
other error are the caller's to map (to Unavailable). Commands that are not idempotent (the
commit script, a nonce claim with SET NX) must not come through here: their first attempt may
have run.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError

T = TypeVar("T")


async def retry_once_on_reset(client: Any, command: Callable[[], Awaitable[T]]) -> T:
    """`command()` (a fresh awaitable per call), run again once after a ConnectionError."""
    try:
        return await command()
    except RedisConnectionError:
        await client.connection_pool.disconnect(inuse_connections=False)
        return await command()
