"""/v1/ops/reconciliation over HTTP (aiohttp's test server), with the reconciler and the report
store replaced by doubles: operator credentials, validation, JSON and text reports, runs."""
from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.reconcile_report import Run
from core.clock import FakeClock
from core.settings import load_settings
from gateway.app import create_app
from gateway.auth import MemoryNonceStore
from gateway.client import signed_headers
from gateway.dead_events import DeadEvents, parse_limit
from gateway.ops import DEAD_EVENTS, RECONCILER, REPORTS

NOW = 1_795_665_600.0          # 2026-11-26T04:00:00Z
PATH = "/v1/ops/reconciliation/alipay/2026-11-25"
OPERATOR, SECRET = "local-operator", "local-operator-secret"


class Shards:
    """No order goes through these tests; the gateway only needs the methods to exist."""
    hosts = 1

    def host_of(self, shard: int) -> int:
        return 0

    async def ping(self, shard: int) -> dict[str, Any]:
        return {}

    async def host_ping(self, host: int) -> dict[str, Any]:
        return {}

    async def submit(self, host: int, tickets: Any, shards: Any, cmds: Any) -> list[Any]:
        raise AssertionError("no orders here")

    async def await_replies(self, host: int, tickets: Any) -> dict[str, Any]:
        raise AssertionError("no orders here")

    async def notify_many(self, host: int, tickets: Any, shards: Any, notes: Any) -> list[Any]:
        raise AssertionError("no orders here")


class Reconciler:
    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.answer: dict[str, Any] | None = None

    async def start(self, channel: str, day: str) -> dict[str, Any]:
        self.started.append((channel, day))
        if self.answer is not None:
            return self.answer
        return _report(status="running")


class Reports:
    def __init__(self) -> None:
        self.reports: dict[tuple[str, str], dict[str, Any]] = {}

    async def load(self, channel: str, day: str) -> dict[str, Any] | None:
        return self.reports.get((channel, day))


class NoRedis:
    """A Redis client that must not be called: bad input is refused before Redis is asked."""

    def register_script(self, _lua: str) -> Any:
        async def script(**_kw: Any) -> Any:
            raise AssertionError("Redis was called")
        return script

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Redis was called: {name}")


def _report(status: str = "complete") -> dict[str, Any]:
    from datetime import date
    run = Run("alipay", date(2026, 11, 25), "local", "s0", 1, NOW - 5)
    run.count("lines_parsed", 12)
    run.count("matched", 11)
    if status == "complete":
        run.finish(NOW)
    return run.to_json()


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient, Reconciler, Reports]]:
    settings = load_settings(env={})
    app = create_app(settings, shards=Shards(), nonces=MemoryNonceStore(1000), redis=object(),
                     clock=FakeClock(NOW))
    reconciler, reports = Reconciler(), Reports()
    app[RECONCILER] = reconciler
    app[REPORTS] = reports
    app[DEAD_EVENTS] = DeadEvents(NoRedis(), settings)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as c:
        yield c, reconciler, reports


def _signed(method: str, path: str, app_id: str = OPERATOR,
            secret: str = SECRET) -> dict[str, str]:
    return signed_headers(app_id, secret, method, path, b"", now=NOW)


async def test_no_credentials_or_a_merchants_are_refused(client: Any) -> None:
    c, reconciler, reports = client
    reports.reports[("alipay", "2026-11-25")] = _report()
    for headers in ({}, _signed("GET", PATH, "demo-app", "demo-secret"),
                    _signed("GET", PATH, OPERATOR, "wrong-secret-0123456")):
        r = await c.get(PATH, headers=headers)
        assert r.status == 401, headers
        assert (await r.json())["code"] == "unauthenticated"
    r = await c.post(PATH, headers=_signed("POST", PATH, "demo-app", "demo-secret"))
    assert r.status == 401 and reconciler.started == []
    r = await c.get("/v1/ops/reconciliation/nochannel/bad-day")   # auth before anything else
    assert r.status == 401


async def test_a_stored_report_as_json_and_as_text(client: Any) -> None:
    c, _, reports = client
    reports.reports[("alipay", "2026-11-25")] = _report()
    r = await c.get(PATH, headers=_signed("GET", PATH))
    assert r.status == 200 and r.content_type == "application/json"
    body = await r.json()
    assert (body["status"], body["counts"]["lines_parsed"], body["counts"]["matched"]) == (
        "complete", 12, 11)
    r = await c.get(PATH + "?format=text", headers=_signed("GET", PATH + "?format=text"))
    text = await r.text()
    assert r.status == 200 and r.content_type == "text/plain"
    assert text.startswith("Reconciliation of alipay for 2026-11-25") and "11 matched" in text


async def test_a_nonce_is_not_accepted_twice(client: Any) -> None:
    c, _, reports = client
    reports.reports[("alipay", "2026-11-25")] = _report()
    headers = _signed("GET", PATH)
    assert (await c.get(PATH, headers=headers)).status == 200
    assert (await c.get(PATH, headers=headers)).status == 401


