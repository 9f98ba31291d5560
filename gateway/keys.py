"""Typed application keys: everything a handler needs, acquired in create_app's cleanup_ctx."""
from __future__ import annotations

from typing import Any, Protocol

import redis.asyncio as aioredis
from aiohttp import web

from channels.base import Connector, Notification
from core.clock import Clock
from core.order import CreateOrder
from core.refund import CreateRefund
from core.settings import Settings
from gateway.auth import NonceStore
from gateway.batcher import ShardBatcher
from gateway.finals import FinalOrders
from gateway.metrics import GatewayMetrics


class ShardsPort(Protocol):
    """What the gateway needs from the shards (actors.client.ShardClient, or a test double).
    Batches go to the actor hosting the shards (`host_of`); single calls name the shard."""
    hosts: int

    def host_of(self, shard: int) -> int: ...
    async def submit(self, host: int, tickets: list[str], shards: list[int],
                     cmds: list[CreateOrder]) -> list[dict[str, Any] | None]: ...
    async def await_replies(self, host: int, tickets: list[str]
                            ) -> dict[str, dict[str, Any]]: ...
    async def get(self, shard: int, app_id: str, order_id: str) -> dict[str, Any] | None: ...
    async def find(self, shard: int, app_id: str, out_trade_no: str) -> dict[str, Any] | None: ...
    async def notify_many(self, host: int, tickets: list[str], shards: list[int],
                          notes: list[Notification]) -> list[bool | None]: ...
    async def ping(self, shard: int) -> dict[str, Any]: ...
    async def host_ping(self, host: int) -> dict[str, Any]: ...
    async def create_refund(self, shard: int, cmd: CreateRefund) -> dict[str, Any]: ...
    async def list_refunds(self, shard: int, app_id: str, order_id: str
                           ) -> dict[str, Any] | None: ...


SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
SHARDS = web.AppKey("shards", ShardsPort)
BATCHER = web.AppKey("batcher", ShardBatcher[CreateOrder, dict[str, Any]])
NOTIFY_BATCHER = web.AppKey("notify_batcher", ShardBatcher[Notification, bool])
NONCES = web.AppKey("nonces", NonceStore)
REDIS = web.AppKey("redis", aioredis.Redis)
NOTIFIERS = web.AppKey("notifiers", dict[str, Connector])
CHANNELS = web.AppKey("channels", tuple[str, ...])   # enabled channels, sorted (made once)
METRICS = web.AppKey("metrics", GatewayMetrics)
FINALS = web.AppKey("finals", FinalOrders)
