"""Every channel through the real stack: gateway -> shard actor (its connectors) -> each
channel's sandbox over HTTP -> its notification back through /v1/notify/<channel>. Orders that
name no channel are routed by currency, payment type and the payer code's prefix."""
from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import pytest

from channels.unionpay import ids as unionpay_ids
from gateway.client import PaycellClient

pytestmark = pytest.mark.integration

BARCODES = {"alipay": "28763443825664394", "wechatpay": "134567890123456789",
            "qpay": "910123456789012345"}
CARDS = {"stripe": ("USD", "pm_card_visa"), "paypal": ("USD", "8kk8451t"),
         "unionpay": ("CNY", "6226090000000048")}


def _body(channel: str | None, amount: int = 1200, **payment: str) -> dict[str, Any]:
    if channel in BARCODES:
        pay, currency = {"type": "barcode", "auth_code": BARCODES[channel]}, "CNY"
    elif channel in CARDS:
        currency, token = CARDS[channel]
        pay = {"type": "card", "token": token}
    else:
        currency = payment.pop("currency", "CNY")
        pay = dict(payment)
    body: dict[str, Any] = {"out_trade_no": f"ch-{secrets.token_hex(6)}", "user_id": "u-7",
                            "amount": amount, "currency": currency, "subject": "gems",
                            "payment": pay}
    if channel:
        body["channel"] = channel
    return body


async def _trade(stack: Any, channel: str, order_id: str) -> dict[str, Any]:
    """The channel ledger's trade for a paycell order (UnionPay keys it by its packed orderId)."""
    key = unionpay_ids.to_wire_id(order_id) if channel == "unionpay" else order_id
    url = f"{stack['settings'].sandbox.url()}/{channel}/_sandbox/ledger"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return (await r.json())["trades"].get(key, {})  # type: ignore[no-any-return]


async def _final(c: PaycellClient, order_id: str, timeout_s: float = 10) -> dict[str, Any]:
    for _ in range(int(timeout_s / 0.1)):
        status, o = await c.get_order(order_id)
        if status == 200 and o["status"] != "PENDING":
            return o
        await asyncio.sleep(0.1)
    raise AssertionError(f"{order_id} still pending")


@pytest.mark.parametrize("channel", sorted([*BARCODES, *CARDS]))
async def test_each_channel_pays_end_to_end(stack: Any, channel: str) -> None:
    async with PaycellClient(stack["url"], "demo-app", "demo-secret") as c:
        status, o = await c.create_order(_body(channel))
        assert (status, o["status"], o["channel"], o["resolved_by"]) == (
            200, "SUCCEEDED", channel, "sync"), o.get("failure", o)
        trade = await _trade(stack, channel, o["order_id"])
        assert (trade["status"], trade["charges"], trade["total_amount"]) == ("PAID", 1, 1200)
        # the channel's notification came back through the gateway and was acknowledged
        for _ in range(100):
            if (await _trade(stack, channel, o["order_id"]))["notifies_acked"] >= 1:
                break
            await asyncio.sleep(0.1)
        assert (await _trade(stack, channel, o["order_id"]))["notifies_acked"] >= 1


@pytest.mark.parametrize("channel", sorted(BARCODES))
async def test_a_barcode_is_routed_by_its_payer_code(stack: Any, channel: str) -> None:
    body = _body(channel)
    del body["channel"]
    async with PaycellClient(stack["url"], "demo-app", "demo-secret") as c:
        status, o = await c.create_order(body)
    assert (status, o["status"], o["channel"]) == (200, "SUCCEEDED", channel)


async def test_a_cny_card_is_routed_to_the_channel_that_takes_cny_cards(stack: Any) -> None:
    async with PaycellClient(stack["url"], "demo-app", "demo-secret") as c:
        status, o = await c.create_order(_body(None, type="card", token="6226090000000048",
                                               currency="CNY"))
    assert (status, o["status"], o["channel"]) == (200, "SUCCEEDED", "unionpay")


async def test_wechat_app_prepay_answers_202_with_pay_data_then_the_payer_pays(stack) -> None:
    async with PaycellClient(stack["url"], "demo-app", "demo-secret") as c:
        status, o = await c.create_order(_body(None, type="app") | {"channel": "wechatpay"})
        assert (status, o["status"], o["channel"]) == (202, "PENDING", "wechatpay"), o
        assert o["pay_data"]["prepayid"] and o["pay_data"]["sign"]
        paid = await _final(c, o["order_id"])
    assert paid["status"] == "SUCCEEDED" and paid["resolved_by"] in ("notify", "query")
    assert paid["pay_data"] == o["pay_data"]


async def test_payments_nothing_can_take_are_422_and_change_nothing(stack: Any) -> None:
    async with PaycellClient(stack["url"], "demo-app", "demo-secret") as c:
        bad_prefix = _body("alipay")
        del bad_prefix["channel"]
        bad_prefix["payment"]["auth_code"] = "990000000000000000"
        named_wrong = _body("stripe") | {"currency": "CNY"}
        for body in (bad_prefix, named_wrong, _body(None, type="card", token="tok_1",
                                                    currency="KRW")):
            status, problem = await c.create_order(body)
            assert (status, problem["code"]) == (422, "no_channel"), problem
            assert (await c.find_order(body["out_trade_no"]))[0] == 404
