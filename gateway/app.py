"""create_app(settings): the aiohttp gateway, with every resource acquired in cleanup_ctx."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from channels.registry import build_connector, enabled_channels
from core.clock import Clock, SystemClock
from core.settings import Settings
from gateway import keys
from gateway.batcher import ShardBatcher
from gateway.finals import FinalOrders
from gateway.metrics import GatewayMetrics
from gateway.middlewares import request_context
from gateway.ops import add_ops_routes
from gateway.routes import add_routes

log = logging.getLogger("paycell.gateway")
SHARD_KEEPALIVE_S = 1.0  # pings shards so a restarted one rebuilds from Redis even when idle


def _notify_url(settings: Settings, channel: str) -> str:
    return f"{settings.gateway.base_url()}/v1/notify/{channel}"


@web.middleware
async def _observe(request: web.Request, handler: Callable[[web.Request],
                   Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    start = time.perf_counter()
    response = await handler(request)
    route = request.match_info.route.name or "unmatched"
    request.app[keys.METRICS].observe_request(route, response.status,
                                              time.perf_counter() - start)
    return response


def create_app(settings: Settings, *, shards: Any = None, nonces: Any = None, redis: Any = None,
               clock: Clock | None = None) -> web.Application:
    """Build the gateway. Without injected parts it connects to Redis and to the shard actors of
    the running Ray cluster (ray.init must have been called in this process)."""
    app = web.Application(client_max_size=settings.gateway.body_max_bytes,
                          middlewares=[_observe, request_context])
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = clock or SystemClock()
    app[keys.METRICS] = GatewayMetrics()
    app[keys.FINALS] = FinalOrders(settings.gateway.final_orders_cached_max)
    app[keys.NOTIFIERS] = {
        ch: build_connector(ch, settings, notify_url=_notify_url(settings, ch))
        for ch in enabled_channels(settings)
    }
    app[keys.CHANNELS] = tuple(sorted(enabled_channels(settings)))

    async def resources(app: web.Application) -> AsyncIterator[None]:
        own_redis = redis is None
        fast = None
        if own_redis:
            from actors.factory import lean_redis, redis_client
            app[keys.REDIS] = redis_client(settings)
            fast = lean_redis(settings)
        else:
            app[keys.REDIS] = redis
        if nonces is None:
            from gateway.auth import RedisNonceStore
            app[keys.NONCES] = RedisNonceStore(app[keys.REDIS], fast=fast)
        else:
            app[keys.NONCES] = nonces
        own_shards = None
        if shards is None:
            from actors.client import ShardClient
            app[keys.SHARDS] = own_shards = ShardClient(settings)
        else:
            app[keys.SHARDS] = shards
        g = settings.gateway
        def batcher(submit: Any, collect: Any = None) -> Any:
            port = app[keys.SHARDS]
            return ShardBatcher(submit, port.hosts, port.host_of, batch_max=g.batch_max_orders,
                                linger_us=g.batch_linger_us, inflight_max=g.shard_calls_inflight_max,
                                queue_max=g.shard_queue_max_orders, collect=collect)

        app[keys.BATCHER] = batcher(app[keys.SHARDS].submit, app[keys.SHARDS].await_replies)
        app[keys.NOTIFY_BATCHER] = batcher(app[keys.SHARDS].notify_many)
        keepalive = asyncio.get_running_loop().create_task(_keep_shards_alive(app))
        yield
        keepalive.cancel()
        await asyncio.gather(keepalive, return_exceptions=True)
        if own_shards is not None:
            own_shards.close()
        if own_redis:
            await app[keys.REDIS].aclose()
        if fast is not None:
            await fast.close()

    app.cleanup_ctx.append(resources)
    add_routes(app)
    add_ops_routes(app)
    return app


async def _keep_shards_alive(app: web.Application) -> None:
    shards, count = app[keys.SHARDS], app[keys.SETTINGS].orders.shard_count
    while True:
        await asyncio.sleep(SHARD_KEEPALIVE_S)
        results = await asyncio.gather(*(shards.ping(i) for i in range(count)),
                                       return_exceptions=True)
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                log.warning("shard %d not answering: %s", i, type(r).__name__)
