"""Operator routes under /v1/ops (API.md, "Operations"): reconciliation reports and runs, and
merchant events given up on.

Operators sign their requests exactly as merchant apps do (X-Paycell-App / -Timestamp / -Nonce /
-Signature, API.md), with `ops.operator_id` and `ops.operator_secret`. The two credential sets are
separate: a merchant app's signature is refused here (401) and the operator is no merchant app.
Authentication comes first, so nothing about channels or reports leaks to an unsigned caller.

  GET  /v1/ops/reconciliation/{channel}/{date}              the day's last report (JSON)
  GET  /v1/ops/reconciliation/{channel}/{date}?format=text  the same as a readable summary
  POST /v1/ops/reconciliation/{channel}/{date}              run it, or join the run in progress:
                                                            202 with the report so far
  GET  /v1/ops/events/dead?limit=                           dead or refused merchant events,
                                                            newest first (gateway/dead_events.py)
  POST /v1/ops/events/{event_id}/replay                     put one back on the schedule (same
                                                            event id); idempotent
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Protocol

import orjson
from aiohttp import web

from actors.reconcile_report import render_text
from actors.reconcile_store import ReportStore
from actors.reconciler import parse_day
from core.errors import NotFound, PaycellError, ValidationError, error_for_code
from gateway import keys
from gateway.auth import authenticate
from gateway.dead_events import DeadEvents, parse_limit

PATH = "/v1/ops/reconciliation/{channel}/{date}"
DEAD_EVENTS_PATH = "/v1/ops/events/dead"
REPLAY_PATH = "/v1/ops/events/{event_id}/replay"
FORMATS = ("json", "text")


STATS_TIMEOUT_S = 2.0      # /metrics waits this long for the reconciler's counters


class ReconcilerPort(Protocol):
    """actors.client.ReconcilerClient, or a test double."""
    async def start(self, channel: str, day: str) -> dict[str, Any]: ...
    async def stats(self) -> dict[str, Any]: ...


class ReportsPort(Protocol):
    async def load(self, channel: str, day: str) -> dict[str, Any] | None: ...


class DeadEventsPort(Protocol):
    """gateway.dead_events.DeadEvents, or a test double."""
    async def list_dead(self, limit: int) -> dict[str, Any]: ...
    async def replay(self, event_id: str, now: float) -> dict[str, Any]: ...


RECONCILER = web.AppKey("reconciler", ReconcilerPort)
REPORTS = web.AppKey("reconciliation_reports", ReportsPort)
DEAD_EVENTS = web.AppKey("dead_events", DeadEventsPort)


async def _operator(request: web.Request, body: bytes) -> None:
    app = request.app
    s = app[keys.SETTINGS]
    await authenticate(request.headers, request.method, request.raw_path, body,
                       {s.ops.operator_id: s.ops.operator_secret.reveal()}, app[keys.NONCES],
                       app[keys.CLOCK].time(), s.gateway.auth_window_s)


def _target(request: web.Request) -> tuple[str, str]:
    channel, day = request.match_info["channel"], request.match_info["date"]
    if channel not in request.app[keys.NOTIFIERS]:
        raise NotFound("no such channel")
    parse_day(day, request.app[keys.CLOCK].now().date())
    return channel, day


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def get_reconciliation(request: web.Request) -> web.Response:
    await _operator(request, b"")
    channel, day = _target(request)
    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        raise ValidationError("format must be json or text", field="format")
    report = await request.app[REPORTS].load(channel, day)
    if report is None:
        raise NotFound(f"no reconciliation of {channel} for {day} yet (POST runs it)")
    if fmt == "text":
        return web.Response(text=render_text(report), content_type="text/plain")
    return _json(report)


async def run_reconciliation(request: web.Request) -> web.Response:
    body = await request.read()
    await _operator(request, body)
    channel, day = _target(request)
    reply = await request.app[RECONCILER].start(channel, day)
    if "error" in reply:
        raise error_for_code(reply["error"], reply.get("detail", ""), reply.get("retry_after_s"))
    response = _json(reply, 202 if reply["status"] == "running" else 200)
    response.headers["Location"] = request.path
    return response


async def list_dead_events(request: web.Request) -> web.Response:
    await _operator(request, b"")
    limit = parse_limit(request.query.get("limit"))
    return _json(await request.app[DEAD_EVENTS].list_dead(limit))


async def replay_event(request: web.Request) -> web.Response:
    body = await request.read()
    await _operator(request, body)
    return _json(await request.app[DEAD_EVENTS].replay(request.match_info["event_id"],
                                                       request.app[keys.CLOCK].time()))


async def refresh_reconciler_metrics(app: web.Application) -> None:
    """The reconciler actor's counters for /metrics (gateway.metrics.ReconcilerMetrics); left
    as they were when it does not answer in time."""
    try:
        stats = await asyncio.wait_for(app[RECONCILER].stats(), STATS_TIMEOUT_S)
    except (PaycellError, asyncio.TimeoutError):
        return
    app[keys.METRICS].reconciler.update(stats)


def add_ops_routes(app: web.Application) -> None:
    """The operator routes, and their resources (unless a test injected them)."""
    async def resources(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        if REPORTS not in app:
            app[REPORTS] = ReportStore(app[keys.REDIS], settings.orders.set_name,
                                       settings.reconcile.report_ttl_days)
        if RECONCILER not in app:
            from actors.client import ReconcilerClient
            app[RECONCILER] = ReconcilerClient(settings)
        if DEAD_EVENTS not in app:
            app[DEAD_EVENTS] = DeadEvents(app[keys.REDIS], settings)
        yield

    app.cleanup_ctx.append(resources)
    app.router.add_get(PATH, get_reconciliation, name="ops_reconciliation_get")
    app.router.add_post(PATH, run_reconciliation, name="ops_reconciliation_run")
    app.router.add_get(DEAD_EVENTS_PATH, list_dead_events, name="ops_dead_events")
    app.router.add_post(REPLAY_PATH, replay_event, name="ops_event_replay")
