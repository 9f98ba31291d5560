"""channels.transport.read_bounded: the whole body however it arrives, and its bound."""
from __future__ import annotations

import asyncio
from unittest import mock

import aiohttp
import pytest

from channels.base import ProtocolError
from channels.transport import read_bounded

CHUNK = b"x" * 65_536


class _Response:
    """What read_bounded uses of an aiohttp.ClientResponse: the body stream, no length."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.content_length = None


async def _arriving(chunks: int, max_bytes: int) -> bytes:
    """read_bounded over a body that arrives in `chunks` pieces, one per loop turn."""
    reader = aiohttp.StreamReader(mock.Mock(_reading_paused=False), 2**20,
                                  loop=asyncio.get_running_loop())
    reader.feed_data(CHUNK)
    read = asyncio.ensure_future(read_bounded(_Response(reader), max_bytes, "bill"))
    for _ in range(chunks - 1):
        await asyncio.sleep(0)
        reader.feed_data(CHUNK)
    reader.feed_eof()
    return await read


async def test_a_body_arriving_in_pieces_is_read_whole() -> None:
    body = await _arriving(6, 10 * len(CHUNK))
    assert body == CHUNK * 6       # not only the first piece


async def test_a_body_past_the_bound_is_refused_however_it_arrives() -> None:
    with pytest.raises(ProtocolError, match="bill too large"):
        await _arriving(6, 5 * len(CHUNK) + 1)
    assert await _arriving(5, 5 * len(CHUNK)) == CHUNK * 5
