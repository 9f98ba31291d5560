"""Batch reconciliation on the real stack: real redis-server, the channel sandboxes over HTTP
with their real bill formats (Alipay's zipped GBK CSV, WeChat Pay's backtick trade bill, Stripe's
balance transactions), a Ray shard actor and the Reconciler actor, the gateway's ops endpoint and
the `paycell reconcile` command.

The orders are made in their own SET ("rc"), deployed into the session's Ray cluster next to the
session's SET with the same Redis and sandbox, but with its own order schedule: the first query
comes only after 10 minutes, so an order whose answer and notification were both lost (amount
ending 06) and one whose payer never confirms (03) stay PENDING until the reconciler gets them,
while their async window (2 s) is long over. That is the state reconciliation exists for (a shard
whose queries and cancels kept failing, or a stack that was down); the other tests' SET keeps
its fast schedule. The SET's reconciler judges only its own orders: the statement's lines of the
session's SET are counted as another SET's.
"""
from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from actors.reconcile_match import refund_id_for
from actors.store import OrderStore
from channels.base import ChargeRequest
from channels.registry import build_connector
from core.ids import make_order_id
from core.order import CreateOrder, Order
from core.settings import Settings, load_settings
from gateway.client import PaycellClient
from gateway.local import free_port
from tests.integration.stack import TEST_ROUTING, gateway

pytestmark = pytest.mark.integration

RC_ORDERS = {"set_name": "rc", "shard_count": 1, "sync_deadline_ms": 500,
             "query_first_delay_ms": 600_000, "query_interval_ms": 600_000,
             "async_window_ms": 2000}
ALIPAY_CODE, WECHAT_CODE = "28763443825664394", "134567890123456789"
OPERATOR = ("local-operator", "local-operator-secret")
REPO = Path(__file__).resolve().parents[2]


def rc_settings(stack: Settings) -> Settings:
    return load_settings(env={}, overrides={
        "data_dir": stack.data_dir, "redis": {"port": stack.redis.port},
        "sandbox": {"port": stack.sandbox.port}, "gateway": {"port": free_port()},
        "ray": {"namespace": stack.ray.namespace}, "orders": RC_ORDERS,
        "routing": TEST_ROUTING, "reconcile": {"enabled": False, "statement_lag_s": 1}})


