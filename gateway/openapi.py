"""The OpenAPI 3.0.3 document of the routes the gateway serves (API.md is the source of truth).

Built from plain functions so tests can walk it; ``json_schema`` turns one component schema into a
self-contained JSON Schema (refs inlined, ``nullable`` spelled as a ``null`` type) for checking
real responses with ``jsonschema``.
"""
from __future__ import annotations

import copy
from typing import Any, Collection

from core.money import AMOUNT_MINOR_MAX, CURRENCY_EXPONENT
from core.refund import RefundStatus
from core.states import OrderStatus, Rung
from gateway import validation as v

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1"
SCHEMA_REF = "#/components/schemas/"
RESPONSE_REF = "#/components/responses/"
AUTH_HEADERS = {
    "PaycellApp": ("X-Paycell-App", "The merchant app id."),
    "PaycellTimestamp": ("X-Paycell-Timestamp",
                         "Unix time in seconds, within 300 s of the server clock."),
    "PaycellNonce": ("X-Paycell-Nonce", "16-64 of [A-Za-z0-9], never reused within the window."),
    "PaycellSignature": ("X-Paycell-Signature",
                         "Lowercase hex HMAC-SHA256(app secret, METHOD\\nPATH_WITH_QUERY\\n"
                         "TIMESTAMP\\nNONCE\\nSHA256_HEX_OF_BODY\\n)."),
}
ERROR_RESPONSES = {
    "400": ("BadRequest", "The request is invalid; `errors` lists each field problem."),
    "401": ("Unauthenticated", "Missing or wrong credentials, stale timestamp or reused nonce."),
    "404": ("NotFound", "No such resource for this app."),
    "409": ("IdempotencyConflict", "The out_trade_no was used with a different body."),
    "413": ("PayloadTooLarge", "The body is larger than the gateway accepts."),
    "415": ("UnsupportedMediaType", "The body must be application/json."),
    "422": ("Unprocessable", "Refused by risk control (`risk_rejected`), or no enabled channel "
                             "takes this payment (`no_channel`)."),
    "429": ("RateLimited", "Too many requests; retry after Retry-After seconds."),
    "503": ("Unavailable", "Temporarily unavailable or at a bound; retry after Retry-After."),
}
# The refund endpoint's own meanings of 409 and 422 (the `code` says which).
REFUND_ERROR_RESPONSES = {
    "409": ("RefundConflict",
            "`idempotency_conflict`: the out_refund_no was used for this order with a different "
            "body; `order_not_refundable`: the order is not SUCCEEDED (nothing was changed)."),
    "422": ("RefundRefused",
            "Nothing was changed. `refund_exceeds_paid`: the refunds would add up to more than "
            "the paid amount (PENDING refunds count); `refund_window_closed`: the channel's "
            "refund window after the payment is over; `too_many_refunds`: the payment has as "
            "many refunds as the channel allows (FAILED ones aside) or paycell keeps per order."),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF + name}


def _string(pattern: str | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **extra}
    if pattern is not None:
        schema["pattern"] = pattern
    return schema


def create_order_schema(channels: Collection[str] | None) -> dict[str, Any]:
    channel = _string(description="Optional: without it paycell chooses the channel.")
    if channels:
        channel["enum"] = sorted(channels)
    return {
        "type": "object", "additionalProperties": False,
        "required": list(v.REQUIRED_FIELDS),
        "properties": {
            "out_trade_no": _string(f"^{v.OUT_TRADE_NO_RE.pattern}$",
                                    description="The merchant's idempotency key."),
            "user_id": _string(r"^\S+$", minLength=1, maxLength=v.USER_ID_LEN_MAX,
                               description="Printable characters, no spaces."),
            "amount": {"type": "integer", "format": "int64", "minimum": 1,
                       "maximum": AMOUNT_MINOR_MAX, "description": "Minor units of currency."},
            "currency": _string(enum=sorted(CURRENCY_EXPONENT)),
            "subject": _string(minLength=1, maxLength=v.SUBJECT_LEN_MAX),
            "channel": channel,
            "payment": _ref("Payment"),
            "device": _ref("Device"),
            "region": _string(f"^{v.REGION_RE.pattern}$"),
            "country": _string(f"^{v.COUNTRY_RE.pattern}$",
                               description="The payer's country (ISO 3166 alpha-2), for "
                                           "choosing a channel that serves it."),
            "notify_url": _string("^https?://", format="uri", maxLength=v.NOTIFY_URL_LEN_MAX),
        },
    }


