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


# ---- a host gone without a word; races and bad frames ---------------------------------------

class _Restarted:
    async def ping(self) -> dict[str, Any]:
        return {"pid": "the new incarnation"}


async def test_a_link_that_hears_nothing_for_a_call_timeout_is_dropped_and_asked_for_again(
        ) -> None:
    """A host whose node vanished sends no FIN: its link looks open. A call that times out with
    not a byte heard drops the link, so the next call asks Ray (here: a stand-in) again and
    reaches the restarted host."""
    from actors.client import ShardClient
    from core.errors import Unavailable
    from core.settings import load_settings
    held: list[asyncio.StreamWriter] = []

    async def black_hole(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)                      # accepts, never reads, never answers
    dead = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    new = LinkServer(_Restarted(), "127.0.0.1")
    _, new_port, new_token = await new.start()
    where = {"port": dead.sockets[0].getsockname()[1], "token": b"t" * 32}
    asked = []

    async def open_link_through_ray(host: int, method: str, *args: Any) -> Any:
        asked.append(method)
        return "127.0.0.1", where["port"], where["token"]
    client = ShardClient(load_settings(env={}))
    client._timeout_s = 0.2
    client._ray_call = open_link_through_ray     # type: ignore[method-assign]
    try:
        with pytest.raises(Unavailable, match="did not answer in time"):
            await client.host_ping(0)
        assert client.links_dropped == 1 and 0 not in client._links
        where.update(port=new_port, token=new_token)     # Ray restarted it elsewhere
        assert await client.host_ping(0) == {"pid": "the new incarnation"}
        assert asked == ["open_link", "open_link"]
    finally:
        client.close()
        new.close()
        dead.close()
        for w in held:
            w.close()


async def test_a_slow_answer_on_a_link_that_talks_keeps_the_link(served: Any) -> None:
    from actors.client import ShardClient
    from core.errors import Unavailable
    from core.settings import load_settings
    target, server, connect = served
    link = await connect()
    client = ShardClient(load_settings(env={}))
    client._timeout_s = 0.3
    client._links[0] = link

    async def chatter() -> None:   # other calls on the link keep answering meanwhile
        for _ in range(6):
            await link.call("ping")
            await asyncio.sleep(0.05)
    talk = asyncio.ensure_future(chatter())
    with pytest.raises(Unavailable):
        await client._call_host(0, "await_replies", ["t"], 5.0)   # held until released
    await talk
    assert client.links_dropped == 0 and client._links[0] is link and not link.closed


async def test_concurrent_starts_open_one_listener() -> None:
    server = LinkServer(Target(), "127.0.0.1")
    answers = await asyncio.gather(*(server.start() for _ in range(5)))
    assert len({port for _, port, _ in answers}) == 1
    server.close()
    address, port, token = answers[0]
    with pytest.raises(LinkLost):
        await HostLink.connect(address, port, token, 0.5)


async def test_a_connection_without_the_token_is_dropped_after_the_handshake_time(
        served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.link
    monkeypatch.setattr(actors.link, "HANDSHAKE_TIMEOUT_S", 0.1)
    _, server, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        assert await asyncio.wait_for(reader.read(), 2.0) == b""   # closed by the host
        assert server.refused == 1
    finally:
        writer.close()


async def test_an_answer_that_cannot_be_read_closes_the_link_and_fails_its_calls(
        served: Any) -> None:
    _, _, connect = served
    link = await connect()
    pending = link.call("await_replies", ["t"], 5.0)
    link.data_received(len(b"garbage").to_bytes(4, "big") + b"garbage")
    with pytest.raises(LinkLost):
        await pending
    assert link.closed


async def test_a_call_that_cannot_be_framed_leaves_no_call_behind(served: Any) -> None:
    _, _, connect = served
    link = await connect()
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        link.call("submit", lambda: None)
    assert link._calls == {}
    assert await link.call("ping") == {"pid": 1}


async def test_a_host_that_reads_nothing_closes_the_link_once_its_buffer_is_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.link
    monkeypatch.setattr(actors.link, "WRITE_BUFFER_MAX_BYTES", 256 * 1024)
    held: list[asyncio.StreamWriter] = []

    async def black_hole(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)                      # accepts, never reads
    dead = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    link = await HostLink.connect("127.0.0.1", dead.sockets[0].getsockname()[1], b"t" * 32, 1.0)
    try:
        calls = []
        for _ in range(200):                # 200 x 64 KiB: past the kernel's buffers and the cap
            calls.append(link.call("submit", b"x" * 65536))
            if link.closed:
                break
        assert link.closed
        with pytest.raises(LinkLost):
            await calls[0]
        with pytest.raises(LinkLost):
            await link.call("ping")
    finally:
        link.close()
        dead.close()
        for w in held:
            w.close()


async def test_a_shard_client_closed_while_a_link_opens_does_not_keep_it() -> None:
    from actors.client import ShardClient
    from core.errors import Unavailable
    from core.settings import load_settings
    server = LinkServer(_Restarted(), "127.0.0.1")
    address, port, token = await server.start()
    client = ShardClient(load_settings(env={}))
    answer = asyncio.Event()

    async def open_link_through_ray(host: int, method: str, *args: Any) -> Any:
        await answer.wait()
        return address, port, token
    client._ray_call = open_link_through_ray     # type: ignore[method-assign]
    try:
        ping = asyncio.ensure_future(client.host_ping(0))
        await asyncio.sleep(0.01)
        client.close()                      # while Ray is still being asked
        answer.set()
        with pytest.raises(Unavailable, match="closed"):
            await ping
        assert client._links == {}
    finally:
        server.close()
