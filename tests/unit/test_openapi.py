"""The OpenAPI document: a structural walk (every $ref resolves, every path parameter declared,
the routes of API.md present) and real payloads validated against its component schemas."""
from __future__ import annotations

import re
from typing import Any, Iterator

import orjson
import pytest
from jsonschema import Draft4Validator

from core.errors import RateLimited, ValidationError
from core.order import CreateOrder, Order
from core.states import Fact, Rung
from gateway.openapi import json_schema, openapi_document
from gateway.problems import problem_body
try:  # the shared cases live in the sibling test module, whichever way pytest imports it
    from tests.unit.test_validation import BAD_FIELDS, GOOD
except ImportError:
    from test_validation import BAD_FIELDS, GOOD  # type: ignore[no-redef]

SERVER = "http://127.0.0.1:8080"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
EXPECTED_ROUTES = {("post", "/v1/orders"), ("get", "/v1/orders"),
                   ("get", "/v1/orders/{order_id}"), ("post", "/v1/notify/{channel}"),
                   ("post", "/v1/orders/{order_id}/refunds"),
                   ("get", "/v1/orders/{order_id}/refunds"),
                   ("get", "/healthz"), ("get", "/readyz"), ("get", "/v1/openapi.json")}
PUBLIC_ROUTES = {("post", "/v1/notify/{channel}"), ("get", "/healthz"), ("get", "/readyz"),
                 ("get", "/v1/openapi.json")}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi_document(SERVER, channels=("alipay", "sandbox"))


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def deref(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


def walk_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            assert set(node) == {"$ref"}, f"siblings next to $ref are ignored in 3.0: {node}"
            yield node["$ref"]
        for value in node.values():
            yield from walk_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_refs(item)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert method in METHODS, (path, method)
            yield method, path, op


def test_top_level(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.0.3"
    assert doc["info"]["title"] == "paycell" and isinstance(doc["info"]["version"], str)
    assert doc["servers"] == [{"url": SERVER}]
    assert orjson.loads(orjson.dumps(doc)) == doc  # plain JSON, serves as-is


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = list(walk_refs(doc))
    assert len(refs) > 40
    for ref in refs:
        resolve(doc, ref)


def test_every_component_is_used(doc: dict[str, Any]) -> None:
    used = set(walk_refs(doc))
    for kind in ("schemas", "responses", "parameters", "headers"):
        for name in doc["components"][kind]:
            assert f"#/components/{kind}/{name}" in used, f"unused component {kind}/{name}"


def test_routes_are_those_of_api_md(doc: dict[str, Any]) -> None:
    assert {(m, p) for m, p, _ in operations(doc)} == EXPECTED_ROUTES


def test_operations_are_well_formed(doc: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    for method, path, op in operations(doc):
        assert op["responses"], (method, path)
        for status, response in op["responses"].items():
            assert re.fullmatch(r"[1-5][0-9][0-9]", status), (path, status)
            response = deref(doc, response)
            assert response["description"], (path, status)
            for media in response.get("content", {}).values():
                assert "schema" in media
        body = op.get("requestBody")
        if body is not None:
            assert body["content"], path


def test_path_parameters_match_templates(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        params = [deref(doc, p) for p in op.get("parameters", [])]
        for p in params:
            assert p["in"] in ("path", "query", "header", "cookie") and "schema" in p
        declared = {p["name"] for p in params if p["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), (method, path)
        assert all(p["required"] for p in params if p["in"] == "path")


def test_security(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert {s["name"] for s in schemes.values()} == {
        "X-Paycell-App", "X-Paycell-Timestamp", "X-Paycell-Nonce", "X-Paycell-Signature"}
    assert all(s["type"] == "apiKey" and s["in"] == "header" for s in schemes.values())
    assert doc["security"] == [{name: [] for name in schemes}]  # one requirement: all four
    for method, path, op in operations(doc):
        assert ("security" in op and op["security"] == []) == ((method, path) in PUBLIC_ROUTES)


def test_documented_statuses(doc: dict[str, Any]) -> None:
    create = doc["paths"]["/v1/orders"]["post"]["responses"]
    assert {"200", "202", "400", "401", "409", "413", "415", "429", "503"} <= set(create)
    all_statuses = {s for _, _, op in operations(doc) for s in op["responses"]}
    assert {"200", "202", "400", "401", "404", "409", "413", "415", "429", "503"} <= all_statuses
    problem = deref(doc, create["503"])
    assert set(problem["headers"]) == {"X-Request-Id", "Retry-After"}
    assert "application/problem+json" in problem["content"]


@pytest.mark.parametrize("name", ["CreateOrderRequest", "Order", "Problem", "Payment", "Device",
                                  "CreateRefundRequest", "Refund", "RefundList"])
def test_component_schemas_are_valid_json_schema(doc: dict[str, Any], name: str) -> None:
    Draft4Validator.check_schema(json_schema(doc, name))


def validator(doc: dict[str, Any], name: str) -> Draft4Validator:
    return Draft4Validator(json_schema(doc, name), format_checker=Draft4Validator.FORMAT_CHECKER)


def make_order(payment_type: str = "barcode") -> Order:
    cmd = CreateOrder(app_id="demo-app", out_trade_no="g-1", user_id="u-1", amount=600,
                      currency="CNY", subject="60 gems", channel="alipay",
                      payment_type=payment_type)
    return Order.new("P_local_s0_1_0mhzs5c0000000000000001", cmd, now=1_764_000_000.0)


def test_real_orders_match_order_schema(doc: dict[str, Any]) -> None:
    v = validator(doc, "Order")
    pending = make_order()
    paid, _ = pending.learn(Fact.PAID, Rung.SYNC, 1_764_000_001.0, channel_trade_no="2025x")
    failed, _ = pending.learn(Fact.DECLINED, Rung.QUERY, 1_764_000_002.0,
                              failure_code="BALANCE", failure_message="not enough")
    for order in (pending, paid, failed):
        body = order.to_api()
        assert list(v.iter_errors(body)) == [], body
    assert failed.to_api()["failure"] == {"code": "BALANCE", "message": "not enough"}
    assert not v.is_valid({**paid.to_api(), "status": "PAID"})
    assert not v.is_valid({**paid.to_api(), "resolved_by": "guess"})
    assert not v.is_valid({k: x for k, x in paid.to_api().items() if k != "channel_trade_no"})


def test_real_problems_match_problem_schema(doc: dict[str, Any]) -> None:
    v = validator(doc, "Problem")
    field_error = ValidationError("bad", errors=[{"field": "amount", "message": "integer"}])
    for err in (field_error, RateLimited("slow")):
        assert list(v.iter_errors(problem_body(err, "req-1"))) == []
    assert not v.is_valid({"type": "x", "status": 400})


def test_good_create_request_matches_schema(doc: dict[str, Any]) -> None:
    v = validator(doc, "CreateOrderRequest")
    assert list(v.iter_errors(GOOD)) == []
    assert v.is_valid({"out_trade_no": "g", "user_id": "u", "amount": 1, "currency": "USD",
                       "subject": "s", "payment": {"type": "app"}})


# Rules the gateway enforces in code that JSON Schema here does not express. (The newline case:
# Python's `$`, used by jsonschema, matches before a final newline; ECMA-262's does not.)
NOT_EXPRESSIBLE = {"user_id control", "notify_url no host", "notify_url space",
                   "notify_url bad port", "out_trade_no newline"}


EXPRESSIBLE = [c for c in BAD_FIELDS if c[0] not in NOT_EXPRESSIBLE]


@pytest.mark.parametrize("case, body, field", EXPRESSIBLE, ids=[c[0] for c in EXPRESSIBLE])
def test_schema_refuses_what_the_validator_refuses(doc: dict[str, Any], case: str,
                                                   body: dict[str, Any], field: str) -> None:
    assert not validator(doc, "CreateOrderRequest").is_valid(body), case


# ---- refunds -----------------------------------------------------------------------------------

def test_real_refunds_and_their_list_match_the_schemas(doc: dict[str, Any]) -> None:
    from core.refund import CreateRefund, Refund, RefundStatus
    paid, _ = make_order().learn(Fact.PAID, Rung.SYNC, 1_764_000_001.0, channel_trade_no="T")
    cmd = CreateRefund("demo-app", paid.order_id, "rf-1", 200, "late")
    pending = Refund.new("R_local_s0_1_0mhzs5c0000000000000002", cmd, paid, 1_764_000_002.0)
    done, _ = pending.learn(RefundStatus.SUCCEEDED, Rung.QUERY, 1_764_000_003.0,
                            channel_refund_no="CR1")
    failed, _ = pending.learn(RefundStatus.FAILED, Rung.SYNC, 1_764_000_003.0,
                              failure_code="AMT", failure_message="too much")
    v = validator(doc, "Refund")
    for r in (pending, done, failed):
        assert list(v.iter_errors(r.to_api())) == [], r
    assert not v.is_valid({**done.to_api(), "status": "DONE"})
    assert not v.is_valid({k: x for k, x in done.to_api().items() if k != "out_refund_no"})
    listing = {"order_id": paid.order_id, "amount": 600, "currency": "CNY",
               "refunded_amount": 200, "refunds": [done.to_api(), failed.to_api()]}
    assert list(validator(doc, "RefundList").iter_errors(listing)) == []
    assert not validator(doc, "RefundList").is_valid({**listing, "refunds": [{"x": 1}]})


def test_refund_statuses_and_problem_codes_are_documented(doc: dict[str, Any]) -> None:
    from core.errors import HTTP_STATUS
    create = doc["paths"]["/v1/orders/{order_id}/refunds"]["post"]["responses"]
    assert {"200", "202", "400", "401", "404", "409", "413", "415", "422", "429", "503"} == \
        set(create)
    for code in ("order_not_refundable", "idempotency_conflict", "refund_exceeds_paid",
                 "refund_window_closed", "too_many_refunds"):
        status = str(HTTP_STATUS[code])
        assert f"`{code}`" in deref(doc, create[status])["description"], code
    listing = doc["paths"]["/v1/orders/{order_id}/refunds"]["get"]["responses"]
    assert deref(doc, listing["200"])["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RefundList"}


def test_refund_request_schema_refuses_what_the_validator_refuses(doc: dict[str, Any]) -> None:
    try:
        from tests.unit.test_validation import BAD_REFUNDS, GOOD_REFUND
    except ImportError:
        from test_validation import BAD_REFUNDS, GOOD_REFUND  # type: ignore[no-redef]
    v = validator(doc, "CreateRefundRequest")
    assert list(v.iter_errors(GOOD_REFUND)) == []
    for case, body, _ in BAD_REFUNDS:
        if case == "reason control":   # a code-only rule (see NOT_EXPRESSIBLE)
            continue
        assert not v.is_valid(body), case