def payment_schemas() -> dict[str, dict[str, Any]]:
    return {
        "Payment": {
            "oneOf": [_ref("BarcodePayment"), _ref("AppPayment"), _ref("NativePayment"),
                      _ref("CardPayment")],
            "discriminator": {"propertyName": "type", "mapping": {
                "barcode": SCHEMA_REF + "BarcodePayment", "app": SCHEMA_REF + "AppPayment",
                "native": SCHEMA_REF + "NativePayment", "card": SCHEMA_REF + "CardPayment"}},
        },
        "NativePayment": {
            "type": "object", "additionalProperties": False, "required": ["type"],
            "description": "A QR code the payer scans (pay_data.code_url); completed "
                           "asynchronously.",
            "properties": {"type": _string(enum=["native"])},
        },
        "CardPayment": {
            "type": "object", "additionalProperties": False, "required": ["type", "token"],
            "description": "An off-session charge of the payer's saved card or wallet: the "
                           "channel's saved payment method / vault id. Never stored.",
            "properties": {"type": _string(enum=["card"]),
                           "token": _string(f"^{v.PAYMENT_TOKEN_RE.pattern}$")},
        },
        "BarcodePayment": {
            "type": "object", "additionalProperties": False, "required": ["type", "auth_code"],
            "description": "A synchronous deduction with the payer's one-time code.",
            "properties": {"type": _string(enum=["barcode"]),
                           "auth_code": _string(f"^{v.AUTH_CODE_RE.pattern}$")},
        },
        "AppPayment": {
            "type": "object", "additionalProperties": False, "required": ["type"],
            "description": "Prepay data for the client SDK; completed asynchronously.",
            "properties": {"type": _string(enum=["app"])},
        },
        "Device": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "fingerprint": _string(maxLength=v.FINGERPRINT_LEN_MAX),
                "ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
            },
        },
    }


def order_schema() -> dict[str, Any]:
    final_rungs: list[Any] = [r.value for r in Rung]
    return {
        "type": "object",
        "required": ["order_id", "app_id", "out_trade_no", "status", "amount", "currency",
                     "channel", "channel_trade_no", "resolved_by", "created_at", "updated_at",
                     "refunded_amount"],
        "properties": {
            "order_id": _string(), "app_id": _string(), "out_trade_no": _string(),
            "status": _string(enum=[s.value for s in OrderStatus]),
            "amount": {"type": "integer", "format": "int64", "minimum": 1},
            "currency": _string(enum=sorted(CURRENCY_EXPONENT)),
            "channel": _string(),
            "channel_trade_no": _string(nullable=True),
            "resolved_by": _string(nullable=True, enum=final_rungs + [None],
                                   description="How the order became final; null until then."),
            "created_at": _string(format="date-time"),
            "updated_at": _string(format="date-time"),
            "refunded_amount": {"type": "integer", "format": "int64", "minimum": 0,
                                "description": "The sum of the order's SUCCEEDED refunds."},
            "failure": {"type": "object", "required": ["code", "message"],
                        "properties": {"code": _string(), "message": _string()},
                        "description": "Present when status is FAILED."},
            "pay_data": {"type": "object", "additionalProperties": _string(),
                         "description": "app / native payments: what the payer's app needs "
                                        "(prepay_id, code_url, signed pay parameters)."},
            "tried_channels": {"type": "array", "items": _string(),
                               "description": "Channels paycell chose first that certainly "
                                              "did not charge (declined or unreachable)."},
        },
    }


def create_refund_schema() -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False,
        "required": list(v.REFUND_REQUIRED_FIELDS),
        "properties": {
            "out_refund_no": _string(f"^{v.OUT_REFUND_NO_RE.pattern}$",
                                     description="The merchant's idempotency key for this "
                                                 "refund, unique per order."),
            "amount": {"type": "integer", "format": "int64", "minimum": 1,
                       "maximum": AMOUNT_MINOR_MAX,
                       "description": "Minor units of the order's currency; all refunds of an "
                                      "order add up to at most its amount."},
            "reason": _string(maxLength=v.REASON_LEN_MAX,
                              description="Optional; passed to the channel where it takes one."),
        },
    }


def refund_schema() -> dict[str, Any]:
    final_rungs: list[Any] = [r.value for r in Rung]
    return {
        "type": "object",
        "required": ["refund_id", "order_id", "out_refund_no", "amount", "currency", "status",
                     "reason", "resolved_by", "channel_refund_no", "created_at", "updated_at"],
        "properties": {
            "refund_id": _string(description="paycell's id (R_<region>_<set>_<shard>_<token>), "
                                             "the channel's merchant refund number."),
            "order_id": _string(), "out_refund_no": _string(),
            "amount": {"type": "integer", "format": "int64", "minimum": 1},
            "currency": _string(enum=sorted(CURRENCY_EXPONENT)),
            "status": _string(enum=[s.value for s in RefundStatus]),
            "reason": _string(),
            "resolved_by": _string(nullable=True, enum=final_rungs + [None],
                                   description="How the refund became final; null until then."),
            "channel_refund_no": _string(nullable=True,
                                         description="The channel's refund id, once known."),
            "created_at": _string(format="date-time"),
            "updated_at": _string(format="date-time"),
            "failure": {"type": "object", "required": ["code", "message"],
                        "properties": {"code": _string(), "message": _string()},
                        "description": "Present when status is FAILED (no money moved)."},
        },
    }


