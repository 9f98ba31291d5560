"""Merchant authentication: signing string, the A6 matrix, nonce handling, a property test."""
from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import Overloaded, Unauthenticated
from gateway.auth import (HEADER_APP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP,
                          MemoryNonceStore, NONCE_TTL_MARGIN_S, authenticate, sign,
                          signing_string)
from gateway.client import signed_headers

NOW = 1_764_000_000.0
WINDOW_S = 300
APPS = {"app-a": "secret-of-a-123", "app-b": "secret-of-b-456"}
PATH = "/v1/orders"
BODY = b'{"out_trade_no":"g-1","amount":600}'
NONCE = "abcdefghABCDEFGH12345678"


def headers_for(app_id: str = "app-a", secret: str = APPS["app-a"], body: bytes = BODY,
                now: float = NOW, nonce: str = NONCE, method: str = "POST",
                path: str = PATH) -> dict[str, str]:
    return signed_headers(app_id, secret, method, path, body, now=now, nonce=nonce)


async def auth(headers: dict[str, str], store: MemoryNonceStore, body: bytes = BODY,
               method: str = "POST", path: str = PATH, now: float = NOW) -> str:
    return await authenticate(headers, method, path, body, APPS, store, now, WINDOW_S)


def fresh_store() -> MemoryNonceStore:
    return MemoryNonceStore(max_entries=1000, clock=lambda: 0.0)


def test_signing_string_is_five_lines_with_body_hash() -> None:
    s = signing_string("POST", "/v1/orders?x=1", "1764000000", NONCE, b"abc")
    assert s == (b"POST\n/v1/orders?x=1\n1764000000\n" + NONCE.encode() + b"\n"
                 + hashlib.sha256(b"abc").hexdigest().encode() + b"\n")


def test_signing_string_uses_hash_of_empty_body() -> None:
    s = signing_string("GET", "/v1/orders/x", "1", NONCE, b"")
    assert s.endswith(b"\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n")


def test_sign_is_hmac_sha256_lowercase_hex() -> None:
    expected = hmac.new(b"k", signing_string("GET", "/p", "5", NONCE, b""),
                        hashlib.sha256).hexdigest()
    assert sign("k", "GET", "/p", "5", NONCE, b"") == expected
    assert expected == expected.lower() and len(expected) == 64


async def test_valid_request_returns_app_id() -> None:
    assert await auth(headers_for(), fresh_store()) == "app-a"


async def test_get_without_body_is_accepted() -> None:
    h = headers_for(body=b"", method="GET", path="/v1/orders?out_trade_no=g-1")
    assert await auth(h, fresh_store(), body=b"", method="GET",
                      path="/v1/orders?out_trade_no=g-1") == "app-a"


def _flip_first_byte(body: bytes) -> bytes:
    return bytes([body[0] ^ 0x01]) + body[1:]


@pytest.mark.parametrize("case, make_headers, kwargs, detail", [
    ("body flipped one byte", lambda: headers_for(), {"body": _flip_first_byte(BODY)},
     "signature does not match"),
    ("timestamp now-301", lambda: headers_for(now=NOW - 301), {}, "timestamp"),
    ("timestamp now+301", lambda: headers_for(now=NOW + 301), {}, "timestamp"),
    ("unknown app", lambda: headers_for(app_id="app-z"), {}, "unknown app"),
    ("A's secret with B's id", lambda: headers_for(app_id="app-b", secret=APPS["app-a"]), {},
     "signature does not match"),
    ("other path", lambda: headers_for(), {"path": "/v1/orders?x=1"}, "signature does not match"),
    ("other method", lambda: headers_for(), {"method": "PUT"}, "signature does not match"),
])
async def test_a6_matrix_refusals(case: str, make_headers, kwargs, detail: str) -> None:
    store = fresh_store()
    with pytest.raises(Unauthenticated) as err:
        await auth(make_headers(), store, **kwargs)
    assert detail in err.value.detail, case
    assert len(store) == 0, "a refused request must not claim a nonce"


async def test_timestamp_on_the_window_edge_is_accepted() -> None:
    assert await auth(headers_for(now=NOW - 300), fresh_store()) == "app-a"
    assert await auth(headers_for(now=NOW + 300), fresh_store()) == "app-a"


async def test_reused_nonce_is_refused() -> None:
    store = fresh_store()
    assert await auth(headers_for(), store) == "app-a"
    with pytest.raises(Unauthenticated, match="nonce already used"):
        await auth(headers_for(), store)


async def test_same_nonce_for_two_apps_is_two_nonces() -> None:
    store = fresh_store()
    assert await auth(headers_for(), store) == "app-a"
    assert await auth(headers_for(app_id="app-b", secret=APPS["app-b"]), store) == "app-b"


