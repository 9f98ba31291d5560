"""The official alipay-sdk-python client, unchanged, against the sandbox: it signs requests the
sandbox accepts and accepts the sandbox's signed answers.

The SDK's transport (`alipay.aop.api.util.WebUtils.get_http_connection`) always connects to port 80
(443 for https) and raises TypeError when `server_url` carries a port (`url += port`, an int).
So the sandbox is served on 127.0.0.1:80 when this process may bind it (root, port free). If it
cannot, the test serves on a free port and replaces only that transport helper with one that keeps
the URL's port; the SDK's signing and signature verification are never touched.
"""
from __future__ import annotations

import asyncio
import http.client
import urllib.parse
import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.domain.AlipayDataDataserviceBillDownloadurlQueryModel import (
    AlipayDataDataserviceBillDownloadurlQueryModel)
from alipay.aop.api.domain.AlipayTradeFastpayRefundQueryModel import (
    AlipayTradeFastpayRefundQueryModel)
from alipay.aop.api.domain.AlipayTradePayModel import AlipayTradePayModel
from alipay.aop.api.domain.AlipayTradeQueryModel import AlipayTradeQueryModel
from alipay.aop.api.domain.AlipayTradeRefundModel import AlipayTradeRefundModel
from alipay.aop.api.exception.Exception import ResponseException
from alipay.aop.api.request.AlipayDataDataserviceBillDownloadurlQueryRequest import (
    AlipayDataDataserviceBillDownloadurlQueryRequest)
from alipay.aop.api.request.AlipayTradeFastpayRefundQueryRequest import (
    AlipayTradeFastpayRefundQueryRequest)
from alipay.aop.api.request.AlipayTradePayRequest import AlipayTradePayRequest
from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest
from alipay.aop.api.request.AlipayTradeRefundRequest import AlipayTradeRefundRequest
from alipay.aop.api.response.AlipayDataDataserviceBillDownloadurlQueryResponse import (
    AlipayDataDataserviceBillDownloadurlQueryResponse)
from alipay.aop.api.response.AlipayTradeFastpayRefundQueryResponse import (
    AlipayTradeFastpayRefundQueryResponse)
from alipay.aop.api.response.AlipayTradePayResponse import AlipayTradePayResponse
from alipay.aop.api.response.AlipayTradeQueryResponse import AlipayTradeQueryResponse
from alipay.aop.api.response.AlipayTradeRefundResponse import AlipayTradeRefundResponse
from alipay.aop.api.util import WebUtils
from cryptography.hazmat.primitives import serialization

from channels.alipay import signing
from channels.sandbox.app import create_sandbox_app
from channels.sandbox.engine import SandboxConfig
from core.settings import KEYS_DIR

pytestmark = pytest.mark.integration

APP_ID = "2021000000000001"


def _pem_body(pem: bytes) -> str:
    """The SDK wants the Base64 body of a key, without the PEM armour lines."""
    return "".join(line for line in pem.decode().splitlines() if not line.startswith("-----"))


def _app_private_key_pkcs1() -> str:
    # The SDK loads the app key with rsa.PrivateKey.load_pkcs1 ("BEGIN RSA PRIVATE KEY"), so the
    # committed PKCS#8 file is re-encoded as PKCS#1 (same key).
    key = signing.load_private_key(KEYS_DIR / "alipay_app_private.pem")
    return _pem_body(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))


def _client(server_url: str, alipay_public_pem: str = "alipay_platform_public.pem") -> DefaultAlipayClient:
    config = AlipayClientConfig()
    config.server_url = server_url
    config.app_id = APP_ID
    config.app_private_key = _app_private_key_pkcs1()
    config.alipay_public_key = _pem_body((KEYS_DIR / alipay_public_pem).read_bytes())
    config.timeout = 10
    return DefaultAlipayClient(config)


def _connection_keeping_port(url: str, query_string: str, timeout: int) -> tuple[str, Any]:
    """WebUtils.get_http_connection, but connecting to the URL's own port (transport only)."""
    parts = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    return f"{parts.path}?{query_string}", connection


@pytest.fixture
async def server_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    runner = web.AppRunner(create_sandbox_app(SandboxConfig(seed=11)), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 80).start()
        url = "http://127.0.0.1/gateway.do"
    except OSError:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        monkeypatch.setattr(WebUtils, "get_http_connection", _connection_keeping_port)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/gateway.do"
    yield url
    await runner.cleanup()


def _pay(client: DefaultAlipayClient, order_id: str, yuan: str) -> AlipayTradePayResponse:
    model = AlipayTradePayModel()
    model.out_trade_no, model.scene, model.auth_code = order_id, "bar_code", "28763443825664394"
    model.subject, model.total_amount = "SDK 测试", yuan
    response = AlipayTradePayResponse()
    response.parse_response_content(client.execute(AlipayTradePayRequest(biz_model=model)))
    return response


