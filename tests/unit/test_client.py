"""The signing client: headers, requests and the curl example all authenticate at the gateway."""
from __future__ import annotations

import shlex
from typing import Any

import orjson
import pytest
from yarl import URL

from core.errors import Unauthenticated
from gateway.auth import MemoryNonceStore, authenticate
from gateway.client import PaycellClient, example_curl, signed_headers

APPS = {"demo-app": "demo-secret"}
NOW = 1_764_000_000.0


def store() -> MemoryNonceStore:
    return MemoryNonceStore(max_entries=100, clock=lambda: 0.0)


async def test_signed_headers_round_trip() -> None:
    body = b'{"amount":1}'
    h = signed_headers("demo-app", "demo-secret", "POST", "/v1/orders", body, now=NOW,
                       nonce="n" * 16)
    assert h["X-Paycell-App"] == "demo-app"
    assert h["X-Paycell-Timestamp"] == "1764000000"
    assert h["X-Paycell-Nonce"] == "n" * 16
    assert await authenticate(h, "POST", "/v1/orders", body, APPS, store(), NOW, 300) == "demo-app"


async def test_fresh_nonces_differ_and_are_well_formed() -> None:
    a = signed_headers("demo-app", "demo-secret", "GET", "/v1/orders/x", b"", now=NOW)
    b = signed_headers("demo-app", "demo-secret", "GET", "/v1/orders/x", b"", now=NOW)
    assert a["X-Paycell-Nonce"] != b["X-Paycell-Nonce"]
    assert a["X-Paycell-Signature"] != b["X-Paycell-Signature"]
    nonces = store()
    for h in (a, b):
        assert await authenticate(h, "GET", "/v1/orders/x", b"", APPS, nonces, NOW, 300)


async def test_wrong_secret_is_refused() -> None:
    h = signed_headers("demo-app", "not-the-secret", "GET", "/v1/orders/x", b"", now=NOW)
    with pytest.raises(Unauthenticated, match="signature"):
        await authenticate(h, "GET", "/v1/orders/x", b"", APPS, store(), NOW, 300)


class FakeResponse:
    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status = status
        self._body = body
        self.content_type = content_type
        self.headers = {"Content-Type": content_type, "X-Request-Id": "rid-1"}

    async def read(self) -> bytes:
        return self._body


class Exchange:
    """What ``session.request(...)`` returns: authenticates the request on entry."""

    def __init__(self, stub: "GatewayStub", method: str, path_qs: str, body: bytes,
                 headers: dict[str, str]) -> None:
        self.stub, self.method, self.path_qs, self.body, self.headers = (
            stub, method, path_qs, body, headers)

    async def __aenter__(self) -> FakeResponse:
        now = float(self.headers["X-Paycell-Timestamp"])
        try:
            app_id = await authenticate(self.headers, self.method, self.path_qs, self.body, APPS,
                                        self.stub.nonces, now, 300)
        except Unauthenticated:
            app_id = ""
        self.stub.seen.append((self.method, self.path_qs, self.body, app_id))
        if not app_id:
            return FakeResponse(401, b'{"code":"unauthenticated"}', "application/problem+json")
        return FakeResponse(200, orjson.dumps({"path": self.path_qs}), "application/json")

    async def __aexit__(self, *exc: object) -> None:
        return None


class GatewayStub:
    """Stands in for aiohttp.ClientSession: authenticates what the client would send."""

    def __init__(self) -> None:
        self.nonces = store()
        self.seen: list[tuple[str, str, bytes, str]] = []

    def request(self, method: str, url: URL, *, data: bytes | None, headers: dict[str, str],
                timeout: Any) -> Exchange:
        assert isinstance(url, URL)
        # aiohttp sends the method upper-cased and the raw path as given (encoded=True)
        return Exchange(self, method.upper(), url.raw_path_qs, data or b"", headers)


async def test_client_requests_authenticate() -> None:
    stub = GatewayStub()
    async with PaycellClient("http://gw.local/", "demo-app", "demo-secret",
                             session=stub) as client:  # type: ignore[arg-type]
        status, body = await client.create_order({"out_trade_no": "g-1", "amount": 600})
        assert (status, body) == (200, {"path": "/v1/orders"})
        status, body = await client.get_order("P_local_s0_1_abcdefgh")
        assert (status, body) == (200, {"path": "/v1/orders/P_local_s0_1_abcdefgh"})
        status, body = await client.find_order("g-1 x/y")
        assert (status, body) == (200, {"path": "/v1/orders?out_trade_no=g-1+x%2Fy"})
        status, body, headers = await client.request("get", "/v1/orders/x", None)
        assert status == 200 and headers["X-Request-Id"] == "rid-1"
    assert [s[3] for s in stub.seen] == ["demo-app"] * 4
    assert stub.seen[0][2] == orjson.dumps({"out_trade_no": "g-1", "amount": 600})


async def test_client_with_wrong_secret_gets_401() -> None:
    stub = GatewayStub()
    async with PaycellClient("http://gw.local", "demo-app", "wrong",
                             session=stub) as client:  # type: ignore[arg-type]
        status, body = await client.get_order("x")
    assert (status, body) == (401, {"code": "unauthenticated"})


async def test_client_does_not_close_a_given_session() -> None:
    class Session:
        closed = False

        async def close(self) -> None:
            self.closed = True

    session = Session()
    async with PaycellClient("http://gw.local", "demo-app", "demo-secret",
                             session=session):  # type: ignore[arg-type]
        pass
    assert session.closed is False


async def test_example_curl_is_a_signed_working_command() -> None:
    body = {"out_trade_no": "g-1", "subject": "it's 60 gems", "amount": 600}
    text = example_curl("http://127.0.0.1:8080/", "demo-app", "demo-secret", body)
    argv = shlex.split(text.replace("\\\n", " "))
    assert argv[:5] == ["curl", "-sS", "-X", "POST", "http://127.0.0.1:8080/v1/orders"]
    headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
    data = argv[argv.index("--data-binary") + 1].encode()
    assert orjson.loads(data) == body
    assert headers["Content-Type"] == "application/json"
    now = float(headers["X-Paycell-Timestamp"])
    assert await authenticate(headers, "POST", "/v1/orders", data, APPS, store(), now,
                              300) == "demo-app"


def test_cli_demo_bodies_validate() -> None:
    import argparse

    from gateway.cli import _body_from
    from gateway.validation import parse_create_order

    def body(**kw: object) -> dict:
        base = dict(amount=600, out_trade_no=None, channel=None, card=None, currency=None,
                    type=None)
        base.update(kw)
        return _body_from(argparse.Namespace(**base))

    import orjson
    channels = ("alipay", "stripe", "wechatpay")
    barcode = parse_create_order("demo-app", orjson.dumps(body()), channels)
    assert (barcode.channel, barcode.payment_type, barcode.currency) == ("", "barcode", "CNY")
    card = parse_create_order("demo-app", orjson.dumps(body(card="pm_card_visa")), channels)
    assert (card.payment_type, card.payment_token, card.currency) == ("card", "pm_card_visa",
                                                                      "USD")
    app = parse_create_order("demo-app", orjson.dumps(body(type="app", channel="wechatpay")),
                             channels)
    assert (app.channel, app.payment_type) == ("wechatpay", "app")
