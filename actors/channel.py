"""ChannelHost: owns one channel's connector, its HTTP connection pool and its charges in flight.

Answers are tagged tuples (see actors.charges) so the caller can tell "the connector said the
request was not sent" from "the actor call itself failed", which is always "outcome unknown".
"""
from __future__ import annotations

import os
from typing import Any

import aiohttp

from actors.charges import ChargeBoard, Tagged, tagged
from channels.base import ChargeRequest, Connector
from channels.registry import build_connector
from core.settings import Settings


class ChannelHost:
    def __init__(self, settings: Settings, channel: str, notify_url: str) -> None:
        self._settings = settings
        self._channel = channel
        self._notify_url = notify_url
        self._session: aiohttp.ClientSession | None = None
        self._connector: Connector | None = None
        self._board = ChargeBoard(lambda req: self._ensure().charge(req),
                                  settings.orders.channel_actor_charges_inflight_max)
        self.calls = {"charge": 0, "query": 0, "cancel": 0, "batches": 0, "collects": 0}

    def _ensure(self) -> Connector:
        if self._connector is None:
            limit = self._settings.alipay.connections_max
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit))
            self._connector = build_connector(self._channel, self._settings,
                                              notify_url=self._notify_url, session=self._session)
        return self._connector

    async def charge_many(self, reqs: list[ChargeRequest], wait_s: float) -> list[Tagged | None]:
        self.calls["batches"] += 1
        self.calls["charge"] += len(reqs)
        self._ensure()
        return await self._board.charge_many(reqs, wait_s)

    async def collect(self, order_ids: list[str], wait_s: float) -> dict[str, Tagged]:
        self.calls["collects"] += 1
        return await self._board.collect(order_ids, wait_s)

    async def query(self, order_id: str, currency: str) -> Tagged:
        self.calls["query"] += 1
        return await tagged(self._ensure().query(order_id, currency))

    async def cancel(self, order_id: str) -> Tagged:
        self.calls["cancel"] += 1
        return await tagged(self._ensure().cancel(order_id))

    async def ping(self) -> dict[str, Any]:
        self._ensure()
        return {"channel": self._channel, "pid": os.getpid(), "in_flight": len(self._board),
                **self.calls}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
