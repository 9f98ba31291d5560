"""The client side of request signing: headers, an async client and a ready-to-paste curl line.

Used by tests, benchmarks and the ``paycell`` CLI. The path and query are sent exactly as signed
(``yarl.URL(..., encoded=True)``), so what the gateway hashes is what the client hashed.
"""
from __future__ import annotations

import secrets
import shlex
import time
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from yarl import URL

from gateway.auth import HEADER_APP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign

NONCE_BYTES = 16  # 32 hex characters, inside the 16-64 the API allows
REQUEST_TIMEOUT_S = 10.0


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def signed_headers(app_id: str, secret: str, method: str, path_qs: str, body: bytes,
                   now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four X-Paycell-* headers for one request; ``now``/``nonce`` are injected by tests."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = new_nonce() if nonce is None else nonce
    return {
        HEADER_APP: app_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: sign(secret, method, path_qs, timestamp, nonce, body),
    }


def _decode_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """The JSON object of a response; non-JSON text comes back as {"text": ...}."""
    if not raw:
        return {}
    if content_type.endswith("json"):
        decoded = orjson.loads(raw)
        return decoded if isinstance(decoded, dict) else {"value": decoded}
    return {"text": raw.decode("utf-8", errors="replace")}


class PaycellClient:
    """A signing client for the merchant API; owns its session unless one is given."""

    def __init__(self, base_url: str, app_id: str, secret: str,
                 session: aiohttp.ClientSession | None = None,
                 timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self._secret = secret
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def __repr__(self) -> str:
        return f"PaycellClient({self.base_url!r}, app_id={self.app_id!r})"

    async def __aenter__(self) -> "PaycellClient":
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path_qs: str,
                      body: bytes | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, decoded JSON body, response headers) of one signed request."""
        assert self._session is not None, "use `async with PaycellClient(...)`"
        method = method.upper()  # aiohttp sends it upper-cased: sign what is sent
        payload = body or b""
        headers = signed_headers(self.app_id, self._secret, method, path_qs, payload)
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = URL(self.base_url + path_qs, encoded=True)
        async with self._session.request(method, url, data=payload if body is not None else None,
                                         headers=headers, timeout=self._timeout) as resp:
            raw = await resp.read()
            return resp.status, _decode_body(raw, resp.content_type), dict(resp.headers)

    async def create_order(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, data, _ = await self.request("POST", "/v1/orders", orjson.dumps(body))
        return status, data

    async def get_order(self, order_id: str) -> tuple[int, dict[str, Any]]:
        status, data, _ = await self.request("GET", "/v1/orders/" + quote(order_id, safe=""),
                                             None)
        return status, data

    async def create_refund(self, order_id: str, body: dict[str, Any]
                            ) -> tuple[int, dict[str, Any]]:
        status, data, _ = await self.request(
            "POST", f"/v1/orders/{quote(order_id, safe='')}/refunds", orjson.dumps(body))
        return status, data

    async def list_refunds(self, order_id: str) -> tuple[int, dict[str, Any]]:
        status, data, _ = await self.request(
            "GET", f"/v1/orders/{quote(order_id, safe='')}/refunds", None)
        return status, data

    async def find_order(self, out_trade_no: str) -> tuple[int, dict[str, Any]]:
        path_qs = "/v1/orders?" + urlencode({"out_trade_no": out_trade_no})
        status, data, _ = await self.request("GET", path_qs, None)
        return status, data


def example_curl(base_url: str, app_id: str, secret: str, body: dict[str, Any]) -> str:
    """A signed ``curl`` command for POST /v1/orders with a fresh timestamp and nonce."""
    path = "/v1/orders"
    payload = orjson.dumps(body)
    headers = {"Content-Type": "application/json",
               **signed_headers(app_id, secret, "POST", path, payload)}
    lines = [f"curl -sS -X POST {shlex.quote(base_url.rstrip('/') + path)}"]
    lines += [f"  -H {shlex.quote(f'{name}: {value}')}" for name, value in headers.items()]
    lines.append(f"  --data-binary {shlex.quote(payload.decode())}")
    return " \\\n".join(lines)
