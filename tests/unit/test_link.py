"""actors/link.py without Ray: a LinkServer on loopback in front of a plain object."""
from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest

from actors.link import (FRAME_MAX_BYTES, LINK_METHODS, HostLink, LinkLost, LinkServer,
                         RemoteError, _Frames, _frame)


class Target:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.release = asyncio.Event()

    async def submit(self, *args: Any) -> Any:
        self.calls.append(("submit", args))
        return {"echo": args}

    async def await_replies(self, tickets: list[str], wait_s: float) -> dict[str, Any]:
        await asyncio.wait_for(self.release.wait(), wait_s)
        return {t: {"http": 200} for t in tickets}

    async def notify_many(self, *args: Any) -> Any:
        raise ValueError("shard 9 does not run in host 0")

    async def call(self, *args: Any) -> Any:
        return args

    async def ping(self) -> dict[str, Any]:
        return {"pid": 1}

    async def open_link(self) -> Any:      # not a link method: never served
        raise AssertionError("served a method outside LINK_METHODS")


@pytest.fixture
async def served() -> Any:
    target = Target()
    server = LinkServer(target, "127.0.0.1")
    address, port, token = await server.start()
    links: list[HostLink] = []

    async def connect(tok: bytes = token) -> HostLink:
        links.append(await HostLink.connect(address, port, tok, 1.0))
        return links[-1]
    yield target, server, connect
    for link in links:
        link.close()
    server.close()


async def test_calls_are_answered_concurrently_and_in_their_own_order(served: Any) -> None:
    target, _, connect = served
    link = await connect()
    slow = link.call("await_replies", ["t1", "t2"], 2.0)
    fast = [link.call("submit", [0], ["t3"], [f"cmd{i}"], 0.05) for i in range(50)]
    got = await asyncio.gather(*fast)
    assert got == [{"echo": ([0], ["t3"], [f"cmd{i}"], 0.05)} for i in range(50)]
    assert not slow.done()                 # the long poll did not hold up the others
    target.release.set()
    assert await slow == {"t1": {"http": 200}, "t2": {"http": 200}}
    assert await link.call("ping") == {"pid": 1}


async def test_a_method_that_raises_answers_its_error_and_the_link_stays(served: Any) -> None:
    _, _, connect = served
    link = await connect()
    with pytest.raises(RemoteError, match="ValueError: shard 9 does not run in host 0"):
        await link.call("notify_many", [9], ["note"])
    with pytest.raises(RemoteError, match="not a link method: open_link"):
        await link.call("open_link")
    assert "open_link" not in LINK_METHODS
    assert await link.call("call", 1, "get") == (1, "get") and not link.closed


async def test_a_wrong_token_is_refused_before_anything_is_unpickled(served: Any) -> None:
    target, server, connect = served
    link = await connect(b"x" * 32)
    fut = link.call("submit", "never")
    with pytest.raises(LinkLost):
        await asyncio.wait_for(fut, 2.0)
    assert target.calls == [] and server.refused == 1 and link.closed
    # a first frame longer than a token is refused at its header
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write((1000).to_bytes(4, "big") + pickle.dumps("evil"))
    assert await asyncio.wait_for(reader.read(), 2.0) == b""
    assert server.refused == 2
    writer.close()


async def test_the_host_going_away_fails_the_calls_in_flight(served: Any) -> None:
    _, server, connect = served
    link = await connect()
    assert await link.call("ping") == {"pid": 1}
    waiting = link.call("await_replies", ["t"], 5.0)
    await asyncio.sleep(0.05)
    server.close()                         # drops its connections, as a killed host's do
    with pytest.raises(LinkLost):
        await asyncio.wait_for(waiting, 2.0)
    assert link.closed
    with pytest.raises(LinkLost):
        await link.call("ping")


async def test_nothing_listening_is_link_lost() -> None:
    server = LinkServer(Target(), "127.0.0.1")
    _, port, token = await server.start()
    server.close()
    await asyncio.sleep(0.05)
    with pytest.raises(LinkLost):
        await HostLink.connect("127.0.0.1", port, token, 1.0)


def test_frames_split_a_stream_at_any_point_and_bound_their_size() -> None:
    stream = b"".join(_frame(("x", i)) for i in range(20))
    frames = _Frames()
    got = []
    for i in range(0, len(stream), 7):
        got += [pickle.loads(p) for p in frames.feed(stream[i:i + 7])]
    assert got == [("x", i) for i in range(20)]
    with pytest.raises(ValueError):
        _Frames().feed((FRAME_MAX_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(ValueError):
        _Frames(first_max=32).feed((33).to_bytes(4, "big"))
