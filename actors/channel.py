"""ChannelHost: owns one channel's connector and its HTTP connection pool.

Answers are tagged tuples rather than raised exceptions so the caller can tell "the connector
said the request was not sent" from "the actor call itself failed" (which is always unknown):
  ("ok", ChannelResult) | ("not_sent", detail) | ("unknown", detail)
"""
from __future__ import annotations

import os
from typing import Any

import aiohttp

from channels.base import ChargeRequest, ChannelResult, Connector, NotSent, OutcomeUnknown
from channels.registry import build_connector
from core.settings import Settings

Tagged = tuple[str, Any]


class ChannelHost:
    def __init__(self, settings: Settings, channel: str, notify_url: str) -> None:
        self._settings = settings
        self._channel = channel
        self._notify_url = notify_url
        self._session: aiohttp.ClientSession | None = None
        self._connector: Connector | None = None
        self.calls = {"charge": 0, "query": 0, "cancel": 0, "not_sent": 0, "unknown": 0}

    def _ensure(self) -> Connector:
        if self._connector is None:
            limit = self._settings.alipay.connections_max
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit))
            self._connector = build_connector(self._channel, self._settings,
                                              notify_url=self._notify_url, session=self._session)
        return self._connector

    async def _run(self, kind: str, coro: Any) -> Tagged:
        self.calls[kind] += 1
        try:
            result: ChannelResult = await coro
            return ("ok", result)
        except NotSent as e:
            self.calls["not_sent"] += 1
            return ("not_sent", f"{type(e).__name__}: {e}"[:300])
        except OutcomeUnknown as e:
            self.calls["unknown"] += 1
            return ("unknown", f"{type(e).__name__}: {e}"[:300])

    async def charge(self, req: ChargeRequest) -> Tagged:
        return await self._run("charge", self._ensure().charge(req))

    async def query(self, order_id: str, currency: str) -> Tagged:
        return await self._run("query", self._ensure().query(order_id, currency))

    async def cancel(self, order_id: str) -> Tagged:
        return await self._run("cancel", self._ensure().cancel(order_id))

    async def ping(self) -> dict[str, Any]:
        self._ensure()
        return {"channel": self._channel, "pid": os.getpid(), **self.calls}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
