"""The WechatPayConnector's prepay paths (APP, Native) and their cancel against the in-process
sandbox over loopback HTTP (no Ray, no Redis); code pay is covered by tests/conformance."""
from __future__ import annotations

import uuid
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from channels.base import ChargeRequest, Connector
from channels.registry import build_connector
from channels.sandbox.app import create_sandbox_app
from channels.sandbox.engine import SandboxConfig
from channels.sandbox.knobs import Knobs
from channels.wechatpay import signing
from core.settings import KEYS_DIR, load_settings
from core.states import Fact
from tests.conformance.conftest import eventually

pytestmark = pytest.mark.integration

MERCHANT_PUB = signing.load_public_key(KEYS_DIR / "wechatpay_merchant_public.pem")


@pytest.fixture
async def connector() -> AsyncIterator[Connector]:
    runner = web.AppRunner(create_sandbox_app(
        SandboxConfig(seed=9, knobs=Knobs(payer_confirm_ms=150)), ["wechatpay"]), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    settings = load_settings(env={}, overrides={"sandbox": {"port": runner.addresses[0][1]}})
    async with aiohttp.ClientSession() as http:
        yield build_connector("wechatpay", settings, "http://127.0.0.1:9/notify", http)
    await runner.cleanup()


def _order(payment_type: str, amount: int) -> ChargeRequest:
    return ChargeRequest(f"pp{uuid.uuid4().hex[:20]}", amount, "CNY", "gems", payment_type)


async def test_app_prepay_gives_signed_pay_params_then_the_payer_pays(
        connector: Connector) -> None:
    req = _order("app", 1200)
    res = await connector.charge(req)
    data = res.pay_data
    assert res.fact is Fact.WAITING and data["prepay_id"] == data["prepayid"]
    assert (data["appid"], data["partnerid"], data["package"]) == (
        "wxd678efh567hg6787", "1900009191", "Sign=WXPay")
    message = (f"{data['appid']}\n{data['timestamp']}\n{data['noncestr']}\n"
               f"{data['prepayid']}\n").encode()
    assert signing.verify(MERCHANT_PUB, message, data["sign"])
    again = await connector.charge(req)                  # the same trade: the same prepay_id
    assert again.pay_data["prepay_id"] == data["prepay_id"]

    async def paid() -> bool:
        return (await connector.query(req.order_id, "CNY")).fact is Fact.PAID
    await eventually(paid)
    assert (await connector.cancel(req.order_id)).fact is Fact.PAID   # prepay: no reverse


async def test_native_prepay_cancelled_before_the_payer_pays(connector: Connector) -> None:
    req = _order("native", 1203)
    res = await connector.charge(req)
    assert res.fact is Fact.WAITING and res.pay_data["code_url"].startswith("weixin://")
    queried = await connector.query(req.order_id, "CNY")
    assert (queried.fact, queried.raw_status) == (Fact.WAITING, "NOTPAY")
    closed = await connector.cancel(req.order_id)
    assert (closed.fact, closed.action) == (Fact.CLOSED, "close")
    late = await connector.charge(req)
    assert late.fact is Fact.CLOSED and late.failure_code == "ORDER_CLOSED"
