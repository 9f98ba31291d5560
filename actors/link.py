"""A direct link from a caller (the gateway, the reconciler) to a shard host: the hot calls go
over one TCP connection of their own instead of through Ray.

Why: at a few hundred orders/s each order is about one batch call, and a Ray actor call costs
more CPU than the work it carries, on both sides (Ray's receiving and I/O threads, its Python
part). A frame on a socket costs a pickle and a write. `bench.run --rate 300` with
PAYCELL_GATEWAY__HOST_LINKS=true and =false measures the difference (README, issue 5). Ray still owns the hosts: it places, supervises and restarts them, and it is how a caller
finds a host's link (`open_link`, a Ray call, once per host incarnation).

The wire: frames of a 4-byte big-endian length and a pickle. The first frame a caller sends is
the host's token (32 random bytes, handed out only through Ray); nothing is unpickled before it
matched, and anything else closes the connection. Then each request is (id, method, args), each
answer (id, True, result) or (id, False, "ErrorType: message"). Only LINK_METHODS are served.

Failure is Ray's, made explicit: a lost connection fails every call in flight on it (the host
died or restarts); the caller answers 503 and the client retries with the same key, which the
shard makes idempotent. The next call asks Ray for the link again, so it reaches the new
incarnation. A host gone without a word (its node lost or cut off: no FIN) is noticed by the
caller: a call that times out with not a byte heard from the host since it was sent drops the
link (ShardClient._call_host), and so does a write buffer the host stopped draining.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import pickle
import secrets
from typing import Any, cast

FRAME_MAX_BYTES = 64 * 1024 * 1024   # one request or answer, at most (a batch of replies)
TOKEN_BYTES = 32
HANDSHAKE_TIMEOUT_S = 5.0            # a connection must show the token within this
WRITE_BUFFER_MAX_BYTES = 64 * 1024 * 1024   # unsent to a host that reads nothing: the link is dead
LINK_METHODS = frozenset({"submit", "await_replies", "notify_many", "call", "ping"})
_HEADER = 4


class LinkLost(Exception):
    """The connection to the host is gone (or was refused); the call may or may not have run."""


class RemoteError(Exception):
    """The host's method raised; the message is "ErrorType: message"."""


