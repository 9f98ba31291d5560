"""Problem documents: fields, status from the code table, headers and serialization."""
from __future__ import annotations

import orjson
import pytest

from core import errors
from core.errors import (HTTP_STATUS, IdempotencyConflict, NotFound, Overloaded, PaycellError,
                         RateLimited, Unauthenticated, Unavailable, ValidationError)
from gateway.problems import problem_body, problem_response


def test_validation_problem_has_errors() -> None:
    err = ValidationError("invalid field(s): amount",
                          errors=[{"field": "amount", "message": "must be an integer"}])
    assert problem_body(err, "req-1") == {
        "type": "https://paycell.dev/problems/invalid_request",
        "title": "Invalid request", "status": 400, "detail": "invalid field(s): amount",
        "code": "invalid_request", "request_id": "req-1",
        "errors": [{"field": "amount", "message": "must be an integer"}],
    }


def test_problem_without_field_errors_has_no_errors_key() -> None:
    body = problem_body(Unauthenticated("nonce already used"), "req-2")
    assert body == {"type": "https://paycell.dev/problems/unauthenticated",
                    "title": "Authentication failed", "status": 401,
                    "detail": "nonce already used", "code": "unauthenticated",
                    "request_id": "req-2"}


def test_detail_defaults_to_title() -> None:
    assert problem_body(NotFound(), "r")["detail"] == "Not found"


def _all_error_classes() -> list[type[PaycellError]]:
    out, todo = [], [PaycellError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_has_a_status(cls: type[PaycellError]) -> None:
    err = cls("x")
    assert problem_body(err, "r")["status"] == HTTP_STATUS[cls.code]
    assert 400 <= problem_body(err, "r")["status"] <= 599


def test_bad_input_is_never_5xx() -> None:
    for cls in (ValidationError, Unauthenticated, NotFound, IdempotencyConflict,
                errors.PayloadTooLarge, errors.UnsupportedMediaType):
        assert 400 <= problem_body(cls("x"), "r")["status"] < 500


async def test_response_headers_and_body() -> None:
    resp = problem_response(IdempotencyConflict("different body"), "req-9")
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"
    assert resp.headers["X-Request-Id"] == "req-9"
    assert "Retry-After" not in resp.headers
    assert isinstance(resp.body, bytes)
    assert orjson.loads(resp.body) == problem_body(IdempotencyConflict("different body"), "req-9")


@pytest.mark.parametrize("err, status, retry_after", [
    (Unavailable("redis down"), 503, "1"),
    (Overloaded("queue full"), 503, "1"),
    (RateLimited("slow down"), 429, "1"),
    (RateLimited("slow down", retry_after_s=7), 429, "7"),
    (Unavailable("restarting", retry_after_s=30), 503, "30"),
])
async def test_retry_after(err: PaycellError, status: int, retry_after: str) -> None:
    resp = problem_response(err, "r")
    assert resp.status == status
    assert resp.headers["Retry-After"] == retry_after
    assert orjson.loads(resp.body)["code"] == err.code  # type: ignore[arg-type]


async def test_non_ascii_detail_round_trips() -> None:
    resp = problem_response(ValidationError("金额无效", field="amount"), "r")
    assert orjson.loads(resp.body)["detail"] == "金额无效"  # type: ignore[arg-type]
