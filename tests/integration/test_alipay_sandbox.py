"""The real AlipayConnector against the real sandbox over loopback HTTP: every amount scenario,
signatures, notifications, knobs and the cancel fence. The sandbox ledger is the money truth."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from channels.alipay import bill, signing, transformers as tf
from channels.alipay.connector import AlipayConfig, AlipayConnector
from channels.base import (ChargeRequest, NotificationKind, NotSent, OutcomeUnknown,
                           ProtocolError, RefundRequest, RefundStatus, StatementKind)
from channels.sandbox import alipay_bill
from channels.sandbox.app import create_sandbox_app
from channels.sandbox.engine import SandboxConfig
from channels.sandbox.knobs import Knobs
from core.settings import KEYS_DIR
from core.states import Fact

pytestmark = pytest.mark.integration

APP_ID = "2021000000000001"
FORM = "application/x-www-form-urlencoded"
APP_KEY = signing.load_private_key(KEYS_DIR / "alipay_app_private.pem")
PLATFORM_KEY = signing.load_private_key(KEYS_DIR / "alipay_platform_private.pem")
PLATFORM_PUB = signing.load_public_key(KEYS_DIR / "alipay_platform_public.pem")
APP_PUB = signing.load_public_key(KEYS_DIR / "alipay_app_public.pem")
SANDBOX_KNOBS = Knobs(payer_confirm_ms=200, hang_ms=600, notify_retry_ms=(100, 100, 100))


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


class Receiver:
    """A merchant notify endpoint on loopback: records every delivery, answers as told."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str]] = []
        self.fail_first: dict[str, int] = {}     # out_trade_no -> deliveries to refuse

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((body, request.headers.get("Content-Type", "")))
        order_id = dict(urllib.parse.parse_qsl(body.decode())).get("out_trade_no", "")
        if self.fail_first.get(order_id, 0) > 0:
            self.fail_first[order_id] -= 1
            return web.Response(text="fail")
        return web.Response(text="success")

    def forms(self, order_id: str) -> list[dict[str, str]]:
        out = []
        for body, _ in self.got:
            form = dict(urllib.parse.parse_qsl(body.decode()))
            if form.get("out_trade_no") == order_id:
                out.append(form)
        return out


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/notify/alipay", rec.handle)
    runner, url = await _serve(app)
    yield rec, url + "/notify/alipay"
    await runner.cleanup()


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[str]:
    runner, url = await _serve(create_sandbox_app(SandboxConfig(seed=7, knobs=SANDBOX_KNOBS)))
    yield url
    await runner.cleanup()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _config(sandbox: str, notify_url: str, **over: Any) -> AlipayConfig:
    base = AlipayConfig(APP_ID, sandbox + "/gateway.do", APP_KEY, PLATFORM_PUB, 2000, notify_url)
    return dataclasses.replace(base, **over)


@pytest.fixture
def alipay(sandbox: str, receiver: tuple[Receiver, str],
           http: aiohttp.ClientSession) -> AlipayConnector:
    return AlipayConnector(_config(sandbox, receiver[1]), http)


def _order(ending: int, yuan: int = 12) -> ChargeRequest:
    return ChargeRequest(f"it-{uuid.uuid4().hex[:16]}", yuan * 100 + ending, "CNY", "测试商品",
                         "barcode", auth_code="28763443825664394")


async def _ledger(http: aiohttp.ClientSession, sandbox: str, order_id: str) -> dict[str, Any]:
    async with http.get(sandbox + "/_sandbox/ledger") as resp:
        body = await resp.json()
    return body["trades"].get(order_id, {})


async def _knobs(http: aiohttp.ClientSession, sandbox: str, **changes: Any) -> int:
    async with http.post(sandbox + "/_sandbox/knobs", json=changes) as resp:
        return resp.status