def _frame(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > FRAME_MAX_BYTES:
        raise ValueError(f"frame of {len(payload)} bytes over {FRAME_MAX_BYTES}")
    return len(payload).to_bytes(_HEADER, "big") + payload


class _Frames:
    """Splits a byte stream into frames' payloads; the first at most `first_max` bytes."""

    def __init__(self, first_max: int = FRAME_MAX_BYTES) -> None:
        self._buf = bytearray()
        self._max = first_max

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= _HEADER:
            n = int.from_bytes(self._buf[:_HEADER], "big")
            if n > self._max:
                raise ValueError(f"frame of {n} bytes over {self._max}")
            self._max = FRAME_MAX_BYTES
            if len(self._buf) < _HEADER + n:
                break
            out.append(bytes(self._buf[_HEADER:_HEADER + n]))
            del self._buf[:_HEADER + n]
        return out


# ---- the host's side ------------------------------------------------------------------------

class LinkServer:
    """Serves LINK_METHODS of `target` (a ShardHost) on `address`, on the running loop."""

    def __init__(self, target: Any, address: str) -> None:
        self._target = target
        self._address = address
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._server: asyncio.base_events.Server | None = None
        self._starting: asyncio.Task[None] | None = None
        self._sides: set[_ServerSide] = set()
        self.port = 0
        self.refused = 0          # observability: connections closed for a bad token or frame

    async def start(self) -> tuple[str, int, bytes]:
        """(address, port, token), the server started on first use (once, however many callers
        ask at the same time: an async actor serves its `open_link` calls concurrently)."""
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._listen())
        await asyncio.shield(self._starting)
        return self._address, self.port, self.token

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerSide(self), self._address, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stop listening and drop every connection (their calls in flight fail: LinkLost)."""
        if self._server is not None:
            self._server.close()
        for side in list(self._sides):
            side.abort()

    async def _run(self, side: _ServerSide, req_id: int, method: str, args: tuple[Any, ...]
                   ) -> None:
        try:
            if method not in LINK_METHODS:
                raise ValueError(f"not a link method: {method}")
            result = await getattr(self._target, method)(*args)
            answer = _frame((req_id, True, result))
        except Exception as e:  # the caller maps any failure to 503, as it does Ray's
            answer = _frame((req_id, False, f"{type(e).__name__}: {e}"[:500]))
        side.send(answer)


class _ServerSide(asyncio.Protocol):
    def __init__(self, server: LinkServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._frames = _Frames(first_max=TOKEN_BYTES)   # the token, before anything else
        self._trusted = False
        self._handshake: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)   # (uvloop's is no subclass)
        self._server._sides.add(self)
        # the listener is on the node's address: a connection that does not show the token in
        # time is dropped, so nobody holds connections open without it
        # (cancelled once the token is in)
        self._handshake = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._refuse)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._frames.feed(data)
        except ValueError:
            self._refuse()
            return
        for payload in payloads:
            if not self._trusted:
                if not hmac.compare_digest(payload, self._server.token):
                    self._refuse()
                    return
                self._trusted = True
                if self._handshake is not None:
                    self._handshake.cancel()
                continue
            try:
                req_id, method, args = pickle.loads(payload)
            except Exception:  # a trusted caller's bad frame: a bug there; drop the connection
                self._refuse()
                return
            task = asyncio.get_running_loop().create_task(
                self._server._run(self, req_id, method, args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _refuse(self) -> None:
        self._server.refused += 1
        if self._transport is not None:
            self._transport.abort()

    def send(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._handshake is not None:
            self._handshake.cancel()
        self._server._sides.discard(self)


# ---- the caller's side ----------------------------------------------------------------------

class HostLink(asyncio.Protocol):
    """One caller's connection to one host incarnation."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._frames = _Frames()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self.heard_at = 0.0       # loop time of the last bytes from the host (silent_since)

    @classmethod
    async def connect(cls, address: str, port: int, token: bytes, timeout_s: float) -> HostLink:
        loop = asyncio.get_running_loop()
        try:
            _, link = await asyncio.wait_for(loop.create_connection(cls, address, port), timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            raise LinkLost(f"connect to {address}:{port}: {type(e).__name__}") from None
        link._write(len(token).to_bytes(_HEADER, "big") + token)
        return link

    def call(self, method: str, *args: Any) -> asyncio.Future[Any]:
        """The answer's future: its result, or LinkLost / RemoteError."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(LinkLost("link closed"))
            return fut
        req_id = next(self._ids)
        frame = _frame((req_id, method, args))     # raises (unpicklable, too big): no future left
        self._calls[req_id] = fut
        fut.add_done_callback(lambda _: self._calls.pop(req_id, None))  # (also when abandoned)
        self._write(frame)
        return fut

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._lost("link closed")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)   # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._frames.feed(data)
        except ValueError:
            self.close()
            return
        self.heard_at = asyncio.get_running_loop().time()
        for payload in payloads:
            try:
                req_id, ok, value = pickle.loads(payload)
            except Exception:  # a host's answer we cannot read: no call on it can be trusted
                self.close()
                return
            fut = self._calls.pop(req_id, None)
            if fut is None or fut.done():
                continue            # its caller gave up (timeout)
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(RemoteError(value))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._lost(f"connection lost ({type(exc).__name__ if exc else 'closed by the host'})")

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            self._lost("connection lost")
            return
        if self._transport.get_write_buffer_size() > WRITE_BUFFER_MAX_BYTES:
            self.close()          # the host stopped reading (hung, or gone without a word)
            return
        self._transport.write(data)

    def silent_since(self, t: float) -> bool:
        """Nothing heard from the host since loop time `t` (a call sent then timed out)."""
        return self.heard_at < t

    def _lost(self, why: str) -> None:
        self.closed = True
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(LinkLost(why))