async def test_forged_request_does_not_consume_the_nonce() -> None:
    store = fresh_store()
    forged = headers_for()
    forged[HEADER_SIGNATURE] = "0" * 64
    with pytest.raises(Unauthenticated, match="signature"):
        await auth(forged, store)
    assert len(store) == 0
    assert await auth(headers_for(), store) == "app-a"  # the real request still goes through


async def test_nonce_ttl_outlives_the_window() -> None:
    calls: list[tuple[str, str, int]] = []

    class Recorder:
        async def claim(self, app_id: str, nonce: str, ttl_s: int) -> bool:
            calls.append((app_id, nonce, ttl_s))
            return True

    await authenticate(headers_for(), "POST", PATH, BODY, APPS, Recorder(), NOW, WINDOW_S)
    assert calls == [("app-a", NONCE, WINDOW_S + NONCE_TTL_MARGIN_S)]


@pytest.mark.parametrize("header", [HEADER_APP, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE])
async def test_missing_header(header: str) -> None:
    h = headers_for()
    del h[header]
    with pytest.raises(Unauthenticated, match=f"missing header {header}"):
        await auth(h, fresh_store())


@pytest.mark.parametrize("header, value", [
    (HEADER_SIGNATURE, "z" * 64),                   # non-hex
    (HEADER_SIGNATURE, "A" * 64),                   # upper-case hex
    (HEADER_SIGNATURE, "a" * 63),                   # short
    (HEADER_SIGNATURE, "a" * 10_000),               # very long
    (HEADER_NONCE, "short"),                        # < 16
    (HEADER_NONCE, "a" * 65),                       # > 64
    (HEADER_NONCE, "abcdefghijklmnop-"),            # outside [A-Za-z0-9]
    (HEADER_NONCE, "n" * 100_000),                  # very long
    (HEADER_TIMESTAMP, "17640000.5"),               # not an integer
    (HEADER_TIMESTAMP, "-1764000000"),              # signed
    (HEADER_TIMESTAMP, "9" * 10_000),               # very long
    (HEADER_TIMESTAMP, ""),
    (HEADER_APP, "a" * 129),                        # too long
    (HEADER_APP, "app a"),                          # space
    (HEADER_APP, ""),
])
async def test_malformed_header(header: str, value: str) -> None:
    h = headers_for()
    h[header] = value
    store = fresh_store()
    with pytest.raises(Unauthenticated, match=f"malformed header {header}"):
        await auth(h, store)
    assert len(store) == 0


async def test_checks_run_in_order_app_before_clock() -> None:
    with pytest.raises(Unauthenticated, match="unknown app"):
        await auth(headers_for(app_id="nobody", now=NOW - 10_000), fresh_store())


async def test_clock_before_signature() -> None:
    h = headers_for(now=NOW - 10_000)
    h[HEADER_SIGNATURE] = "0" * 64
    with pytest.raises(Unauthenticated, match="timestamp"):
        await auth(h, fresh_store())


async def test_memory_store_expires_and_is_bounded() -> None:
    t = [0.0]
    store = MemoryNonceStore(max_entries=2, clock=lambda: t[0])
    assert await store.claim("a", "n1", 10) is True
    assert await store.claim("a", "n1", 10) is False
    assert await store.claim("a", "n2", 10) is True
    with pytest.raises(Overloaded):
        await store.claim("a", "n3", 10)   # full of live nonces: refuse, never forget one
    t[0] = 10.0
    assert await store.claim("a", "n3", 10) is True   # the expired ones made room
    assert await store.claim("a", "n1", 10) is True   # n1 expired: a new claim
    assert len(store) == 2


_HEADER_ORDER = (HEADER_APP, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
_FIELDS = ("method", "path") + _HEADER_ORDER + ("body",)


def _serialize(method: str, path: str, headers: dict[str, str], body: bytes) -> list[bytes]:
    return [method.encode(), path.encode()] + [headers[h].encode() for h in _HEADER_ORDER] + [body]


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(field=st.sampled_from(_FIELDS), data=st.data())
def test_any_single_byte_mutation_is_refused(field: str, data: st.DataObject) -> None:
    """Change one byte of any part of a valid signed request: authentication must fail."""
    body = b'{"out_trade_no":"g-7","amount":1}'
    method, path = "POST", "/v1/orders?lang=en"
    headers = headers_for(body=body, method=method, path=path)
    parts = dict(zip(_FIELDS, _serialize(method, path, headers, body)))
    original = parts[field]
    index = data.draw(st.integers(0, len(original) - 1), label="index")
    xor = data.draw(st.integers(1, 255), label="xor")
    mutated = bytearray(original)
    mutated[index] ^= xor
    parts[field] = bytes(mutated)
    text = {k: v.decode("latin-1") for k, v in parts.items() if k != "body"}
    new_headers = {h: text[h] for h in _HEADER_ORDER}
    with pytest.raises(Unauthenticated):
        asyncio.run(authenticate(new_headers, text["method"], text["path"], parts["body"], APPS,
                                 fresh_store(), NOW, WINDOW_S))
