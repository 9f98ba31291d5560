"""Merchant events: ids, bodies, signatures and their verification, the retry schedule, the SSRF
classifier and guarded resolver, and the notify_url check at create time."""
from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from actors.merchant_notify import GuardedResolver, TargetRefused, target_problem
from core.errors import ConfigError, ValidationError
from core.events import event_headers, event_id, order_event, refund_event, sign_event
from core.netguard import blocked_reason
from core.order import CreateOrder, Order
from core.refund import CreateRefund, Refund, RefundStatus
from core.settings import load_settings
from core.states import Fact, OrderStatus, Rung
from gateway.client import EventSignatureError, verify_event
from gateway.validation import parse_create_order

T0 = 1_790_000_000.0


def paid_order(notify_url: str = "https://m.example/n") -> Order:
    cmd = CreateOrder(app_id="demo-app", out_trade_no="t-1", user_id="u", amount=1200,
                      currency="CNY", subject="gems", channel="alipay", payment_type="barcode",
                      auth_code="28763443825664394", notify_url=notify_url)
    o = Order.new("P_local_s0_1_000000000abcdefghij", cmd, T0)
    new, _ = o.learn(Fact.PAID, Rung.SYNC, T0 + 0.5, channel_trade_no="2026x")
    return new


# ---------------------------------------------------------------- ids and bodies
def test_event_ids_are_a_function_of_object_and_status() -> None:
    o = paid_order()
    eid, body = order_event(o)
    assert eid == "ev_P_local_s0_1_000000000abcdefghij_succeeded"
    assert order_event(o) == (eid, body)           # the same final state: the same event
    later = replace(o, conflicts=1, updated_at=T0 + 9)   # a repeated final fact: same id
    assert order_event(later)[0] == eid
    assert event_id(o.order_id, "FAILED") != eid
    event = orjson.loads(body)
    assert event["type"] == "order.succeeded" and event["event_id"] == eid
    assert event["data"] == o.to_api() and event["created_at"] == "2026-09-21T14:13:20.500Z"


@pytest.mark.parametrize("status,kind", [(OrderStatus.FAILED, "order.failed"),
                                         (OrderStatus.CLOSED, "order.closed")])
def test_order_event_types(status: OrderStatus, kind: str) -> None:
    o = replace(paid_order(), status=status)
    assert orjson.loads(order_event(o)[1])["type"] == kind


def test_refund_events() -> None:
    o = paid_order()
    r = Refund.new("R_local_s0_1_000000000abcdefghij",
                   CreateRefund("demo-app", o.order_id, "rf-1", 500), o, T0 + 1)
    for status, kind in ((RefundStatus.SUCCEEDED, "refund.succeeded"),
                         (RefundStatus.FAILED, "refund.failed")):
        final, _ = r.learn(status, Rung.SYNC, T0 + 2)
        eid, body = refund_event(final)
        assert eid == f"ev_{r.refund_id}_{status.value.lower()}"
        event = orjson.loads(body)
        assert (event["type"], event["data"]) == (kind, final.to_api())
    with pytest.raises(KeyError):
        refund_event(r)  # PENDING is no event


# ---------------------------------------------------------------- signature
def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    # Known answer, computed independently: printf '1700000000.{"a":1}' | openssl dgst
    # -sha256 -hmac demo-secret
    assert sign_event("demo-secret", "1700000000", b'{"a":1}') == \
        "2a542428182237bed2081dc2d1eabcbd3e780f8750a0be7281a9f494d66be808"


def test_verify_event_accepts_and_rejects() -> None:
    eid, body = order_event(paid_order())
    h = event_headers("demo-secret", eid, 1_700_000_000, body)
    assert verify_event("demo-secret", h, body, now=1_700_000_100)["event_id"] == eid
    bad: list[tuple[str, dict[str, str], bytes, float]] = [
        ("other-secret", h, body, 1_700_000_100),
        ("demo-secret", h, body + b" ", 1_700_000_100),
        ("demo-secret", h, body, 1_700_000_301),          # too old
        ("demo-secret", h, body, 1_699_999_699),          # too far ahead
        ("demo-secret", {**h, "X-Paycell-Event-Id": "ev_other"}, body, 1_700_000_000),
        ("demo-secret", {**h, "X-Paycell-Timestamp": "1700000001"}, body, 1_700_000_000),
        ("demo-secret", {k: v for k, v in h.items() if k != "X-Paycell-Signature"}, body,
         1_700_000_000),
    ]
    for secret, headers, raw, now in bad:
        with pytest.raises(EventSignatureError):
            verify_event(secret, headers, raw, now=now)


# ---------------------------------------------------------------- settings
def test_retry_schedule_and_defaults() -> None:
    s = load_settings(env={})
    assert s.merchant_notify.retry_schedule() == (5, 15, 60, 300, 1800, 7200)
    assert s.merchant_notify.allow_private_targets is True          # local mode
    t = load_settings(env={}, overrides={"merchant_notify": {"retry_schedule_ms": "200, 500"}})
    assert t.merchant_notify.retry_schedule() == (0.2, 0.5)
    for bad in ("5,x", "-1", ",".join(["1"] * 21)):
        with pytest.raises(ConfigError, match="retry_schedule_ms"):
            load_settings(env={}, overrides={"merchant_notify": {"retry_schedule_ms": bad}})
    with pytest.raises(ConfigError, match="event_keep_s"):
        load_settings(env={}, overrides={"merchant_notify": {"event_keep_s": 3600}})


