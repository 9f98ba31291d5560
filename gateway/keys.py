"""Typed application keys: everything a handler needs, acquired in create_app's cleanup_ctx."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from channels.base import Connector
from core.clock import Clock
from core.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
SHARDS = web.AppKey("shards", Any)          # actors.client.ShardClient or a test double
BATCHER = web.AppKey("batcher", Any)        # gateway.batcher.ShardBatcher
NONCES = web.AppKey("nonces", Any)          # gateway.auth.NonceStore
REDIS = web.AppKey("redis", Any)            # redis.asyncio.Redis (readiness, nonces)
NOTIFIERS = web.AppKey("notifiers", dict[str, Connector])
METRICS = web.AppKey("metrics", Any)        # gateway.metrics.GatewayMetrics
