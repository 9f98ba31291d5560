"""HTTP handlers: parse, validate, call, serialize. The contract is ../shared/API.md."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from actors.store import event_set_keys
from channels.base import ProtocolError
from core.errors import (NotFound, PaycellError, Unavailable, UnsupportedMediaType,
                         ValidationError, error_for_code)
from core.ids import parse_order_id, shard_for_key
from gateway import keys
from gateway.auth import authenticate
from gateway.openapi import openapi_document
from gateway.ops import refresh_reconciler_metrics
from gateway.validation import (check_order_id, check_out_trade_no, parse_create_order,
                                parse_create_refund)

log = logging.getLogger("paycell.gateway")
READY_TIMEOUT_S = 2.0


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _authenticated(request: web.Request, body: bytes) -> str:
    app = request.app
    settings = app[keys.SETTINGS]
    return await authenticate(request.headers, request.method, request.raw_path, body,
                              settings.app_secrets(), app[keys.NONCES], app[keys.CLOCK].time(),
                              settings.gateway.auth_window_s)


def _order_reply(request: web.Request, reply: dict[str, Any]) -> web.Response:
    if "error" in reply:
        raise error_for_code(reply["error"], reply.get("detail", ""), reply.get("retry_after_s"))
    order = reply["order"]
    request.app[keys.METRICS].orders.labels(order["status"]).inc()
    request.app[keys.FINALS].remember(order)
    return _json(order, reply["http"])


async def _signed_json(request: web.Request) -> tuple[str, bytes]:
    """(app id, body) of a signed JSON request: 415 for another media type, 401 if unsigned."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    body = await request.read()
    return await _authenticated(request, body), body


async def create_order(request: web.Request) -> web.Response:
    received_at = request.app[keys.CLOCK].time()
    app_id, body = await _signed_json(request)
    settings = request.app[keys.SETTINGS]
    channels = request.app[keys.CHANNELS]
    if not channels:
        raise Unavailable("no payment channel is enabled")
    cmd = replace(parse_create_order(
        app_id, body, channels,
        allow_private_targets=settings.merchant_notify.allow_private_targets),
        received_at=received_at)
    shard = shard_for_key(app_id, cmd.out_trade_no, settings.orders.shard_count)
    reply = await request.app[keys.BATCHER].submit(shard, cmd)
    return _order_reply(request, reply)


def _local_shard(request: web.Request, order_id: str) -> int:
    settings = request.app[keys.SETTINGS]
    ref = parse_order_id(check_order_id(order_id))
    if ref is None or ref.region != settings.orders.region \
            or ref.set_name != settings.orders.set_name or ref.shard >= settings.orders.shard_count:
        raise NotFound("no such order")
    return ref.shard


async def get_order(request: web.Request) -> web.Response:
    app_id = await _authenticated(request, b"")
    order_id = request.match_info["order_id"]
    shard = _local_shard(request, order_id)
    order = await request.app[keys.SHARDS].get(shard, app_id, order_id)
    if order is None:
        raise NotFound("no such order")
    return _json(order)


async def find_order(request: web.Request) -> web.Response:
    app_id = await _authenticated(request, b"")
    if "out_trade_no" not in request.query:
        raise ValidationError("out_trade_no is required", field="out_trade_no")
    out_trade_no = check_out_trade_no(request.query["out_trade_no"])
    shard = shard_for_key(app_id, out_trade_no, request.app[keys.SETTINGS].orders.shard_count)
    order = await request.app[keys.SHARDS].find(shard, app_id, out_trade_no)
    if order is None:
        raise NotFound("no such order")
    return _json(order)


async def create_refund(request: web.Request) -> web.Response:
    received_at = request.app[keys.CLOCK].time()
    app_id, body = await _signed_json(request)
    order_id = request.match_info["order_id"]
    shard = _local_shard(request, order_id)
    cmd = replace(parse_create_refund(app_id, order_id, body), received_at=received_at)
    reply = await request.app[keys.SHARDS].create_refund(shard, cmd)
    if "error" in reply:
        raise error_for_code(reply["error"], reply.get("detail", ""), reply.get("retry_after_s"))
    request.app[keys.METRICS].refunds.labels(reply["refund"]["status"]).inc()
    return _json(reply["refund"], reply["http"])


async def list_refunds(request: web.Request) -> web.Response:
    app_id = await _authenticated(request, b"")
    order_id = request.match_info["order_id"]
    shard = _local_shard(request, order_id)
    refunds = await request.app[keys.SHARDS].list_refunds(shard, app_id, order_id)
    if refunds is None:
        raise NotFound("no such order")
    return _json(refunds)