def test_cluster_mode_refuses_private_targets_unless_set() -> None:
    base = {"mode": "cluster", "redis": {"url": "redis://10.0.0.5:6379/0"},
            "ray": {"address": "10.0.0.6:6379"},
            "apps": [{"app_id": "shop", "secret": "0123456789"}],
            "ops": {"operator_secret": "a-real-operator-secret"}}
    assert load_settings(env={}, overrides=base).merchant_notify.allow_private_targets is False
    opened = load_settings(env={"PAYCELL_MERCHANT_NOTIFY__ALLOW_PRIVATE_TARGETS": "true"},
                           overrides=base)
    assert opened.merchant_notify.allow_private_targets is True


# ---------------------------------------------------------------- SSRF classifier
BLOCKED = {
    "127.0.0.1": "loopback", "127.9.9.9": "loopback", "::1": "loopback",
    "::ffff:127.0.0.1": "loopback", "::ffff:10.0.0.1": "private",
    "0.0.0.0": "unspecified", "::": "unspecified",
    "10.0.0.1": "private", "10.255.255.254": "private", "172.16.0.1": "private",
    "172.31.255.1": "private", "192.168.1.1": "private",
    "169.254.169.254": "link-local", "169.254.0.1": "link-local", "fe80::1": "link-local",
    "fd00::1": "private", "fdff:ffff::1": "private", "fc00::1": "private",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast",
    "100.64.0.1": "", "100.127.255.254": "", "198.18.0.1": "", "192.0.0.8": "",
    "240.0.0.1": "", "255.255.255.255": "", "2001:db8::1": "",
    "64:ff9b::7f00:1": "loopback", "2002:7f00:1::1": "loopback", "2001::1": "",
}
PUBLIC = ("8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1",
          "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808")


@pytest.mark.parametrize("ip", sorted(BLOCKED))
def test_blocked_addresses(ip: str) -> None:
    reason = blocked_reason(ip)
    assert reason, ip
    assert BLOCKED[ip] in reason        # "" in reason: any reason (name varies by range)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses(ip: str) -> None:
    assert blocked_reason(ip) == ""


def test_target_problem_for_literals() -> None:
    assert "loopback" in target_problem("http://127.0.0.1:9/x", allow_private=False)
    assert "loopback" in target_problem("http://[::ffff:127.0.0.1]/x", allow_private=False)
    assert "link-local" in target_problem("http://169.254.169.254/latest", allow_private=False)
    assert target_problem("http://127.0.0.1:9/x", allow_private=True) == ""
    assert target_problem("https://8.8.8.8/x", allow_private=False) == ""
    assert target_problem("https://merchant.example/x", allow_private=False) == ""  # DNS later


class FakeDNS(AbstractResolver):
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": ip, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": 0} for ip in self.answers[host]]

    async def close(self) -> None:
        return None


def test_guarded_resolver_filters_names_that_resolve_to_private_addresses() -> None:
    dns = FakeDNS({"internal.example": ["10.1.2.3"], "meta.example": ["169.254.169.254"],
                   "mixed.example": ["127.0.0.1", "93.184.216.34"],
                   "mapped.example": ["::ffff:127.0.0.1"], "ok.example": ["93.184.216.34"]})
    guard = GuardedResolver(dns)

    async def hosts(name: str) -> list[str]:
        return [r["host"] for r in await guard.resolve(name, 443)]

    async def run() -> None:
        for name in ("internal.example", "meta.example", "mapped.example"):
            with pytest.raises(TargetRefused, match=name):
                await guard.resolve(name, 443)
        assert await hosts("mixed.example") == ["93.184.216.34"]   # connects only there
        assert await hosts("ok.example") == ["93.184.216.34"]
    asyncio.run(run())


# ---------------------------------------------------------------- create-time check
def body(notify_url: str) -> bytes:
    return orjson.dumps({"out_trade_no": "t-1", "user_id": "u", "amount": 100,
                         "currency": "CNY", "subject": "s", "channel": "alipay",
                         "payment": {"type": "native"}, "notify_url": notify_url})


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/n", "http://[::1]/n",
                                 "http://10.0.0.7/n", "http://169.254.169.254/",
                                 "http://[fd00::5]:81/n", "http://[::ffff:127.0.0.1]/n"])
def test_private_literal_notify_url_is_refused_when_not_allowed(url: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_create_order("demo-app", body(url), ("alipay",), allow_private_targets=False)
    errors: Any = e.value.errors
    assert [x["field"] for x in errors] == ["notify_url"]
    assert parse_create_order("demo-app", body(url), ("alipay",)).notify_url == url


def test_public_notify_url_is_kept_when_private_ones_are_refused() -> None:
    for url in ("https://shop.example/paycell", "http://93.184.216.34/n"):
        cmd = parse_create_order("demo-app", body(url), ("alipay",),
                                 allow_private_targets=False)
        assert cmd.notify_url == url
