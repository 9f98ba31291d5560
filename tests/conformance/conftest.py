"""The conformance suite's fixtures: every channel's sandbox in one in-process aiohttp app on a
real loopback port, and one notify receiver that verifies each callback with the channel's own
connector (so the sandbox sees paycell's real acknowledgement)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from channels.base import Connector, Notification, ProtocolError
from channels.registry import build_connector
from channels.sandbox.app import create_sandbox_app
from channels.sandbox.engine import SandboxConfig
from channels.sandbox.knobs import Knobs
from core.settings import Settings, load_settings
from tests.conformance.profiles import PROFILES, Profile

# Compressed timings: the payer confirms after 200 ms, a hang outlasts the call timeout.
KNOBS = Knobs(payer_confirm_ms=200, hang_ms=1200, notify_delay_ms=30,
              notify_retry_ms=(100, 100, 100))
CALL_TIMEOUT_MS = 500


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    note: Notification | None          # None: refused (did not verify)


@dataclass
class Receiver:
    """Merchant notify endpoint: /notify/<channel>, verified by that channel's connector."""
    connectors: dict[str, Connector] = field(default_factory=dict)
    got: dict[str, list[Received]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        connector = self.connectors[channel]
        body = await request.read()
        try:
            note: Notification | None = connector.parse_notification(body, request.headers)
        except ProtocolError:
            note = None
        self.got.setdefault(channel, []).append(Received(body, dict(request.headers), note))
        ack = connector.ack(note is not None)
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)

    def notes(self, channel: str, order_id: str) -> list[Notification]:
        return [r.note for r in self.got.get(channel, [])
                if r.note is not None and r.note.order_id == order_id]


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@dataclass
class World:
    sandbox_url: str
    receiver: Receiver
    receiver_url: str
    http: aiohttp.ClientSession
    settings: Settings

    def connector(self, channel: str, **over: Any) -> Connector:
        settings = self.settings
        if over:
            settings = load_settings(env={}, overrides={
                "sandbox": {"port": self.settings.sandbox.port}, channel: over})
        return build_connector(channel, settings, f"{self.receiver_url}/notify/{channel}",
                               self.http)

    def control(self, channel: str, what: str) -> str:
        return f"{self.sandbox_url}/{channel}/_sandbox/{what}"

    async def ledger(self, channel: str, order_id: str) -> dict[str, Any]:
        async with self.http.get(self.control(channel, "ledger")) as resp:
            assert resp.status == 200
            return (await resp.json())["trades"].get(order_id, {})  # type: ignore[no-any-return]

    async def knobs(self, channel: str, **changes: Any) -> None:
        async with self.http.post(self.control(channel, "knobs"), json=changes) as resp:
            assert resp.status == 200, await resp.text()

    async def post(self, channel: str, what: str, **data: Any) -> tuple[int, Any]:
        async with self.http.post(self.control(channel, what), json=data) as resp:
            return resp.status, await resp.json()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 4.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.03)


@pytest_asyncio.fixture(scope="module")
async def world() -> AsyncIterator[World]:
    names = [p.channel for p in PROFILES]
    sandbox_runner, sandbox_url = await _serve(
        create_sandbox_app(SandboxConfig(seed=5, knobs=KNOBS), names))
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/notify/{channel}", receiver.handle)
    receiver_runner, receiver_url = await _serve(app)
    port = int(sandbox_url.rsplit(":", 1)[1])
    settings = load_settings(env={}, overrides={
        "sandbox": {"port": port}, **{n: {"call_timeout_ms": CALL_TIMEOUT_MS} for n in names}})
    async with aiohttp.ClientSession() as http:
        w = World(sandbox_url, receiver, receiver_url, http, settings)
        for name in names:
            receiver.connectors[name] = w.connector(name)
        try:
            yield w
        finally:
            await receiver_runner.cleanup()
            await sandbox_runner.cleanup()


@pytest.fixture(params=PROFILES, ids=lambda p: p.channel)
def profile(request: pytest.FixtureRequest) -> Profile:
    return request.param  # type: ignore[no-any-return]
