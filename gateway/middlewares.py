"""Request ids, problem+json errors and body limits, as aiohttp middlewares."""
from __future__ import annotations

import logging
import secrets
from typing import Awaitable, Callable

from aiohttp import web

from core.errors import (MethodNotAllowed, NotFound, PayloadTooLarge, PaycellError,
                         ValidationError)
from gateway.problems import problem_response

log = logging.getLogger("paycell.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_KEY = web.RequestKey("paycell_request_id", str)
_REQUEST_ID_MAX = 128


def _request_id(request: web.Request) -> str:
    rid = request.headers.get("X-Request-Id", "")
    if rid and len(rid) <= _REQUEST_ID_MAX and rid.isprintable():
        return rid
    return secrets.token_hex(12)


def _from_http_exception(exc: web.HTTPException) -> PaycellError:
    if exc.status == 404:
        return NotFound("no such resource")
    if exc.status == 405:
        return MethodNotAllowed("method not allowed on this resource")
    if exc.status == 413:
        return PayloadTooLarge("request body exceeds the size limit")
    return ValidationError(exc.reason or "bad request")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = _request_id(request)
    request[REQUEST_ID_KEY] = rid
    try:
        response = await handler(request)
    except PaycellError as e:
        return problem_response(e, rid)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return problem_response(_from_http_exception(e), rid)
    except Exception:  # a bug: log it with its request id, answer 500 problem+json
        log.exception("unhandled error, request_id=%s", rid)
        return problem_response(PaycellError("internal error"), rid)
    response.headers["X-Request-Id"] = rid
    return response