def _query(client: DefaultAlipayClient, order_id: str) -> AlipayTradeQueryResponse:
    model = AlipayTradeQueryModel()
    model.out_trade_no = order_id
    response = AlipayTradeQueryResponse()
    response.parse_response_content(client.execute(AlipayTradeQueryRequest(biz_model=model)))
    return response


async def test_sdk_pays_and_queries(server_url: str) -> None:
    client = _client(server_url)
    order_id = f"sdk-{uuid.uuid4().hex[:12]}"
    paid = await asyncio.to_thread(_pay, client, order_id, "12.00")
    assert (paid.code, paid.sub_code, paid.out_trade_no, paid.total_amount) == (
        "10000", None, order_id, "12.00")
    assert paid.trade_no and len(paid.trade_no) == 28
    queried = await asyncio.to_thread(_query, client, order_id)
    assert (queried.code, queried.trade_status, queried.trade_no) == (
        "10000", "TRADE_SUCCESS", paid.trade_no)


async def test_sdk_sees_business_failures_signed(server_url: str) -> None:
    client = _client(server_url)
    declined = await asyncio.to_thread(_pay, client, f"sdk-{uuid.uuid4().hex[:12]}", "12.01")
    assert (declined.code, declined.sub_code) == ("40004", "ACQ.BUYER_BALANCE_NOT_ENOUGH")
    missing = await asyncio.to_thread(_query, client, f"sdk-{uuid.uuid4().hex[:12]}")
    assert (missing.code, missing.sub_code) == ("40004", "ACQ.TRADE_NOT_EXIST")


async def test_sdk_refuses_answers_it_cannot_verify(server_url: str) -> None:
    """Trusting the wrong Alipay key, the SDK's own check rejects the sandbox's answer."""
    client = _client(server_url, alipay_public_pem="alipay_app_public.pem")
    with pytest.raises(ResponseException, match="sign verify failed"):
        await asyncio.to_thread(_query, client, "sdk-any")


def _refund(client: DefaultAlipayClient, order_id: str, request_no: str,
            yuan: str) -> AlipayTradeRefundResponse:
    model = AlipayTradeRefundModel()
    model.out_trade_no, model.out_request_no, model.refund_amount = order_id, request_no, yuan
    model.refund_reason = "SDK 退款"
    response = AlipayTradeRefundResponse()
    response.parse_response_content(client.execute(AlipayTradeRefundRequest(biz_model=model)))
    return response


def _refund_query(client: DefaultAlipayClient, order_id: str,
                  request_no: str) -> AlipayTradeFastpayRefundQueryResponse:
    model = AlipayTradeFastpayRefundQueryModel()
    model.out_trade_no, model.out_request_no = order_id, request_no
    model.query_options = ["gmt_refund_pay"]
    response = AlipayTradeFastpayRefundQueryResponse()
    response.parse_response_content(
        client.execute(AlipayTradeFastpayRefundQueryRequest(biz_model=model)))
    return response


def _bill_url(client: DefaultAlipayClient, day: str) -> AlipayDataDataserviceBillDownloadurlQueryResponse:
    model = AlipayDataDataserviceBillDownloadurlQueryModel()
    model.bill_type, model.bill_date = "trade", day
    response = AlipayDataDataserviceBillDownloadurlQueryResponse()
    response.parse_response_content(client.execute(
        AlipayDataDataserviceBillDownloadurlQueryRequest(biz_model=model)))
    return response


async def test_sdk_refunds_queries_the_refund_and_gets_the_bill_url(server_url: str) -> None:
    client = _client(server_url)
    order_id = f"sdk-{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(_pay, client, order_id, "12.00")
    first = await asyncio.to_thread(_refund, client, order_id, "rf-1", "2.00")
    again = await asyncio.to_thread(_refund, client, order_id, "rf-1", "2.00")
    assert (first.code, first.fund_change, first.refund_fee) == ("10000", "Y", "2.00")
    assert (again.code, again.fund_change, again.refund_fee) == ("10000", "N", "2.00")
    too_much = await asyncio.to_thread(_refund, client, order_id, "rf-2", "10.01")
    assert (too_much.code, too_much.sub_code) == ("40004", "ACQ.REASON_TRADE_REFUND_FEE_ERR")
    found = await asyncio.to_thread(_refund_query, client, order_id, "rf-1")
    assert (found.code, found.refund_status, found.refund_amount, found.out_request_no) == (
        "10000", "REFUND_SUCCESS", "2.00", "rf-1")
    assert found.gmt_refund_pay
    missing = await asyncio.to_thread(_refund_query, client, order_id, "rf-9")
    assert (missing.code, missing.refund_status, missing.refund_amount) == ("10000", None, None)
    today = datetime.now(timezone.utc).date().isoformat()
    bill_url = await asyncio.to_thread(_bill_url, client, today)
    assert bill_url.code == "10000"
    assert "/downloadBillFile.resource?bizType=trade&" in bill_url.bill_download_url