def refund_list_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["order_id", "amount", "currency", "refunded_amount", "refunds"],
        "properties": {
            "order_id": _string(),
            "amount": {"type": "integer", "format": "int64", "minimum": 1},
            "currency": _string(enum=sorted(CURRENCY_EXPONENT)),
            "refunded_amount": {"type": "integer", "format": "int64", "minimum": 0},
            "refunds": {"type": "array", "items": _ref("Refund"),
                        "description": "Oldest first."},
        },
    }


def problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail", "code", "request_id"],
        "properties": {
            "type": _string(format="uri"), "title": _string(),
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": _string(), "code": _string(description="Stable machine-readable code."),
            "request_id": _string(),
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["field", "message"],
                "properties": {"field": _string(), "message": _string()}}},
        },
    }


def components(channels: Collection[str] | None) -> dict[str, Any]:
    schemas = {"CreateOrderRequest": create_order_schema(channels), **payment_schemas(),
               "Order": order_schema(), "Problem": problem_schema(),
               "CreateRefundRequest": create_refund_schema(), "Refund": refund_schema(),
               "RefundList": refund_list_schema(),
               "Health": {"type": "object", "additionalProperties": True,
                          "properties": {"status": _string()}}}
    headers = {
        "RequestId": {"description": "The request id (echoed when the client sent one).",
                      "schema": _string()},
        "RetryAfter": {"description": "Seconds to wait before retrying.",
                       "schema": {"type": "integer", "minimum": 0}},
    }
    responses = {name: _problem_response(code, text)
                 for code, (name, text) in (*ERROR_RESPONSES.items(),
                                            *REFUND_ERROR_RESPONSES.items())}
    security = {scheme: {"type": "apiKey", "in": "header", "name": header, "description": text}
                for scheme, (header, text) in AUTH_HEADERS.items()}
    parameters = {
        "RequestIdHeader": {"name": "X-Request-Id", "in": "header", "required": False,
                            "schema": _string(maxLength=128)},
        "OrderId": {"name": "order_id", "in": "path", "required": True, "schema": _string()},
        "OutTradeNo": {"name": "out_trade_no", "in": "query", "required": True,
                       "schema": _string(f"^{v.OUT_TRADE_NO_RE.pattern}$")},
        "Channel": {"name": "channel", "in": "path", "required": True, "schema": _string()},
    }
    return {"schemas": schemas, "headers": headers, "responses": responses,
            "securitySchemes": security, "parameters": parameters}


def _problem_response(code: str, text: str) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
    if code in ("429", "503"):
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return {"description": text, "headers": headers,
            "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _json_response(text: str, schema_name: str) -> dict[str, Any]:
    return {"description": text,
            "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
            "content": {"application/json": {"schema": _ref(schema_name)}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": RESPONSE_REF + ERROR_RESPONSES[code][0]} for code in codes}


def _refund_errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": RESPONSE_REF + REFUND_ERROR_RESPONSES[code][0]} for code in codes}


def _param(name: str) -> dict[str, str]:
    return {"$ref": "#/components/parameters/" + name}


def order_paths() -> dict[str, Any]:
    order_ok = _json_response("The order, final (SUCCEEDED or FAILED) or otherwise current.",
                              "Order")
    create = {
        "operationId": "createOrder", "summary": "Create and pay an order (idempotent).",
        "tags": ["orders"], "parameters": [_param("RequestIdHeader")],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("CreateOrderRequest")}}},
        "responses": {
            "200": _json_response("The order reached a final state within the sync deadline.",
                                  "Order"),
            "202": _json_response("The order is PENDING (async, or awaiting the payer).", "Order"),
            **_errors("400", "401", "409", "413", "415", "422", "429", "503")},
    }
    find = {"operationId": "findOrder", "summary": "The order with this out_trade_no.",
            "tags": ["orders"], "parameters": [_param("OutTradeNo"), _param("RequestIdHeader")],
            "responses": {"200": order_ok, **_errors("400", "401", "404", "429", "503")}}
    get = {"operationId": "getOrder", "summary": "The order with this id.", "tags": ["orders"],
           "parameters": [_param("OrderId"), _param("RequestIdHeader")],
           "responses": {"200": order_ok, **_errors("401", "404", "429", "503")}}
    return {"/v1/orders": {"post": create, "get": find}, "/v1/orders/{order_id}": {"get": get},
            **refund_paths()}