@pytest_asyncio.fixture(scope="module")
async def rc(stack: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    from actors.factory import deploy, teardown
    settings = rc_settings(stack["settings"])
    await asyncio.to_thread(deploy, settings)
    try:
        async with gateway(settings) as url:
            yield {"url": url, "settings": settings}
    finally:
        await asyncio.to_thread(teardown, settings)


def _body(channel: str, amount: int, key: str) -> dict[str, Any]:
    payment: dict[str, str]
    if channel == "stripe":
        payment, currency = {"type": "card", "token": "pm_card_visa"}, "USD"
    else:
        payment = {"type": "barcode",
                   "auth_code": ALIPAY_CODE if channel == "alipay" else WECHAT_CODE}
        currency = "CNY"
    return {"out_trade_no": key, "user_id": "u-rc", "amount": amount, "currency": currency,
            "subject": "gems", "channel": channel, "payment": payment}


async def _sandbox(settings: Settings, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as s, s.request(method, settings.sandbox.url() + path,
                                                       json=body) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()


async def _trade(settings: Settings, channel: str, order_id: str) -> dict[str, Any]:
    ledger = await _sandbox(settings, "GET", f"/{channel}/_sandbox/ledger")
    return ledger["trades"].get(order_id, {})


async def _charge_directly(settings: Settings, channel: str, order_id: str, amount: int) -> Any:
    """A charge that reaches the channel without paycell's shard (a second pay request for
    the same trade number, or a payment paycell never recorded)."""
    connector = build_connector(channel, settings, "")
    try:
        return await connector.charge(ChargeRequest(order_id, amount, "CNY", "gems", "barcode",
                                                    auth_code=ALIPAY_CODE))
    finally:
        await connector.close()


async def _run(c: PaycellClient, channel: str, day: str) -> dict[str, Any]:
    path = f"/v1/ops/reconciliation/{channel}/{day}"
    status, report, headers = await c.request("POST", path, None)
    assert status in (200, 202), report
    assert headers["Location"] == path
    run_no = report["run"]
    for _ in range(600):
        if report["status"] != "running" and report["run"] == run_no:
            return report
        await asyncio.sleep(0.1)
        status, report, _ = await c.request("GET", path, None)
        assert status == 200, report
    raise AssertionError(f"{channel} {day} still running: {report}")


async def test_reconciliation_settles_closes_refunds_and_reports(rc: dict[str, Any]) -> None:
    settings: Settings = rc["settings"]
    tag = f"{int(time.time())}"
    day = datetime.now(timezone.utc).date().isoformat()
    orders: dict[str, dict[str, Any]] = {}
    async with PaycellClient(rc["url"], "demo-app", "demo-secret") as c:
        for name, channel, amount in (("alipay_lost", "alipay", 1206),
                                      ("alipay_unpaid", "alipay", 1203),
                                      ("alipay_twice", "alipay", 1200),
                                      ("wechat_lost", "wechatpay", 1306),
                                      ("wechat_unpaid", "wechatpay", 1303),
                                      ("stripe_lost", "stripe", 1406)):
            status, o = await c.create_order(_body(channel, amount, f"rc-{name}-{tag}"))
            orders[name] = o
            expected = (200, "SUCCEEDED") if name == "alipay_twice" else (202, "PENDING")
            assert (status, o["status"]) == expected, (name, o)

        # the same trade number charged a second time at the channel
        twice = orders["alipay_twice"]["order_id"]
        await _sandbox(settings, "POST", "/alipay/_sandbox/knobs", {"naive_charge": True})
        try:
            await _charge_directly(settings, "alipay", twice, 1200)
        finally:
            await _sandbox(settings, "POST", "/alipay/_sandbox/knobs", {"naive_charge": False})
        assert (await _trade(settings, "alipay", twice))["charges"] == 2

        # committed PENDING, but the shard died before the charge left: the channel never saw it
        now = time.time()
        never_sent = make_order_id("local", "rc", 0, int(now * 1000))
        store = OrderStore(_redis(settings), "rc", 0, idempotency_ttl_s=60, commit_batch_max=8)
        cmd = CreateOrder("demo-app", f"rc-never-{tag}", "u-rc", 1500, "CNY", "gems", "alipay",
                          "barcode")
        from dataclasses import replace
        await store.commit(replace(Order.new(never_sent, cmd, now), charge_sent=True), new=True)
        # a payment the channel took for an order paycell has no record of
        unknown = make_order_id("local", "rc", 0, int(now * 1000))
        await _charge_directly(settings, "alipay", unknown, 1600)

        await asyncio.sleep(3.2)     # past the 2 s async window and the 1 s statement lag

        async with PaycellClient(rc["url"], *OPERATOR) as ops:
            reports = {ch: await _run(ops, ch, day) for ch in ("alipay", "wechatpay", "stripe")}
            for ch in reports:
                _, text, _ = await ops.request(
                    "GET", f"/v1/ops/reconciliation/{ch}/{day}?format=text", None)
                print("\n" + text["text"])

        for ch, report in reports.items():
            assert report["status"] == "complete", report
            assert report["counts"]["errors"] == 0, report["errors"]
        for name in ("alipay_lost", "wechat_lost", "stripe_lost"):
            status, o = await c.get_order(orders[name]["order_id"])
            assert (o["status"], o["resolved_by"]) == ("SUCCEEDED", "reconcile"), (name, o)
            assert o["channel_trade_no"], o
        for name in ("alipay_unpaid", "wechat_unpaid"):
            status, o = await c.get_order(orders[name]["order_id"])
            assert (o["status"], o["resolved_by"]) == ("CLOSED", "reconcile"), (name, o)
        status, o = await c.get_order(never_sent)
        assert (o["status"], o["resolved_by"]) == ("CLOSED", "reconcile")

    # the channel fenced the unpaid trade numbers: a late pay request charges nothing
    fenced = [("alipay", orders["alipay_unpaid"]["order_id"]),
              ("wechatpay", orders["wechat_unpaid"]["order_id"]), ("alipay", never_sent)]
    for ch, oid in fenced:
        trade = await _trade(settings, ch, oid)
        assert (trade["status"], trade["charges"]) == ("CLOSED", 0), (ch, oid, trade)
        assert trade["cancel_calls"] == 1
    await _charge_directly(settings, "alipay", never_sent, 1500)
    assert (await _trade(settings, "alipay", never_sent))["charges"] == 0

    alipay = reports["alipay"]
    c_ = alipay["counts"]
    assert (c_["settled_paid"], c_["settled_closed"], c_["refunds_sent"]) == (1, 2, 1)
    assert alipay["mismatches_by_kind"] == {"missing_in_paycell": 1, "paid_twice": 1}
    dup = next(m for m in alipay["mismatches"] if m["kind"] == "paid_twice")
    assert dup["order_id"] == twice
    assert dup["refunds"] == [{"refund_id": refund_id_for("alipay", twice, 2), "line": 2,
                               "amount": 1200, "currency": "CNY", "status": "SUCCEEDED"}]
    trade = await _trade(settings, "alipay", twice)
    assert (trade["refunded_amount"], trade["refund_calls"]) == (1200, 1)
    assert next(m for m in alipay["mismatches"]
                if m["kind"] == "missing_in_paycell")["order_id"] == unknown
    assert (reports["wechatpay"]["counts"]["settled_paid"],
            reports["wechatpay"]["counts"]["settled_closed"]) == (1, 1)
    assert reports["stripe"]["counts"]["settled_paid"] == 1

    # the merchant refunds part of the order reconciliation settled: a refund of paycell's
    async with PaycellClient(rc["url"], "demo-app", "demo-secret") as c:
        status, r = await c.create_refund(orders["alipay_lost"]["order_id"],
                                          {"out_refund_no": f"rf-{tag}", "amount": 206})
        assert (status, r["status"]) == (200, "SUCCEEDED"), r

    # a second run changes nothing at the channel and reports the same, settled ones counted
    calls = {oid: (await _trade(settings, ch, oid))["cancel_calls"] for ch, oid in fenced}
    async with PaycellClient(rc["url"], *OPERATOR) as ops:
        again = await _run(ops, "alipay", day)
    assert again["run"] == alipay["run"] + 1 and again["mismatches"] == alipay["mismatches"]
    c2 = again["counts"]
    assert (c2["settled_paid"], c2["settled_closed"], c2["refunds_sent"]) == (0, 0, 0)
    assert (c2["already_settled"], c2["refunds_already_done"]) == (3, 1)
    assert (c2["own_refund_lines"], c2["refunds_matched"]) == (1, 1)   # its refund, the merchant's
    assert (await _trade(settings, "alipay", twice))["refund_calls"] == 1
    assert {oid: (await _trade(settings, ch, oid))["cancel_calls"] for ch, oid in fenced} == calls


def _redis(settings: Settings) -> Any:
    from actors.factory import redis_client
    return redis_client(settings)


async def test_reports_need_operator_credentials_and_read_as_text(rc: dict[str, Any]) -> None:
    day = datetime.now(timezone.utc).date().isoformat()
    path = f"/v1/ops/reconciliation/alipay/{day}"
    async with aiohttp.ClientSession() as s:
        async with s.get(rc["url"] + path) as r:
            assert r.status == 401
            assert (await r.json())["code"] == "unauthenticated"
        async with s.post(rc["url"] + path) as r:
            assert r.status == 401
    async with PaycellClient(rc["url"], "demo-app", "demo-secret") as merchant:
        status, body, _ = await merchant.request("GET", path, None)
        assert status == 401, body
    async with PaycellClient(rc["url"], *OPERATOR) as ops:
        status, body, _ = await ops.request("GET", path + "?format=text", None)
        assert status == 200
        assert body["text"].startswith(f"Reconciliation of alipay for {day}")
        status, body, _ = await ops.request("GET", "/v1/ops/reconciliation/alipay/2026-02-30",
                                            None)
        assert (status, body["code"]) == (400, "invalid_request")


async def test_the_reconcile_command_prints_progress_and_the_summary(rc: dict[str, Any]) -> None:
    day = datetime.now(timezone.utc).date().isoformat()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "reconcile", "--channel", "wechatpay", "--date", day,
        "--url", rc["url"], "--poll", "0.2", cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, (text, err.decode())
    assert "lines parsed" in text and "[complete/done]" in text
    assert f"Reconciliation of wechatpay for {day} (region local, SET rc): complete" in text


async def _reconciler_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for f in text_string_to_metric_families(text) for x in f.samples
            if x.name.startswith("paycell_reconciler_")}


def _unix(rfc3339_text: str) -> float:
    return datetime.strptime(rfc3339_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp()


async def test_metrics_show_the_reconcilers_counters_after_a_real_run(rc: dict[str, Any]) -> None:
    """/metrics asks the reconciler actor for its counters: after a real run of alipay's day
    they moved by exactly what the run's report says it did."""
    settings: Settings = rc["settings"]
    tag = f"m{int(time.time())}"
    day = datetime.now(timezone.utc).date().isoformat()
    async with PaycellClient(rc["url"], "demo-app", "demo-secret") as c:
        made = {}
        for name, amount in (("lost", 1706), ("unpaid", 1703), ("twice", 1700)):
            status, o = await c.create_order(_body("alipay", amount, f"rc-{name}-{tag}"))
            assert status in (200, 202), o
            made[name] = o["order_id"]
    await _sandbox(settings, "POST", "/alipay/_sandbox/knobs", {"naive_charge": True})
    try:
        await _charge_directly(settings, "alipay", made["twice"], 1700)
    finally:
        await _sandbox(settings, "POST", "/alipay/_sandbox/knobs", {"naive_charge": False})
    before = await _reconciler_samples(rc["url"])
    await asyncio.sleep(3.2)     # past the 2 s async window and the 1 s statement lag
    async with PaycellClient(rc["url"], *OPERATOR) as ops:
        report = await _run(ops, "alipay", day)
    after = await _reconciler_samples(rc["url"])

    assert report["status"] == "complete", report
    counts = report["counts"]
    settled = {s["order_id"]: s["fact"] for s in report["settled"] if s["outcome"] == "settled"}
    assert (settled[made["lost"]], settled[made["unpaid"]]) == ("PAID", "CLOSED")
    assert report["mismatches_by_kind"].get("paid_twice", 0) >= 1 and counts["refunds_sent"] >= 1

    def moved(name: str, **labels: str) -> float:
        key = (f"paycell_reconciler_{name}", tuple(sorted({"channel": "alipay",
                                                            **labels}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)
    assert moved("runs_total", outcome="complete") == 1
    assert moved("runs_total", outcome="failed") == 0
    assert moved("settled_total", kind="paid") == counts["settled_paid"] >= 1
    assert moved("settled_total", kind="closed") == counts["settled_closed"] >= 1
    assert moved("settled_total", kind="refunded") == counts["refunds_sent"]
    for kind, n in report["mismatches_by_kind"].items():
        assert moved("mismatches_total", kind=kind) == n, kind
    ch = (("channel", "alipay"),)
    finished, started = _unix(report["finished_at"]), _unix(report["started_at"])
    assert abs(after[("paycell_reconciler_last_run_timestamp_seconds", ch)] - finished) < 0.002
    assert abs(after[("paycell_reconciler_last_run_duration_seconds", ch)]
               - (finished - started)) < 0.003
    assert after[("paycell_reconciler_runs_inflight", ())] == 0
