"""The community `wechatpayv3` SDK (PyPI), unchanged, against the WeChat Pay sandbox: it signs
requests the sandbox accepts, verifies the sandbox's signed answers and decrypts its callbacks.

No Ray, no Redis: the sandbox runs in this process on a loopback port (as in tests/conformance).

Pointing the SDK at the sandbox: `wechatpayv3.core.Core` hard-codes
``self._gate_way = 'https://api.mch.weixin.qq.com'`` and takes no gateway or base-URL argument
(its `proxy` option only proxies, it cannot turn https into plain http). The least invasive way is
to set that one attribute after construction to ``http://127.0.0.1:<port>/wechatpay``; the SDK
itself reads `_core._gate_way` back in `download_bill`, so it is the single place the host lives.
Signing, signature verification and decryption are the SDK's own code, untouched. The SDK runs
in public-key mode (`public_key` + `public_key_id`), so it never downloads platform certificates.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from wechatpayv3 import WeChatPay, WeChatPayType

from channels.sandbox.app import create_sandbox_app
from channels.sandbox.engine import SandboxConfig
from channels.sandbox.knobs import Knobs
from core.settings import KEYS_DIR, WechatPaySettings

pytestmark = pytest.mark.integration

DEFAULTS = WechatPaySettings()
AUTH_CODE = "134567890123456789"


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def _client(gateway: str, *, merchant_pem: str = "wechatpay_merchant_private.pem",
            platform_pem: str = "wechatpay_platform_public.pem",
            notify_url: str = "https://merchant.example/notify",
            pay_type: WeChatPayType = WeChatPayType.NATIVE) -> WeChatPay:
    client = WeChatPay(
        wechatpay_type=pay_type, mchid=DEFAULTS.mchid,
        private_key=(KEYS_DIR / merchant_pem).read_text(),
        cert_serial_no=DEFAULTS.merchant_serial_no, appid=DEFAULTS.appid,
        apiv3_key=DEFAULTS.apiv3_key.reveal(), notify_url=notify_url, timeout=(3, 10),
        public_key=(KEYS_DIR / platform_pem).read_text(),
        public_key_id=DEFAULTS.platform_serial_no)
    client._core._gate_way = gateway           # the SDK has no gateway option (see docstring)
    return client


class CallbackReceiver:
    """A merchant notify endpoint that hands each callback to the SDK's `callback()`."""

    def __init__(self, client: WeChatPay) -> None:
        self.client = client
        self.results: list[dict[str, Any] | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        result = await asyncio.to_thread(self.client.callback, dict(request.headers), body)
        self.results.append(result)
        if result is None:
            return web.json_response({"code": "FAIL", "message": "验签或解密失败"}, status=400)
        return web.Response(status=204)


@pytest.fixture
async def gateway() -> AsyncIterator[str]:
    app = create_sandbox_app(SandboxConfig(seed=3, knobs=Knobs(notify_delay_ms=20, payer_confirm_ms=200)),
                             ["wechatpay"])
    runner, url = await _serve(app)
    yield f"{url}/wechatpay"
    await runner.cleanup()


def _order() -> str:
    return f"sdk{uuid.uuid4().hex[:20]}"


def _codepay(client: WeChatPay, order_id: str, total: int) -> tuple[int, Any]:
    return client.pay(description="SDK 测试", out_trade_no=order_id,
                      amount={"total": total, "currency": "CNY"},
                      payer={"auth_code": AUTH_CODE},
                      scene_info={"store_info": {"id": "0001"}},
                      pay_type=WeChatPayType.CODEPAY)


async def test_sdk_native_prepay_query_and_close(gateway: str) -> None:
    client = _client(gateway)
    order_id = _order()
    code, text = await asyncio.to_thread(client.pay, description="SDK 测试",
                                         out_trade_no=order_id,
                                         amount={"total": 1203, "currency": "CNY"})
    assert code == 200 and json.loads(text)["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    code, text = await asyncio.to_thread(client.query, out_trade_no=order_id)
    queried = json.loads(text)
    assert (code, queried["trade_state"], queried["trade_type"], queried["amount"]["total"]) == (
        200, "NOTPAY", "NATIVE", 1203)
    code, _ = await asyncio.to_thread(client.close, out_trade_no=order_id)
    assert code == 204                                       # the SDK verified the signed 204
    code, text = await asyncio.to_thread(client.query, out_trade_no=order_id)
    assert (code, json.loads(text)["trade_state"]) == (200, "CLOSED")


async def test_sdk_code_pay_refund_and_bill(gateway: str) -> None:
    client = _client(gateway, pay_type=WeChatPayType.CODEPAY)
    order_id = _order()
    code, text = await asyncio.to_thread(_codepay, client, order_id, 2000)
    paid = json.loads(text)
    assert (code, paid["trade_state"], paid["trade_type"], paid["amount"]["total"]) == (
        200, "SUCCESS", "MICROPAY", 2000)
    declined_code, declined = await asyncio.to_thread(_codepay, client, _order(), 2001)
    assert (declined_code, json.loads(declined)["code"]) == (403, "NOT_ENOUGH")

    code, text = await asyncio.to_thread(client.refund, out_refund_no=f"r{order_id}",
                                         amount={"refund": 500, "total": 2000, "currency": "CNY"},
                                         out_trade_no=order_id)
    assert (code, json.loads(text)["status"], json.loads(text)["amount"]["refund"]) == (
        200, "SUCCESS", 500)
    code, text = await asyncio.to_thread(client.query_refund, out_refund_no=f"r{order_id}")
    assert (code, json.loads(text)["out_trade_no"]) == (200, order_id)
    code, text = await asyncio.to_thread(client.refund, out_refund_no=f"x{order_id}",
                                         amount={"refund": 1501, "total": 2000, "currency": "CNY"},
                                         out_trade_no=order_id)
    assert (code, json.loads(text)["code"]) == (400, "INVALID_REQUEST")

    day = datetime.now(timezone.utc).date().isoformat()     # the sandbox's bill days are UTC
    code, text = await asyncio.to_thread(client.trade_bill, bill_date=day)
    ticket = json.loads(text)
    assert code == 200 and ticket["hash_type"] == "SHA1"
    code, raw = await asyncio.to_thread(client.download_bill, ticket["download_url"])
    bill = gzip.decompress(raw)
    assert code == 200 and hashlib.sha1(bill).hexdigest() == ticket["hash_value"]
    text_bill = bill.decode("utf-8")
    assert f"`{order_id}," in text_bill and f"`r{order_id}," in text_bill


async def test_sdk_reverses_a_paid_code_pay(gateway: str) -> None:
    client = _client(gateway, pay_type=WeChatPayType.CODEPAY)
    order_id = _order()
    code, _ = await asyncio.to_thread(_codepay, client, order_id, 1500)
    assert code == 200
    code, text = await asyncio.to_thread(client.codepay_reverse, out_trade_no=order_id)
    assert (code, json.loads(text)["out_trade_no"]) == (200, order_id)
    code, text = await asyncio.to_thread(client.query, out_trade_no=order_id)
    assert json.loads(text)["trade_state"] == "REVOKED"


async def test_sdk_decrypts_the_sandbox_callbacks(gateway: str) -> None:
    receiver = CallbackReceiver(_client(gateway))
    app = web.Application()
    app.router.add_post("/notify", receiver.handle)
    runner, url = await _serve(app)
    try:
        client = _client(gateway, notify_url=f"{url}/notify")
        order_id = _order()
        code, _ = await asyncio.to_thread(client.pay, description="SDK 测试",
                                          out_trade_no=order_id,
                                          amount={"total": 1300, "currency": "CNY"})
        assert code == 200
        for _ in range(200):                 # the payer pays after payer_confirm_ms
            if receiver.results:
                break
            await asyncio.sleep(0.02)
        result = receiver.results[0]
        assert result is not None and result["event_type"] == "TRANSACTION.SUCCESS"
        resource = result["resource"]
        assert (resource["out_trade_no"], resource["trade_state"], resource["amount"]["total"],
                resource["mchid"]) == (order_id, "SUCCESS", 1300, DEFAULTS.mchid)
    finally:
        await runner.cleanup()


async def test_sandbox_refuses_a_request_signed_with_another_key(gateway: str) -> None:
    client = _client(gateway, merchant_pem="wechatpay_platform_private.pem")
    code, text = await asyncio.to_thread(client.query, out_trade_no=_order())
    answer = json.loads(text)
    assert (code, answer["code"]) == (401, "SIGN_ERROR")
    assert answer["detail"]["sign_information"]["url"].startswith(
        "/v3/pay/transactions/out-trade-no/")


async def test_sdk_refuses_answers_it_cannot_verify(gateway: str) -> None:
    """Trusting the wrong platform key, the SDK's own check rejects the sandbox's answer."""
    client = _client(gateway, platform_pem="wechatpay_merchant_public.pem")
    with pytest.raises(Exception, match="failed to verify the signature"):
        await asyncio.to_thread(client.pay, description="SDK 测试", out_trade_no=_order(),
                                amount={"total": 1200, "currency": "CNY"})