async def _eventually(check: Any, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# ---- amount scenarios 00-08 -----------------------------------------------------------------

async def test_00_paid_at_once_and_notified(alipay: AlipayConnector, sandbox: str,
                                            receiver: tuple[Receiver, str],
                                            http: aiohttp.ClientSession) -> None:
    req = _order(0)
    res = await alipay.charge(req)
    assert (res.fact, res.amount, res.currency) == (Fact.PAID, 1200, "CNY")
    assert len(res.channel_trade_no) == 28
    row = await _ledger(http, sandbox, req.order_id)
    assert (row["status"], row["charges"], row["total_amount"]) == ("PAID", 1, 1200)

    async def acked() -> bool:
        return (await _ledger(http, sandbox, req.order_id))["notifies_acked"] == 1
    await _eventually(acked)
    (form,) = receiver[0].forms(req.order_id)
    note = alipay.parse_notification(urllib.parse.urlencode(form).encode(), {"Content-Type": FORM})
    assert (note.fact, note.amount, note.channel_trade_no) == (Fact.PAID, 1200, res.channel_trade_no)


async def test_01_declined_nothing_charged(alipay: AlipayConnector, sandbox: str,
                                           http: aiohttp.ClientSession) -> None:
    req = _order(1)
    res = await alipay.charge(req)
    assert (res.fact, res.failure_code) == (Fact.DECLINED, "ACQ.BUYER_BALANCE_NOT_ENOUGH")
    assert (await alipay.query(req.order_id, "CNY")).fact is Fact.CLOSED
    assert (await _ledger(http, sandbox, req.order_id))["charges"] == 0


async def test_02_payer_confirms_later(alipay: AlipayConnector) -> None:
    req = _order(2)
    assert (await alipay.charge(req)).fact is Fact.WAITING
    assert (await alipay.query(req.order_id, "CNY")).fact is Fact.WAITING

    async def paid() -> bool:
        return (await alipay.query(req.order_id, "CNY")).fact is Fact.PAID
    await _eventually(paid)


async def test_03_never_confirms_and_cancel_closes(alipay: AlipayConnector, sandbox: str,
                                                   http: aiohttp.ClientSession) -> None:
    req = _order(3)
    assert (await alipay.charge(req)).fact is Fact.WAITING
    await asyncio.sleep(0.4)              # twice payer_confirm_ms
    assert (await alipay.query(req.order_id, "CNY")).fact is Fact.WAITING
    res = await alipay.cancel(req.order_id)
    assert (res.fact, res.action) == (Fact.CLOSED, "close")
    row = await _ledger(http, sandbox, req.order_id)
    assert (row["status"], row["charges"]) == ("CLOSED", 0)


async def test_04_held_answer_is_paid_or_unknown_by_timeout(
        alipay: AlipayConnector, sandbox: str, receiver: tuple[Receiver, str],
        http: aiohttp.ClientSession) -> None:
    req = _order(4)
    started = time.monotonic()
    assert (await alipay.charge(req)).fact is Fact.PAID
    assert time.monotonic() - started >= 0.55          # hang_ms = 600
    impatient = AlipayConnector(_config(sandbox, receiver[1], call_timeout_ms=200), http)
    late = _order(4)
    with pytest.raises(OutcomeUnknown) as err:
        await impatient.charge(late)
    assert type(err.value) is OutcomeUnknown
    assert (await alipay.query(late.order_id, "CNY")).fact is Fact.PAID


@pytest.mark.parametrize("ending, notified", [(5, True), (6, False)])
async def test_05_06_commit_then_drop(alipay: AlipayConnector, sandbox: str,
                                      receiver: tuple[Receiver, str], http: aiohttp.ClientSession,
                                      ending: int, notified: bool) -> None:
    req = _order(ending)
    with pytest.raises(OutcomeUnknown) as err:
        await alipay.charge(req)
    assert type(err.value) is OutcomeUnknown
    res = await alipay.query(req.order_id, "CNY")
    assert (res.fact, res.amount) == (Fact.PAID, 1200 + ending)
    await asyncio.sleep(0.3)
    assert (len(receiver[0].forms(req.order_id)) == 1) is notified
    assert (await _ledger(http, sandbox, req.order_id))["charges"] == 1


async def test_07_unknown_error_nothing_committed(alipay: AlipayConnector, sandbox: str,
                                                  http: aiohttp.ClientSession) -> None:
    req = _order(7)
    with pytest.raises(OutcomeUnknown):
        await alipay.charge(req)
    res = await alipay.query(req.order_id, "CNY")
    assert (res.fact, res.exists) == (Fact.WAITING, False)
    assert (await _ledger(http, sandbox, req.order_id))["charges"] == 0


async def test_08_unknown_error_but_committed(alipay: AlipayConnector, sandbox: str,
                                              http: aiohttp.ClientSession) -> None:
    req = _order(8)
    with pytest.raises(OutcomeUnknown):
        await alipay.charge(req)
    assert (await alipay.query(req.order_id, "CNY")).fact is Fact.PAID
    assert (await _ledger(http, sandbox, req.order_id))["charges"] == 1


# ---- idempotency, fences, refunds -----------------------------------------------------------

async def test_second_pay_charges_nothing(alipay: AlipayConnector, sandbox: str,
                                          http: aiohttp.ClientSession) -> None:
    req = _order(0)
    assert (await alipay.charge(req)).fact is Fact.PAID
    with pytest.raises(OutcomeUnknown, match="ACQ.TRADE_HAS_SUCCESS"):
        await alipay.charge(req)
    row = await _ledger(http, sandbox, req.order_id)
    assert (row["pay_calls"], row["charges"]) == (2, 1)


async def test_cancel_fences_a_later_pay(alipay: AlipayConnector, sandbox: str,
                                         http: aiohttp.ClientSession) -> None:
    req = _order(0)
    res = await alipay.cancel(req.order_id)
    assert (res.fact, res.action) == (Fact.CLOSED, "close")
    late = await alipay.charge(req)
    assert (late.fact, late.failure_code) == (Fact.CLOSED, "ACQ.TRADE_HAS_CLOSE")
    row = await _ledger(http, sandbox, req.order_id)
    assert (row["status"], row["charges"], row["cancel_calls"]) == ("CLOSED", 0, 1)


async def test_cancel_of_a_paid_trade_refunds(alipay: AlipayConnector, sandbox: str,
                                              http: aiohttp.ClientSession) -> None:
    req = _order(0)
    await alipay.charge(req)
    res = await alipay.cancel(req.order_id)
    assert (res.fact, res.action) == (Fact.CLOSED, "refund")
    row = await _ledger(http, sandbox, req.order_id)
    assert (row["charges"], row["refunds"]) == (1, 1)


# ---- signatures and transport -----------------------------------------------------------------

async def test_bad_request_signature_is_refused(sandbox: str, receiver: tuple[Receiver, str],
                                                http: aiohttp.ClientSession) -> None:
    forger = AlipayConnector(_config(sandbox, receiver[1], app_private_key=PLATFORM_KEY), http)
    req = _order(0)
    res = await forger.charge(req)
    assert (res.fact, res.failure_code) == (Fact.DECLINED, "isv.invalid-signature")
    assert await _ledger(http, sandbox, req.order_id) == {}


async def test_missing_sign_is_40001(sandbox: str, http: aiohttp.ClientSession) -> None:
    params = {"app_id": APP_ID, "method": "alipay.trade.query", "charset": "utf-8",
              "sign_type": "RSA2", "timestamp": "2025-01-01 00:00:00", "version": "1.0"}
    async with http.post(sandbox + "/gateway.do", params=params,
                         data={"biz_content": '{"out_trade_no":"x"}'}) as resp:
        body = await resp.read()
    payload = signing.open_response(body, "alipay.trade.query", PLATFORM_PUB)
    assert (payload["code"], payload["sub_code"]) == ("40001", "isv.missing-signature")


async def test_answer_signed_by_another_key_is_a_protocol_error(
        sandbox: str, receiver: tuple[Receiver, str], http: aiohttp.ClientSession) -> None:
    trusting_wrong_key = AlipayConnector(_config(sandbox, receiver[1], alipay_public_key=APP_PUB), http)
    with pytest.raises(ProtocolError):
        await trusting_wrong_key.query("whatever", "CNY")


async def test_unreachable_gateway_is_not_sent(http: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again before the call: nobody listens
    closed = AlipayConnector(_config(f"http://127.0.0.1:{port}", ""), http)
    with pytest.raises(NotSent):
        await closed.charge(_order(0))


@pytest.mark.parametrize("status, body, error", [(502, b"bad gateway", OutcomeUnknown),
                                                 (200, b"<html>oops</html>", ProtocolError),
                                                 (404, b"", ProtocolError)])
async def test_odd_http_answers(http: aiohttp.ClientSession, status: int, body: bytes,
                                error: type[Exception]) -> None:
    async def odd(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body)
    app = web.Application()
    app.router.add_post("/gateway.do", odd)
    runner, url = await _serve(app)
    try:
        with pytest.raises(error) as err:
            await AlipayConnector(_config(url, ""), http).charge(_order(0))
        assert type(err.value) is error
    finally:
        await runner.cleanup()


async def test_forged_notifications_are_refused(alipay: AlipayConnector) -> None:
    form = {"notify_type": "trade_status_sync", "notify_id": "n", "app_id": APP_ID,
            "out_trade_no": "o", "trade_no": "T", "trade_status": "TRADE_SUCCESS",
            "total_amount": "1.00", "sign_type": "RSA2"}
    good = signing.sign_notification(form, PLATFORM_KEY)
    assert alipay.parse_notification(urllib.parse.urlencode(good).encode(), {"Content-Type": FORM}).amount == 100
    wrong_key = signing.sign_notification(form, APP_KEY)
    one_byte = urllib.parse.urlencode(good).encode().replace(b"1.00", b"2.00")
    for body in (urllib.parse.urlencode(wrong_key).encode(), one_byte):
        with pytest.raises(ProtocolError):
            alipay.parse_notification(body, {"Content-Type": FORM})


# ---- knobs ------------------------------------------------------------------------------------

async def test_knobs_read_write_and_validation(sandbox: str, http: aiohttp.ClientSession) -> None:
    async with http.get(sandbox + "/_sandbox/knobs") as resp:
        assert (await resp.json())["payer_confirm_ms"] == 200
    assert await _knobs(http, sandbox, error_rate=2) == 400
    assert await _knobs(http, sandbox, no_such_knob=1) == 400
    assert await _knobs(http, sandbox, naive_charge="yes") == 400


async def test_error_rate_knob(alipay: AlipayConnector, sandbox: str,
                               http: aiohttp.ClientSession) -> None:
    assert await _knobs(http, sandbox, error_rate=1.0) == 200
    try:
        req = _order(0)
        with pytest.raises(OutcomeUnknown, match="20000"):
            await alipay.charge(req)
        row = await _ledger(http, sandbox, req.order_id)
        assert (row["pay_calls"], row["charges"]) == (1, 0)
    finally:
        assert await _knobs(http, sandbox, error_rate=0.0) == 200
    assert (await alipay.query(req.order_id, "CNY")).exists is False


async def test_commit_then_drop_and_hang_rate_knobs(alipay: AlipayConnector, sandbox: str,
                                                    http: aiohttp.ClientSession) -> None:
    assert await _knobs(http, sandbox, commit_then_drop_rate=1.0) == 200
    try:
        req = _order(0)
        with pytest.raises(OutcomeUnknown):
            await alipay.charge(req)
        assert (await _ledger(http, sandbox, req.order_id))["charges"] == 1
    finally:
        await _knobs(http, sandbox, commit_then_drop_rate=0.0)
    assert await _knobs(http, sandbox, hang_rate=1.0, hang_ms=300) == 200
    try:
        started = time.monotonic()
        assert (await alipay.charge(_order(0))).fact is Fact.PAID
        assert time.monotonic() - started >= 0.28
    finally:
        await _knobs(http, sandbox, hang_rate=0.0, hang_ms=600)


async def test_naive_charge_knob_double_charges(alipay: AlipayConnector, sandbox: str,
                                                http: aiohttp.ClientSession) -> None:
    assert await _knobs(http, sandbox, naive_charge=True) == 200
    try:
        req = _order(0)
        assert (await alipay.charge(req)).fact is Fact.PAID
        assert (await alipay.charge(req)).fact is Fact.PAID
        assert (await _ledger(http, sandbox, req.order_id))["charges"] == 2
    finally:
        await _knobs(http, sandbox, naive_charge=False)


async def test_notification_retries_until_success(alipay: AlipayConnector, sandbox: str,
                                                  receiver: tuple[Receiver, str],
                                                  http: aiohttp.ClientSession) -> None:
    req = _order(0)
    receiver[0].fail_first[req.order_id] = 2
    await alipay.charge(req)

    async def acked() -> bool:
        return (await _ledger(http, sandbox, req.order_id)).get("notifies_acked") == 1
    await _eventually(acked)
    forms = receiver[0].forms(req.order_id)
    assert len(forms) == 3 and len({f["notify_id"] for f in forms}) == 1
    assert (await _ledger(http, sandbox, req.order_id))["notifies_sent"] == 3


async def test_health_counts_a_notification_as_pending_until_it_is_delivered(
        alipay: AlipayConnector, sandbox: str, receiver: tuple[Receiver, str],
        http: aiohttp.ClientSession) -> None:
    async def pending() -> int:
        async with http.get(sandbox + "/_sandbox/health") as resp:
            return int((await resp.json())["notify_pending"])
    assert await pending() == 0
    req = _order(0)
    receiver[0].fail_first[req.order_id] = 1     # refused once: pending through its retry too
    await alipay.charge(req)
    assert await pending() == 1                  # in its notify_delay_ms

    async def delivered() -> bool:
        return (await _ledger(http, sandbox, req.order_id)).get("notifies_acked") == 1
    await _eventually(delivered)
    assert len(receiver[0].forms(req.order_id)) == 2
    assert await pending() == 0


async def test_notify_duplicate_and_drop_knobs(alipay: AlipayConnector, sandbox: str,
                                               receiver: tuple[Receiver, str],
                                               http: aiohttp.ClientSession) -> None:
    assert await _knobs(http, sandbox, notify_duplicate_rate=1.0) == 200
    try:
        dup = _order(0)
        await alipay.charge(dup)

        async def two() -> bool:
            return len(receiver[0].forms(dup.order_id)) == 2
        await _eventually(two)
        assert len({f["notify_id"] for f in receiver[0].forms(dup.order_id)}) == 1
    finally:
        await _knobs(http, sandbox, notify_duplicate_rate=0.0)
    assert await _knobs(http, sandbox, notify_drop_rate=1.0) == 200
    try:
        dropped = _order(0)
        assert (await alipay.charge(dropped)).fact is Fact.PAID
        await asyncio.sleep(0.3)
        assert receiver[0].forms(dropped.order_id) == []
    finally:
        await _knobs(http, sandbox, notify_drop_rate=0.0)


# ---- the process --------------------------------------------------------------------------------

async def test_python_m_channels_sandbox_runs_and_resets(http: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "channels.sandbox", "--port", str(port), "--seed", "3",
         "--payer-confirm-ms", "100", "--error-rate", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)  # type: ignore[union-attr]
        assert line.decode().strip() == f"sandbox listening on http://127.0.0.1:{port}"
        url = f"http://127.0.0.1:{port}"
        async with http.get(url + "/_sandbox/health") as resp:
            assert resp.status == 200
        async with http.get(url + "/_sandbox/knobs") as resp:
            assert (await resp.json())["payer_confirm_ms"] == 100
        connector = AlipayConnector(_config(url, ""), http)
        req = _order(0)
        assert (await connector.charge(req)).fact is Fact.PAID
        async with http.post(url + "/_sandbox/reset") as resp:
            assert resp.status == 200
        async with http.get(url + "/_sandbox/ledger") as resp:
            assert (await resp.json())["totals"]["trades"] == 0
    finally:
        proc.terminate()                    # ours, by PID
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0


# ---- refunds, refund notifications and the bill over HTTP --------------------------------------

def _refund_req(req: ChargeRequest, amount: int, refund_id: str = "") -> RefundRequest:
    return RefundRequest(req.order_id, refund_id or f"rf-{uuid.uuid4().hex[:12]}", amount,
                         req.amount, "CNY", reason="测试退款")


async def _raw(http: aiohttp.ClientSession, sandbox: str, params: dict[str, str]) -> dict[str, Any]:
    """One signed call the way the SDK sends it; the verified response object."""
    query, form = tf.split_for_wire(signing.sign_params(params, APP_KEY))
    async with http.post(sandbox + "/gateway.do", params=query, data=form) as resp:
        body = await resp.read()
    return signing.open_response(body, params["method"], PLATFORM_PUB)


async def test_refund_repeat_answers_fund_change_n_and_is_still_succeeded(
        alipay: AlipayConnector, sandbox: str, http: aiohttp.ClientSession) -> None:
    req = _order(0)
    await alipay.charge(req)
    rq = _refund_req(req, 200)
    first = await alipay.refund(rq)
    assert (first.status, first.amount, first.raw_status) == (RefundStatus.SUCCEEDED, 200,
                                                              "fund_change=Y")
    raw = await _raw(http, sandbox, tf.refund_params(APP_ID, rq, datetime.now(timezone.utc)))
    assert (raw["code"], raw["fund_change"], raw["refund_fee"]) == ("10000", "N", "2.00")
    again = await alipay.refund(rq)
    assert (again.status, again.amount, again.raw_status) == (RefundStatus.SUCCEEDED, 200,
                                                              "REFUND_SUCCESS")
    row = await _ledger(http, sandbox, req.order_id)
    assert (row["refunds"], row["refunded_amount"], row["refund_calls"]) == (1, 200, 3)


async def test_refund_refusals_in_alipays_words(alipay: AlipayConnector, sandbox: str,
                                                http: aiohttp.ClientSession) -> None:
    paid, waiting = _order(0), _order(3)
    await alipay.charge(paid)
    await alipay.charge(waiting)
    unknown = await alipay.refund(_refund_req(_order(0), 100))
    not_paid = await alipay.refund(_refund_req(waiting, 100))
    too_much = await alipay.refund(_refund_req(paid, paid.amount + 1))
    assert [(r.status, r.failure_code) for r in (unknown, not_paid, too_much)] == [
        (RefundStatus.FAILED, "ACQ.TRADE_NOT_EXIST"), (RefundStatus.FAILED, "ACQ.TRADE_STATUS_ERROR"),
        (RefundStatus.FAILED, "ACQ.REASON_TRADE_REFUND_FEE_ERR")]
    params = tf.refund_params(APP_ID, _refund_req(paid, 100), datetime.now(timezone.utc))
    params["biz_content"] = json.dumps({"out_trade_no": paid.order_id, "refund_amount": "1.00"})
    no_number = await _raw(http, sandbox, params)
    assert no_number["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    rq = _refund_req(paid, 100)
    assert (await alipay.refund(rq)).status is RefundStatus.SUCCEEDED
    with pytest.raises(OutcomeUnknown, match="ACQ.DISCORDANT_REPEAT_REQUEST"):
        await alipay.refund(dataclasses.replace(rq, amount=150))
    assert (await _ledger(http, sandbox, paid.order_id))["refunded_amount"] == 100


async def test_delayed_refund_is_pending_then_notified(
        alipay: AlipayConnector, sandbox: str, receiver: tuple[Receiver, str],
        http: aiohttp.ClientSession) -> None:
    req = _order(0)
    await alipay.charge(req)
    assert await _knobs(http, sandbox, refund_delay_ms=300) == 200
    try:
        rq = _refund_req(req, req.amount)
        assert (await alipay.refund(rq)).status is RefundStatus.PENDING
        queried = await alipay.refund_query(req.order_id, rq.refund_id, "CNY")
        assert (queried.status, queried.exists) == (RefundStatus.PENDING, False)

        async def done() -> bool:
            res = await alipay.refund_query(req.order_id, rq.refund_id, "CNY")
            return res.status is RefundStatus.SUCCEEDED and res.amount == req.amount
        await _eventually(done)
    finally:
        assert await _knobs(http, sandbox, refund_delay_ms=0) == 200
    rec, _ = receiver

    async def notified() -> bool:
        return any(f.get("out_biz_no") == rq.refund_id for f in rec.forms(req.order_id))
    await _eventually(notified)
    form = next(f for f in rec.forms(req.order_id) if f.get("out_biz_no") == rq.refund_id)
    body = urllib.parse.urlencode(form).encode()
    note = alipay.parse_notification(body, {"Content-Type": FORM})
    assert (note.kind, note.refund_id, note.fact, note.raw_status) == (
        NotificationKind.REFUND, rq.refund_id, Fact.PAID, "TRADE_CLOSED")
    assert form["refund_fee"] == tf.fen_to_yuan(req.amount) and form["gmt_refund"]


async def test_bill_download_url_expires_after_30_seconds(
        alipay: AlipayConnector, sandbox: str, http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    req = _order(0, yuan=77)
    await alipay.charge(req)
    today = datetime.now(timezone.utc).date()
    answer = await _raw(http, sandbox, tf.bill_url_params(APP_ID, today, datetime.now(timezone.utc)))
    url = answer["bill_download_url"]
    assert url.startswith(sandbox + "/downloadBillFile.resource?bizType=trade&")
    async with http.get(url) as resp:                   # unsigned, as at Alipay
        archive = await resp.read()
    lines = [x for x in bill.parse_bill(archive, today).lines if x.order_id == req.order_id]
    assert [(x.kind, x.amount) for x in lines] == [(StatementKind.PAYMENT, req.amount)]
    later = time.monotonic() + alipay_bill.BILL_URL_VALID_S + 1
    monkeypatch.setattr(alipay_bill.time, "monotonic", lambda: later)
    async with http.get(url) as resp:
        assert (resp.status, await resp.read()) == (200, alipay_bill.EXPIRED_PAGE)
    statement = await alipay.statement(today)          # a fresh URL works
    assert any(x.order_id == req.order_id for x in statement.lines)
    future = await _raw(http, sandbox, tf.bill_url_params(APP_ID, today + timedelta(days=2),
                                                          datetime.now(timezone.utc)))
    assert future["sub_code"] == "isp.bill_not_exist"
    with pytest.raises(tf.BillNotReady):
        await alipay.statement(today + timedelta(days=2))
