"""Channel notifications through the gateway: forged or altered ones change nothing."""
import asyncio
import secrets
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import aiohttp
import pytest

from channels.alipay.signing import load_private_key, sign_notification
from core.settings import KEYS_DIR
from tests.integration.test_order_path import body, client

pytestmark = pytest.mark.integration


def notify_form(order_id: str, amount_yuan: str, app_id: str) -> dict[str, str]:
    now = datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m-%d %H:%M:%S")
    return {"notify_time": now, "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16), "app_id": app_id, "charset": "utf-8",
            "version": "1.0", "trade_no": "2026" + secrets.token_hex(8), "out_trade_no": order_id,
            "trade_status": "TRADE_SUCCESS", "total_amount": amount_yuan,
            "receipt_amount": amount_yuan, "gmt_payment": now, "sign_type": "RSA2"}


async def post_notify(url: str, form: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/notify/alipay", data=urlencode(form),
                          headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            return r.status, await r.text()


async def test_bad_signature_changes_nothing_and_a_genuine_one_resolves(stack):
    settings = stack["settings"]
    async with client(stack) as c:
        s, o = await c.create_order(body(amount=1003))
        assert s == 202
        oid = o["order_id"]
        app_key = load_private_key(KEYS_DIR / "alipay_app_private.pem")        # not Alipay's key
        platform_key = load_private_key(KEYS_DIR / "alipay_platform_private.pem")
        forged = sign_notification(notify_form(oid, "10.03", settings.alipay.app_id), app_key)
        assert await post_notify(stack["url"], forged) == (400, "fail")
        genuine = sign_notification(notify_form(oid, "10.03", settings.alipay.app_id), platform_key)
        tampered = {**genuine, "total_amount": "10.04"}
        assert await post_notify(stack["url"], tampered) == (400, "fail")
        other_app = sign_notification(notify_form(oid, "10.03", "2021999999999999"), platform_key)
        assert await post_notify(stack["url"], other_app) == (400, "fail")
        code, still = await c.get_order(oid)
        assert code == 200 and still["status"] == "PENDING" and still["resolved_by"] is None
        # the genuine one is applied, and a duplicate of it is acknowledged and changes nothing
        assert await post_notify(stack["url"], genuine) == (200, "success")
        assert await post_notify(stack["url"], genuine) == (200, "success")
        code, paid = await c.get_order(oid)
    assert (paid["status"], paid["resolved_by"]) == ("SUCCEEDED", "notify")
    assert paid["channel_trade_no"] == genuine["trade_no"]


async def test_notification_for_an_unknown_order_is_refused(stack):
    platform_key = load_private_key(KEYS_DIR / "alipay_platform_private.pem")
    form = sign_notification(notify_form("P_local_s0_1_0000000000000000000000", "6.00",
                                         stack["settings"].alipay.app_id), platform_key)
    assert await post_notify(stack["url"], form) == (400, "fail")


async def test_notification_with_a_wrong_amount_is_refused(stack):
    platform_key = load_private_key(KEYS_DIR / "alipay_platform_private.pem")
    async with client(stack) as c:
        s, o = await c.create_order(body(amount=1003))
        form = sign_notification(notify_form(o["order_id"], "99.03",
                                             stack["settings"].alipay.app_id), platform_key)
        assert await post_notify(stack["url"], form) == (400, "fail")
        _, still = await c.get_order(o["order_id"])
    assert still["status"] == "PENDING"


async def test_the_channels_repeat_of_a_paid_order_is_acked_by_the_gateway_alone(stack):
    async def duplicates() -> float:
        async with aiohttp.ClientSession() as s:
            async with s.get(stack["url"] + "/metrics") as r:
                text = await r.text()
        for line in text.splitlines():
            if line.startswith('paycell_gateway_notifications_total{channel="alipay",'
                               'result="duplicate"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = await duplicates()
    async with client(stack) as c:
        s, o = await c.create_order(body())
    assert s == 200 and o["status"] == "SUCCEEDED"
    for _ in range(60):  # the sandbox notifies after its delay; the gateway acks it itself
        trade = (await stack["sandbox"].ledger())["trades"][o["order_id"]]
        if trade["notifies_acked"] >= 1:
            break
        await asyncio.sleep(0.1)
    assert trade["notifies_acked"] >= 1
    assert await duplicates() >= before + 1
