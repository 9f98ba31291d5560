"""Errors as RFC 9457 problem documents (``application/problem+json``), per API.md."""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from core.errors import PaycellError, http_status_for

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://paycell.dev/problems/"
REQUEST_ID_HEADER = "X-Request-Id"
RETRY_AFTER_DEFAULT_S = 1  # for 429 and 503 when the error names no delay
RETRY_STATUSES = frozenset({429, 503})


def problem_body(error: PaycellError, request_id: str) -> dict[str, Any]:
    """The problem document for ``error``; ``errors`` only when there are field errors."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.code,
        "title": error.title,
        "status": http_status_for(error),
        "detail": error.detail,
        "code": error.code,
        "request_id": request_id,
    }
    if error.errors:
        body["errors"] = [{"field": e["field"], "message": e["message"]} for e in error.errors]
    return body


def retry_after_s(error: PaycellError) -> int | None:
    """Seconds for ``Retry-After``: the error's own, else 1 for 429/503, else none."""
    if error.retry_after_s is not None:
        return max(0, int(error.retry_after_s))
    if http_status_for(error) in RETRY_STATUSES:
        return RETRY_AFTER_DEFAULT_S
    return None


def problem_response(error: PaycellError, request_id: str) -> web.Response:
    body = problem_body(error, request_id)
    headers = {REQUEST_ID_HEADER: request_id}
    delay = retry_after_s(error)
    if delay is not None:
        headers["Retry-After"] = str(delay)
    return web.Response(status=body["status"], body=orjson.dumps(body), headers=headers,
                        content_type=PROBLEM_CONTENT_TYPE)