def refund_paths() -> dict[str, Any]:
    create = {
        "operationId": "createRefund", "tags": ["refunds"],
        "summary": "Refund (part of) a SUCCEEDED order (idempotent on out_refund_no).",
        "description": "The refund is stored PENDING before the channel is called. Its answer "
                       "within the refund sync deadline gives 200 (SUCCEEDED or FAILED); "
                       "otherwise 202 PENDING, resolved by the channel's notification or by "
                       "querying it, and after the async window by reconciliation. The same "
                       "out_refund_no with the same body returns the same refund (its current "
                       "state).",
        "parameters": [_param("OrderId"), _param("RequestIdHeader")],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("CreateRefundRequest")}}},
        "responses": {
            "200": _json_response("The refund reached a final state (SUCCEEDED or FAILED).",
                                  "Refund"),
            "202": _json_response("The refund is PENDING (async).", "Refund"),
            **_errors("400", "401", "404"), **_refund_errors("409"), **_errors("413", "415"),
            **_refund_errors("422"), **_errors("429", "503")},
    }
    listing = {
        "operationId": "listRefunds", "tags": ["refunds"], "summary": "The order's refunds.",
        "parameters": [_param("OrderId"), _param("RequestIdHeader")],
        "responses": {"200": _json_response("The order's refunds, oldest first.", "RefundList"),
                      **_errors("401", "404", "429", "503")},
    }
    return {"/v1/orders/{order_id}/refunds": {"post": create, "get": listing}}


def public_paths() -> dict[str, Any]:
    notify = {
        "operationId": "channelNotify", "tags": ["channels"], "security": [],
        "summary": "A channel's payment callback, in that channel's own format.",
        "parameters": [_param("Channel")],
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "additionalProperties": {"type": "string"}}}}},
        "responses": {
            "200": {"description": "The channel's own acknowledgement (for Alipay: success).",
                    "content": {"text/plain": {"schema": _string()}}},
            **_errors("400", "404", "503")},
    }
    health = _json_response("Alive.", "Health")
    ready = _json_response("Ray, Redis and the shards are reachable.", "Health")
    not_ready = {**_json_response("Not ready.", "Health"),
                 "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"},
                             "Retry-After": {"$ref": "#/components/headers/RetryAfter"}}}
    spec = {"description": "This document.",
            "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "/v1/notify/{channel}": {"post": notify},
        "/healthz": {"get": {"operationId": "healthz", "tags": ["operations"], "security": [],
                             "summary": "Liveness.", "responses": {"200": health}}},
        "/readyz": {"get": {"operationId": "readyz", "tags": ["operations"], "security": [],
                            "summary": "Readiness.",
                            "responses": {"200": ready, "503": not_ready}}},
        "/v1/openapi.json": {"get": {"operationId": "openapi", "tags": ["operations"],
                                     "security": [], "summary": "This OpenAPI document.",
                                     "responses": {"200": spec}}},
    }


def openapi_document(server_url: str, channels: Collection[str] | None = None) -> dict[str, Any]:
    """The document served at GET /v1/openapi.json; ``channels`` narrows ``channel`` to an enum."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "paycell", "version": API_VERSION,
                 "description": "Payment orders for merchant apps. Amounts are integers in the "
                                "currency's minor unit; errors are application/problem+json."},
        "servers": [{"url": server_url}],
        "security": [{scheme: [] for scheme in AUTH_HEADERS}],
        "tags": [{"name": "orders"}, {"name": "refunds"}, {"name": "channels"},
                 {"name": "operations"}],
        "paths": {**order_paths(), **public_paths()},
        "components": components(channels),
    }


def json_schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    """Component schema ``name`` as plain JSON Schema: refs inlined, nullable as a null type."""
    schemas = document["components"]["schemas"]
    return _to_json_schema(copy.deepcopy(schemas[name]), schemas, depth=0)


def _to_json_schema(node: Any, schemas: dict[str, Any], depth: int) -> Any:
    assert depth < 32, "schema nesting too deep (a cycle?)"
    if isinstance(node, list):
        return [_to_json_schema(item, schemas, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = node["$ref"].removeprefix(SCHEMA_REF)
        return _to_json_schema(copy.deepcopy(schemas[target]), schemas, depth + 1)
    out = {key: _to_json_schema(value, schemas, depth + 1) for key, value in node.items()
           if key not in ("nullable", "discriminator")}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out