async def channel_notify(request: web.Request) -> web.Response:
    channel = request.match_info["channel"]
    connector = request.app[keys.NOTIFIERS].get(channel)
    if connector is None:
        raise NotFound("no such channel")
    body = await request.read()
    metrics = request.app[keys.METRICS].notifications
    try:
        note = replace(connector.parse_notification(body, request.headers), channel=channel)
    except ProtocolError as e:
        log.warning("rejected %s notification: %s", channel, e)
        metrics.labels(channel, "rejected").inc()
        ack = connector.ack(False)
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)
    if request.app[keys.FINALS].repeats_known_final(note):  # a duplicate of a final fact
        metrics.labels(channel, "duplicate").inc()
        ack = connector.ack(True)
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)
    accepted = False
    try:
        shard = _local_shard(request, note.order_id)
        accepted = await request.app[keys.NOTIFY_BATCHER].submit(shard, note)
    except PaycellError as e:  # unknown order or shard down: the channel will retry
        log.warning("%s notification for %s not applied: %s", channel, note.order_id, e.code)
    metrics.labels(channel, "accepted" if accepted else "refused").inc()
    ack = connector.ack(accepted)
    return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    settings = app[keys.SETTINGS]
    checks: dict[str, str] = {}

    async def check(name: str, aw: Any) -> None:
        try:
            await asyncio.wait_for(aw, READY_TIMEOUT_S)
            checks[name] = "ok"
        except Exception as e:  # a readiness probe reports every failure, whatever its type
            checks[name] = f"failed: {type(e).__name__}"

    probes = [check("redis", app[keys.REDIS].ping())]
    probes += [check(f"shard{i}", app[keys.SHARDS].ping(i))
               for i in range(settings.orders.shard_count)]
    await asyncio.gather(*probes)
    ready = all(v == "ok" for v in checks.values())
    return _json({"status": "ready" if ready else "not_ready", "checks": checks},
                 200 if ready else 503)


async def openapi(request: web.Request) -> web.Response:
    app = request.app
    return _json(openapi_document(app[keys.SETTINGS].gateway.base_url(), app[keys.CHANNELS]))


async def metrics(request: web.Request) -> web.Response:
    await asyncio.gather(_refresh_event_gauges(request.app),
                         refresh_reconciler_metrics(request.app),
                         _refresh_host_pauses(request.app))
    return web.Response(body=request.app[keys.METRICS].render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _refresh_event_gauges(app: web.Application) -> None:
    """Merchant events due and dead per shard, counted in Redis (one round trip); left as
    they were when Redis does not answer."""
    o, m = app[keys.SETTINGS].orders, app[keys.METRICS]
    try:
        async with app[keys.REDIS].pipeline(transaction=False) as p:
            for shard in range(o.shard_count):
                for key in event_set_keys(o.set_name, shard):
                    p.zcard(key)
            counts = await p.execute()
    except (RedisError, OSError, asyncio.TimeoutError):
        return
    for shard in range(o.shard_count):
        m.events_due.labels(str(shard)).set(counts[2 * shard])
        m.events_dead.labels(str(shard)).set(counts[2 * shard + 1])


async def _refresh_host_pauses(app: web.Application) -> None:
    """Each shard host's collector pauses (from its ping); a host that does not answer in time
    keeps what it last reported."""
    shards, m = app[keys.SHARDS], app[keys.METRICS]

    async def one(host: int) -> None:
        try:
            ping = await asyncio.wait_for(shards.host_ping(host), READY_TIMEOUT_S)
        except (PaycellError, asyncio.TimeoutError):
            return
        m.gc.update(f"host-{host}", ping.get("gc", {}))
    await asyncio.gather(*(one(h) for h in range(shards.hosts)))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/orders", create_order, name="create_order")
    app.router.add_get("/v1/orders", find_order, name="find_order")
    app.router.add_get("/v1/orders/{order_id}", get_order, name="get_order")
    app.router.add_post("/v1/orders/{order_id}/refunds", create_refund, name="create_refund")
    app.router.add_get("/v1/orders/{order_id}/refunds", list_refunds, name="list_refunds")
    app.router.add_post("/v1/notify/{channel}", channel_notify, name="notify")
    app.router.add_get("/v1/openapi.json", openapi, name="openapi")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics, name="metrics")