@pytest.mark.parametrize("path,status,code", [
    ("/v1/ops/reconciliation/alipay/2026-11-24", 404, "not_found"),      # no report yet
    ("/v1/ops/reconciliation/visa/2026-11-25", 404, "not_found"),
    ("/v1/ops/reconciliation/alipay/2026-02-30", 400, "invalid_request"),
    ("/v1/ops/reconciliation/alipay/20261125", 400, "invalid_request"),
    ("/v1/ops/reconciliation/alipay/2026-11-27", 400, "invalid_request"),  # future
    (PATH + "?format=pdf", 400, "invalid_request"),
])
async def test_bad_requests_are_clear_4xx(client: Any, path: str, status: int, code: str) -> None:
    c, _, _ = client
    r = await c.get(path, headers=_signed("GET", path))
    assert r.status == status and (await r.json())["code"] == code


async def test_post_starts_the_run(client: Any) -> None:
    c, reconciler, _ = client
    r = await c.post(PATH, headers=_signed("POST", PATH))
    assert r.status == 202 and r.headers["Location"] == PATH
    assert (await r.json())["status"] == "running"
    assert reconciler.started == [("alipay", "2026-11-25")]
    bad = "/v1/ops/reconciliation/alipay/2026-11-31"
    assert (await c.post(bad, headers=_signed("POST", bad))).status == 400
    assert reconciler.started == [("alipay", "2026-11-25")]


async def test_a_refused_run_is_a_problem(client: Any) -> None:
    c, reconciler, _ = client
    reconciler.answer = {"error": "overloaded", "detail": "2 runs in progress",
                         "retry_after_s": 5}
    r = await c.post(PATH, headers=_signed("POST", PATH))
    assert r.status == 503 and r.headers["Retry-After"] == "5"
    assert (await r.json())["detail"] == "2 runs in progress"


# ---- dead merchant events (the real DeadEvents; bad input never reaches Redis) -----------------

EVENT = "ev_P_local_s0_1_0midc1zoem0ak6m9dt2_succeeded"


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/ops/events/dead"),
    ("POST", f"/v1/ops/events/{EVENT}/replay"),
])
async def test_dead_event_routes_need_operator_credentials(client: Any, method: str,
                                                           path: str) -> None:
    c, _, _ = client
    for headers in ({}, _signed(method, path, "demo-app", "demo-secret")):
        r = await c.request(method, path, headers=headers)
        assert r.status == 401 and (await r.json())["code"] == "unauthenticated"


@pytest.mark.parametrize("path,status,field", [
    ("/v1/ops/events/dead?limit=0", 400, "limit"),
    ("/v1/ops/events/dead?limit=1001", 400, "limit"),
    ("/v1/ops/events/dead?limit=ten", 400, "limit"),
    ("/v1/ops/events/dead?limit=-1", 400, "limit"),
])
async def test_a_bad_limit_is_400(client: Any, path: str, status: int, field: str) -> None:
    c, _, _ = client
    r = await c.get(path, headers=_signed("GET", path))
    body = await r.json()
    assert (r.status, body["code"], body["errors"][0]["field"]) == (status, "invalid_request",
                                                                    field)


@pytest.mark.parametrize("event_id,status,code", [
    ("nope", 400, "invalid_request"),
    ("ev_P_local_s0_1_0midc1zoem0ak6m9dt2_paid", 400, "invalid_request"),     # no such status
    ("ev_X_local_s0_1_0midc1zoem0ak6m9dt2_succeeded", 400, "invalid_request"),
    ("ev_P_local_s0_1_short_failed", 400, "invalid_request"),                 # not an order id
    ("ev_" + "P_local_s0_1_" + "a" * 90 + "_closed", 400, "invalid_request"),  # too long
    ("ev_P_local_other_1_0midc1zoem0ak6m9dt2_succeeded", 404, "not_found"),   # another SET
    ("ev_P_local_s0_7_0midc1zoem0ak6m9dt2_succeeded", 404, "not_found"),      # no shard 7
    ("ev_R_eu_s0_0_0midc1zoem0ak6m9dt2_failed", 404, "not_found"),            # another region
])
async def test_a_bad_event_id_is_a_clear_4xx_and_nothing_is_asked(client: Any, event_id: str,
                                                                  status: int,
                                                                  code: str) -> None:
    c, _, _ = client
    path = f"/v1/ops/events/{event_id}/replay"
    r = await c.post(path, headers=_signed("POST", path))
    body = await r.json()
    assert (r.status, body["code"]) == (status, code), body
    if status == 400:
        assert body["errors"][0]["field"] == "event_id"


def test_parse_limit() -> None:
    assert (parse_limit(None), parse_limit("1"), parse_limit("1000")) == (50, 1, 1000)
    for bad in ("", "0", "1001", "1.5", "٣", " 5"):
        with pytest.raises(Exception) as e:
            parse_limit(bad)
        assert getattr(e.value, "code", "") == "invalid_request", bad
