"""The HTTP layer every connector shares: one session, a timeout per call, bounded body reads, and
the one mapping of transport errors to what they mean for the money.

  * the connection could not be established (refused, DNS, connect timeout, bad URL) -> NotSent
  * timeout, disconnect, reset or a broken body after sending              -> OutcomeUnknown
  * an answer larger than the caller's bound                               -> ProtocolError

Which HTTP statuses mean what is each channel's own rule and stays in its connector; so does any
ChannelError a connector raises inside an exchange (it passes through `guarded` unchanged).
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Mapping, TypeVar
from urllib.parse import urlencode

import aiohttp

from channels.base import NotSent, OutcomeUnknown, ProtocolError

CONNECT_TIMEOUT_MS_MAX = 2000      # the connect phase of any call, at most
CONNECTIONS_MAX = 64               # an owned session's pool, unless the channel says otherwise
                                   # (aiohttp: 0 is no limit, as the settings have always allowed)
T = TypeVar("T")

# Before the request could be sent: nothing reached the channel. (ClientConnectorError is a
# ClientOSError and ConnectionTimeoutError an asyncio.TimeoutError: this tuple is tried first.)
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)
# After it may have been sent: the channel may have acted on it.
_NO_ANSWER = (asyncio.TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
              aiohttp.ClientPayloadError, aiohttp.ClientResponseError,
              aiohttp.ClientConnectionError)


class Transport:
    """One connector's HTTP session: the injected one, or one it opens on first use and closes
    in `close` (an injected session is never closed here: its owner does that)."""

    def __init__(self, session: aiohttp.ClientSession | None, call_timeout_ms: int,
                 connections_max: int = CONNECTIONS_MAX) -> None:
        assert call_timeout_ms > 0, call_timeout_ms
        self._session = session
        self._owns_session = False
        self._call_timeout_ms = call_timeout_ms
        self._connections_max = connections_max

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections_max)
            self._session = aiohttp.ClientSession(connector=connector)
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        """Close the session if this transport created it (never an injected one)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def timeout(self, total_ms: int | None = None) -> aiohttp.ClientTimeout:
        """The whole call within `total_ms` (default: the channel's call_timeout_ms), its connect
        phase within CONNECT_TIMEOUT_MS_MAX."""
        total_ms = self._call_timeout_ms if total_ms is None else total_ms
        assert total_ms > 0, total_ms
        return aiohttp.ClientTimeout(total=total_ms / 1000,
                                     sock_connect=min(total_ms, CONNECT_TIMEOUT_MS_MAX) / 1000)


def form_body(form: Mapping[str, str], charset: str) -> bytes:
    """An application/x-www-form-urlencoded body, encoded once: handing aiohttp a dict builds a
    FormData (and a multipart writer with a uuid4 boundary) on every call of the hot path."""
    return urlencode(form, encoding=charset).encode(charset)


async def read_upto(stream: aiohttp.StreamReader, max_bytes: int) -> bytes:
    """The body to its end, or its first max_bytes + 1 bytes when it is longer. One
    ``stream.read(n)`` is not enough: it returns what has arrived so far (a chunk of about
    64 KiB of a larger answer), not n bytes."""
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes:
        chunk = await stream.read(max_bytes + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def read_bounded(resp: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    """The whole body, or ProtocolError "<what> too large" past `max_bytes` (declared or read).
    StreamReader.read(n) answers what has arrived so far (up to n bytes), so it is read until
    EOF: one read is only the first chunk of a body larger than the socket's buffer."""
    if (resp.content_length or 0) > max_bytes:
        raise ProtocolError(f"{what} too large")
    body = await read_upto(resp.content, max_bytes)
    if len(body) > max_bytes:
        raise ProtocolError(f"{what} too large")
    return body


async def guarded(what: str, send: Callable[[], Awaitable[T]], timed: bool = False) -> T:
    """Run one HTTP exchange and turn transport errors into what they mean for the money.
    `timed`: an OutcomeUnknown says how long the exchange ran."""
    started = time.monotonic()
    try:
        return await send()
    except _NOT_SENT as e:
        raise NotSent(f"{what}: could not connect ({type(e).__name__})") from None
    except _NO_ANSWER as e:
        after = f" after {int((time.monotonic() - started) * 1000)} ms" if timed else ""
        raise OutcomeUnknown(f"{what}: sent, no answer{after} ({type(e).__name__})") from None
