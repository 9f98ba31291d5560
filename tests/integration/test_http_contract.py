"""The running gateway against ../shared/API.md: errors, limits, tenancy, and its OpenAPI document."""
import secrets

import aiohttp
import jsonschema
import orjson
import pytest

from gateway.client import PaycellClient, signed_headers
from gateway.openapi import json_schema
from tests.integration.test_order_path import body, client

pytestmark = pytest.mark.integration


async def raw(stack, method, path, data=b"", headers=None):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, stack["url"] + path, data=data, headers=headers or {}) as r:
            return r.status, r.headers, await r.read()


def problem(status, headers, content, code):
    assert headers["Content-Type"].startswith("application/problem+json"), headers
    p = orjson.loads(content)
    assert (p["status"], p["code"]) == (status, code), p
    assert p["request_id"] == headers["X-Request-Id"] and p["title"] and p["type"]
    return p


async def test_unsigned_request_is_401_problem_and_creates_nothing(stack):
    b = body()
    status, headers, content = await raw(stack, "POST", "/v1/orders", orjson.dumps(b),
                                         {"Content-Type": "application/json"})
    assert status == 401
    problem(401, headers, content, "unauthenticated")
    async with client(stack) as c:
        assert (await c.find_order(b["out_trade_no"]))[0] == 404


async def test_wrong_secret_is_401(stack):
    async with PaycellClient(stack["url"], "demo-app", "not-the-secret") as c:
        status, p = await c.create_order(body())
    assert status == 401 and p["code"] == "unauthenticated"


async def test_body_over_the_limit_is_413(stack):
    big = orjson.dumps({**body(), "subject": "x" * stack["settings"].gateway.body_max_bytes})
    h = signed_headers("demo-app", "demo-secret", "POST", "/v1/orders", big)
    status, headers, content = await raw(stack, "POST", "/v1/orders", big,
                                         {**h, "Content-Type": "application/json"})
    assert status == 413
    problem(413, headers, content, "payload_too_large")


async def test_wrong_content_type_is_415(stack):
    data = orjson.dumps(body())
    h = signed_headers("demo-app", "demo-secret", "POST", "/v1/orders", data)
    status, headers, content = await raw(stack, "POST", "/v1/orders", data,
                                         {**h, "Content-Type": "text/plain"})
    assert status == 415
    problem(415, headers, content, "unsupported_media_type")


@pytest.mark.parametrize("data,field", [
    (b"{not json", None),
    (b'{"out_trade_no": "a", "out_trade_no": "b"}', None),
    (orjson.dumps({**body(), "amount": 6.5}), "amount"),
    (orjson.dumps({**body(), "amount": -1}), "amount"),
    (orjson.dumps({**body(), "currency": "XXX"}), "currency"),
    (orjson.dumps({**body(), "out_trade_no": "bad key!"}), "out_trade_no"),
    (orjson.dumps({**body(), "channel": "nope"}), "channel"),
])
async def test_bad_input_is_400_with_the_field_and_never_5xx(stack, data, field):
    h = signed_headers("demo-app", "demo-secret", "POST", "/v1/orders", data)
    status, headers, content = await raw(stack, "POST", "/v1/orders", data,
                                         {**h, "Content-Type": "application/json"})
    assert status == 400
    p = problem(400, headers, content, "invalid_request")
    if field:
        assert field in {e["field"] for e in p["errors"]}, p


async def test_another_apps_order_is_404_and_unknown_routes_are_problems(stack):
    async with client(stack) as c:
        _, o = await c.create_order(body())
    secrets_ = stack["settings"].app_secrets()
    assert "demo-app" in secrets_
    async with PaycellClient(stack["url"], "demo-app", "demo-secret") as c:
        assert (await c.get_order("P_local_s0_1_zzzzzzzzzzzzzzzzzzzz"))[0] == 404
        assert (await c.get_order("not-an-order-id"))[0] == 404
    status, headers, content = await raw(stack, "GET", "/v2/nothing")
    assert status == 404
    problem(404, headers, content, "not_found")
    status, headers, content = await raw(stack, "DELETE", "/v1/orders")
    assert status == 405
    problem(405, headers, content, "method_not_allowed")


async def test_request_id_is_echoed(stack):
    rid = "req-" + secrets.token_hex(4)
    status, headers, _ = await raw(stack, "GET", "/healthz", headers={"X-Request-Id": rid})
    assert status == 200 and headers["X-Request-Id"] == rid


async def test_responses_match_the_served_openapi_document(stack):
    status, _, content = await raw(stack, "GET", "/v1/openapi.json")
    assert status == 200
    doc = orjson.loads(content)
    assert doc["openapi"].startswith("3.") and "/v1/orders" in doc["paths"]
    order_schema, problem_schema = json_schema(doc, "Order"), json_schema(doc, "Problem")
    async with client(stack) as c:
        for amount in (600, 1001, 1003):
            s, o = await c.create_order(body(amount=amount))
            assert s in (200, 202)
            jsonschema.validate(o, order_schema)
        s, p = await c.create_order({**body(), "amount": "six"})
        assert s == 400
        jsonschema.validate(p, problem_schema)


async def test_ready_and_metrics(stack):
    status, _, content = await raw(stack, "GET", "/readyz")
    ready = orjson.loads(content)
    assert status == 200 and ready["status"] == "ready"
    assert set(ready["checks"]) == {"redis"} | {f"shard{i}" for i in
                                                range(stack["settings"].orders.shard_count)}
    status, headers, content = await raw(stack, "GET", "/metrics")
    text = content.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'paycell_gateway_requests_total{route="create_order",status="200"}' in text
    assert "paycell_gateway_request_duration_seconds_bucket" in text
    # each shard host reports its collector's pauses (core.heap, started once it was up)
    young = [line for line in text.splitlines() if line.startswith(
        'paycell_gc_pause_seconds_count{generation="0",process="host-0"}')]
    assert len(young) == 1 and float(young[0].split()[-1]) > 0, young
