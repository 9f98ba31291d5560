"""channels.transport.read_bounded reads a channel's whole answer, however it arrives: a large
one comes in chunks, and one StreamReader.read(n) returns only what has arrived so far (the
bug that cut Stripe's balance history, 100 expanded transactions, at 64 KiB)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol

from channels.base import ProtocolError
from channels.transport import read_bounded, read_upto

CHUNK = 65_536


async def _stream(body: bytes, chunk: int = CHUNK) -> aiohttp.StreamReader:
    """A response body that arrives chunk by chunk, one per turn of the loop."""
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    protocol.transport = SimpleNamespace()     # type: ignore[assignment]  (no socket: "connected")
    stream = aiohttp.StreamReader(protocol, 2 ** 20, loop=loop)

    async def feed() -> None:
        for i in range(0, len(body), chunk):
            stream.feed_data(body[i:i + chunk])
            await asyncio.sleep(0)
        stream.feed_eof()
    asyncio.get_running_loop().create_task(feed())
    await asyncio.sleep(0)          # the first chunk is there, the rest is on its way
    return stream


def _resp(stream: aiohttp.StreamReader, declared: int | None = None) -> Any:
    return SimpleNamespace(content=stream, content_length=declared)


async def test_a_body_in_many_chunks_is_read_whole() -> None:
    body = bytes(range(256)) * 1000                      # 256,000 bytes: four chunks
    assert await read_bounded(_resp(await _stream(body)), 1_048_576, "answer") == body
    assert await read_upto(await _stream(body), 1_048_576) == body


async def test_exactly_the_bound_passes_one_byte_more_is_too_large() -> None:
    body = b"x" * (3 * CHUNK)
    assert await read_bounded(_resp(await _stream(body)), len(body), "answer") == body
    with pytest.raises(ProtocolError, match="answer too large"):
        await read_bounded(_resp(await _stream(body + b"y")), len(body), "answer")
    assert len(await read_upto(await _stream(body * 4), len(body))) == len(body) + 1


async def test_a_declared_length_past_the_bound_is_refused_before_reading() -> None:
    with pytest.raises(ProtocolError, match="too large"):
        await read_bounded(_resp(await _stream(b"{}"), declared=10), 5, "answer")


async def test_an_empty_body() -> None:
    assert await read_bounded(_resp(await _stream(b"")), 10, "answer") == b""
