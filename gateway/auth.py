"""Merchant request authentication (API.md, "Authentication of merchant apps").

A request carries four ``X-Paycell-*`` headers; the signature is the lowercase hex HMAC-SHA256,
under the app's secret, of a five-line signing string. The checks run from cheapest to dearest, and
the nonce is claimed only after the signature is proven, so a forged request cannot burn a nonce.
Nonces live in Redis with a TTL a little longer than the clock window: a replay is refused within
the window even across a gateway restart.
"""
from __future__ import annotations

import asyncio

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from typing import Callable, Mapping, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.errors import Overloaded, Unauthenticated, Unavailable
from core.resp import LeanRedis

HEADER_APP = "X-Paycell-App"
HEADER_TIMESTAMP = "X-Paycell-Timestamp"
HEADER_NONCE = "X-Paycell-Nonce"
HEADER_SIGNATURE = "X-Paycell-Signature"

NONCE_TTL_MARGIN_S = 10  # a nonce outlives the clock window by this much

# Header formats. Each pattern bounds the length, so no header is looked at beyond its bound.
_HEADER_FORMATS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    (HEADER_APP, re.compile(r"[!-~]{1,128}"), "1-128 printable ASCII characters"),
    (HEADER_TIMESTAMP, re.compile(r"[0-9]{1,12}"), "Unix time in whole seconds"),
    (HEADER_NONCE, re.compile(r"[A-Za-z0-9]{16,64}"), "16-64 of [A-Za-z0-9]"),
    (HEADER_SIGNATURE, re.compile(r"[0-9a-f]{64}"), "64 lowercase hex digits"),
)

EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def signing_string(method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """``METHOD\\nPATH_WITH_QUERY\\nTIMESTAMP\\nNONCE\\nSHA256_HEX_OF_BODY\\n`` as UTF-8 bytes.

    The method is taken as sent (HTTP methods are case-sensitive; clients send upper case).
    """
    body_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256
    return f"{method}\n{path_qs}\n{timestamp}\n{nonce}\n{body_hash}\n".encode()


def sign(secret: str, method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of the signing string under the app secret."""
    message = signing_string(method, path_qs, timestamp, nonce, body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class NonceStore(Protocol):
    async def claim(self, app_id: str, nonce: str, ttl_s: int) -> bool:
        """Record the nonce for ``ttl_s`` seconds; True when it was not seen before."""
        ...


class RedisNonceStore:
    """Nonces as Redis keys ``<prefix>:<app_id>:<nonce>``, claimed with ``SET NX EX``.

    The nonce has no ``:`` in it, so the key is unambiguous whatever the app id holds.
    With `fast` (core/resp.py, the gateway's) each claim is one command on its pipelined
    connection, which sends the claims of one turn of the loop in one write; without it, the
    claims of one turn share a redis-py pipeline.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "pc:nonce",
                 fast: LeanRedis | None = None) -> None:
        self._redis = redis
        self._fast = fast
        self._prefix = prefix
        self._queue: list[tuple[str, int, asyncio.Future[bool]]] = []
        self._flush_due = False
        self._tasks: set[asyncio.Task[None]] = set()

    def key(self, app_id: str, nonce: str) -> str:
        return f"{self._prefix}:{app_id}:{nonce}"

    async def claim(self, app_id: str, nonce: str, ttl_s: int) -> bool:
        """Claims made in one turn of the event loop share one pipeline (one round trip)."""
        assert ttl_s > 0, ttl_s
        if self._fast is not None:
            try:
                return await self._fast.execute("SET", self.key(app_id, nonce), b"1", "NX",
                                                "EX", ttl_s) is not None
            except (RedisError, OSError) as e:
                raise Unavailable(f"nonce store unreachable: {type(e).__name__}",
                                  retry_after_s=1) from None
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((self.key(app_id, nonce), ttl_s, fut))
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._flush_due = False
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, int, asyncio.Future[bool]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key, ttl_s, _ in batch:
            pipe.set(key, b"1", nx=True, ex=ttl_s)
        try:
            results = await pipe.execute()
        except (RedisError, OSError) as e:
            err = Unavailable(f"nonce store unreachable: {type(e).__name__}", retry_after_s=1)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        for (_, _, fut), created in zip(batch, results):
            if not fut.done():
                fut.set_result(bool(created))


class MemoryNonceStore:
    """A bounded in-process nonce store for unit tests and single-process tools.

    At the bound it first drops expired entries; if all are live it refuses (503) rather than
    forget a live nonce, which would let a replay through.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        assert max_entries >= 1, max_entries
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    async def claim(self, app_id: str, nonce: str, ttl_s: int) -> bool:
        assert ttl_s > 0, ttl_s
        now = self._clock()
        key = (app_id, nonce)
        expires = self._expiry.get(key)
        if expires is not None and expires > now:
            return False
        self._expiry.pop(key, None)
        if len(self._expiry) >= self.max_entries:
            self._drop_expired(now)
        if len(self._expiry) >= self.max_entries:
            raise Overloaded(f"nonce store full ({self.max_entries} live nonces)", retry_after_s=1)
        self._expiry[key] = now + ttl_s
        return True

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, expires in self._expiry.items() if expires <= now]:
            del self._expiry[key]


def read_auth_headers(headers: Mapping[str, str]) -> tuple[str, str, str, str]:
    """The four auth headers (app, timestamp, nonce, signature), each present and well formed."""
    values = []
    for name, pattern, rule in _HEADER_FORMATS:
        value = headers.get(name)
        if value is None:
            raise Unauthenticated(f"missing header {name}")
        if pattern.fullmatch(value) is None:
            raise Unauthenticated(f"malformed header {name}: expected {rule}")
        values.append(value)
    return values[0], values[1], values[2], values[3]


async def authenticate(headers: Mapping[str, str], method: str, path_qs: str, body: bytes,
                       apps: Mapping[str, str], nonces: NonceStore, now: float,
                       window_s: int) -> str:
    """The authenticated app id, or ``Unauthenticated`` (401) saying what was wrong.

    ``headers`` should be case-insensitive (aiohttp's request headers are); ``path_qs`` is the raw
    path and query exactly as sent (``request.raw_path``), ``body`` the raw body bytes.
    """
    app_id, timestamp, nonce, signature = read_auth_headers(headers)
    secret = apps.get(app_id)
    if secret is None:
        raise Unauthenticated("unknown app")
    if abs(now - int(timestamp)) > window_s:
        raise Unauthenticated(f"timestamp more than {window_s} s away from the server clock")
    expected = sign(secret, method, path_qs, timestamp, nonce, body)
    if not hmac.compare_digest(expected, signature):
        raise Unauthenticated("signature does not match the request")
    if not await nonces.claim(app_id, nonce, window_s + NONCE_TTL_MARGIN_S):
        raise Unauthenticated("nonce already used")
    return app_id
