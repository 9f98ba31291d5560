"""A lean Redis client for the hot path: one pipelined connection per process, commands packed
and replies parsed in C (hiredis).

Why not redis-py here: under load, bench.profile put redis-py at a quarter to a third of a shard
actor's time, most of it in its layers (pool checkout and release, retry wrapper, encoder, event
dispatch) rather than in the command; and each command in flight takes a connection of its own,
so commands issued together (two shards' commits, a batch's nonce claims) go out as separate
socket writes, each waking redis-server. Here the commands issued in one turn of the event loop
leave in one write on one connection and are answered in order.

Failure: a lost connection, or a reply overdue by `op_timeout_s`, fails every command in flight
on that connection (redis.exceptions.ConnectionError / TimeoutError, both RedisError) and closes
it; the next command opens a new connection. Whether a failed command ran is unknown, exactly as
with a socket timeout in redis-py: callers must treat it so (the commit script is atomic and its
writer re-reads; a nonce claim is refused with 503 and the client signs again).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

COMMANDS_INFLIGHT_MAX = 65_536   # per connection; past it a command fails at once (RedisError)
_MORE = object()                 # hiredis: not a whole reply yet


class LuaScript:
    """A script sent as EVALSHA, and as EVAL once when the server does not have it cached."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: LeanRedis) -> None:
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        self._owner._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(self, exc)


class LeanRedis:
    def __init__(self, host: str = "127.0.0.1", port: int = 6379, *, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 op_timeout_s: float = 2.0, connect_timeout_s: float = 2.0) -> None:
        assert op_timeout_s > 0 and connect_timeout_s > 0, (op_timeout_s, connect_timeout_s)
        self._addr = (host, port)
        self._db = db
        self._auth: list[str] = []      # AUTH [username] password, when there is a password
        if password:
            self._auth = ([username] if username else []) + [password]
        self._op_timeout_s = op_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._transport: asyncio.Transport | None = None
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader = hiredis.Reader(replyError=ResponseError, notEnoughData=_MORE)
        self._inflight: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._flush_due = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.connects = 0        # observability: connections opened
        self.writes = 0          # observability: socket writes (each may carry many commands)

    @classmethod
    def from_url(cls, url: str, *, op_timeout_s: float, connect_timeout_s: float) -> LeanRedis:
        """redis://[[user]:password@]host[:port][/db] (what RedisSettings.effective_url gives)."""
        u = urlparse(url)
        if u.scheme != "redis":
            raise ValueError(f"lean Redis client: unsupported URL scheme {u.scheme!r}")
        db = int(u.path.lstrip("/") or 0)
        return cls(u.hostname or "127.0.0.1", u.port or 6379, db=db,
                   username=unquote(u.username) if u.username else None,
                   password=unquote(u.password) if u.password else None,
                   op_timeout_s=op_timeout_s, connect_timeout_s=connect_timeout_s)

    # ---- commands
    async def execute(self, *args: Any) -> Any:
        """One command's reply; an error reply raises ResponseError."""
        if self._transport is None:
            await self._connect_once()
        reply = await self._send(hiredis.pack_command(args))
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def evalsha(self, script: LuaScript, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        # Not cached (a restarted or flushed server): nothing ran. EVAL caches it again.
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._transport is not None:
            self._fail_all(RedisConnectionError("client closed"))

    # ---- the connection
    async def _connect_once(self) -> None:
        """Connect, or wait for the connect already under way (one at a time)."""
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._connect())
            # forgotten once done, even if every waiter was cancelled meanwhile (a stale task
            # would answer the next reconnect, hours later, with this one's outcome)
            task.add_done_callback(self._connected)
        await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[None]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()      # retrieved here: the waiters may all be gone

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), *self._addr),
                self._connect_timeout_s)
        except asyncio.TimeoutError:
            raise RedisTimeoutError(f"connect to {self._addr} timed out") from None
        except OSError as e:
            raise RedisConnectionError(f"connect to {self._addr}: {e}") from None
        if transport.is_closing():    # lost before this resumed: its loss went unheard
            raise RedisConnectionError(f"connect to {self._addr}: lost at once")
        self._transport, self._proto = transport, proto
        self._reader = hiredis.Reader(replyError=ResponseError, notEnoughData=_MORE)
        self.connects += 1
        setup: list[tuple[Any, ...]] = ([("AUTH", *self._auth)] if self._auth else []) \
            + ([("SELECT", self._db)] if self._db else [])
        hello = [self._send(hiredis.pack_command(cast(Any, cmd))) for cmd in setup]
        for reply in await asyncio.gather(*hello):
            if isinstance(reply, ResponseError):
                self._fail_all(RedisConnectionError(f"connection setup refused: {reply}"))
                raise reply

    def _send(self, packed: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self._transport is None:
            fut.set_exception(RedisConnectionError("connection lost"))
            return fut
        if len(self._inflight) >= COMMANDS_INFLIGHT_MAX:
            fut.set_exception(RedisError(f"{COMMANDS_INFLIGHT_MAX} commands in flight"))
            return fut
        self._inflight.append((fut, loop.time() + self._op_timeout_s))
        self._out.append(packed)
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._inflight[0][1], self._check_overdue)
        return fut

    def _flush(self) -> None:
        """Everything sent in this turn of the loop, in one write."""
        self._flush_due = False
        out, self._out = self._out, []
        if out and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            self.writes += 1

    def _received(self, proto: _Protocol, data: bytes) -> None:
        if proto is not self._proto:
            return
        self._reader.feed(data)
        inflight = self._inflight
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as e:
                self._fail_all(RedisConnectionError(f"protocol error: {e}"))
                return
            if reply is _MORE:
                return
            if not inflight:
                self._fail_all(RedisConnectionError("a reply nobody asked for"))
                return
            fut, _ = inflight.popleft()
            if not fut.done():
                fut.set_result(reply)

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self._proto:
            self._fail_all(RedisConnectionError(f"connection lost: {exc or 'closed by server'}"))

    def _check_overdue(self) -> None:
        self._watchdog = None
        if not self._inflight:
            return
        due = self._inflight[0][1]
        loop = asyncio.get_running_loop()
        if due <= loop.time():
            self._fail_all(RedisTimeoutError(f"no reply within {self._op_timeout_s} s"))
        else:
            self._watchdog = loop.call_at(due, self._check_overdue)

    def _fail_all(self, exc: RedisError) -> None:
        """Close the connection and fail every command in flight on it."""
        transport, self._transport, self._proto = self._transport, None, None
        if transport is not None:
            transport.abort()
        self._out.clear()
        inflight, self._inflight = self._inflight, collections.deque()
        for fut, _ in inflight:
            if not fut.done():
                fut.set_exception(exc)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
