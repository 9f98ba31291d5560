import pytest
from hypothesis import given, strategies as st

from core.errors import (HTTP_STATUS, IdempotencyConflict, Overloaded, PaycellError,
                         ConfigError, error_for_code, http_status_for)
from core.ids import make_order_id, parse_order_id, shard_for_key
from core.money import (CURRENCY_EXPONENT, Money, decimal_str_to_minor, minor_to_decimal_str)
from core.settings import Secret, load_settings


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(sorted(CURRENCY_EXPONENT)))
def test_minor_decimal_round_trip(amount, currency):
    assert decimal_str_to_minor(minor_to_decimal_str(amount, currency), currency) == amount


@pytest.mark.parametrize("text,currency,minor", [
    ("6.00", "CNY", 600), ("6", "CNY", 600), ("0.01", "CNY", 1), ("6.5", "CNY", 650),
    ("1000", "JPY", 1000), ("200.12", "CNY", 20012),
])
def test_decimal_to_minor(text, currency, minor):
    assert decimal_str_to_minor(text, currency) == minor


@pytest.mark.parametrize("text,currency", [
    ("6.001", "CNY"), ("-1.00", "CNY"), ("1e3", "CNY"), ("", "CNY"), ("1.5", "JPY"),
    ("01.00", "CNY"), ("1,00", "CNY"), (" ", "CNY"), ("NaN", "CNY"),
])
def test_decimal_to_minor_rejects(text, currency):
    with pytest.raises(ValueError):
        decimal_str_to_minor(text, currency)


def test_money_is_integer_only():
    assert Money(600, "CNY").to_decimal_str() == "6.00"
    with pytest.raises(AssertionError):
        Money(6.0, "CNY")  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        Money(True, "CNY")  # type: ignore[arg-type]


def test_order_id_round_trip_and_shape():
    oid = make_order_id("local", "s0", 3, 1_764_000_000_000, rand=12345)
    ref = parse_order_id(oid)
    assert ref is not None and (ref.region, ref.set_name, ref.shard) == ("local", "s0", 3)
    assert len(oid) <= 64 and all(c.isalnum() or c == "_" for c in oid)
    assert make_order_id("local", "s0", 3, 1, rand=1) < make_order_id("local", "s0", 3, 2, rand=0)


@pytest.mark.parametrize("bad", ["", "P_local_s0_3", "P_LOCAL_s0_3_abcdefghij", "x" * 70,
                                 "P_local_s0_99999_abcdefghij", None, "P_local_s0_3_abc"])
def test_parse_order_id_rejects(bad):
    assert parse_order_id(bad) is None


def test_shard_for_key_is_stable_and_spread():
    assert shard_for_key("a", "k", 8) == shard_for_key("a", "k", 8)
    counts = [0] * 8
    for i in range(8000):
        counts[shard_for_key("demo-app", f"o-{i}", 8)] += 1
    assert min(counts) > 800, counts


def test_every_error_code_has_a_status_and_round_trips():
    for code, status in HTTP_STATUS.items():
        err = error_for_code(code, "d", 2)
        assert err.code == code and http_status_for(err) == status
        assert err.detail == "d" and err.retry_after_s == 2
    assert isinstance(error_for_code("idempotency_conflict"), IdempotencyConflict)
    assert isinstance(error_for_code("overloaded"), Overloaded)
    assert type(error_for_code("no-such-code")) is PaycellError


def test_secret_is_masked():
    s = Secret("demo-secret")
    assert repr(s) == "Secret('***')" and str(s) == "***" and f"{s}" == "***"
    assert s.reveal() == "demo-secret"


def test_settings_defaults_env_and_yaml(tmp_path):
    s = load_settings(env={})
    assert s.orders.sync_deadline_ms == 800 and s.gateway.host == "127.0.0.1"
    assert s.app_secrets() == {"demo-app": "demo-secret"}
    cfg = tmp_path / "p.yaml"
    cfg.write_text("orders:\n  shard_count: 2\ngateway:\n  port: 9000\n")
    s = load_settings(str(cfg), env={"PAYCELL_GATEWAY__PORT": "9100",
                                     "PAYCELL_ORDERS__SYNC_DEADLINE_MS": "300"})
    assert (s.orders.shard_count, s.gateway.port, s.orders.sync_deadline_ms) == (2, 9100, 300)


@pytest.mark.parametrize("env,needle", [
    ({"PAYCELL_ORDERS__SHARD_COUNT": "zero"}, "orders.shard_count"),
    ({"PAYCELL_ORDERS__SHARD_COUNT": "0"}, "orders.shard_count"),
    ({"PAYCELL_ORDERS__NO_SUCH": "1"}, "orders.no_such"),
    ({"PAYCELL_MODE": "cluster"}, "redis.url"),
    ({"PAYCELL_ORDERS__SYNC_DEADLINE_MS": "40000"}, "async_window_ms"),
    ({"PAYCELL_ORDERS__REGION": "Bad-Region"}, "orders.region"),
    ({"PAYCELL_REDIS__APPENDFSYNC": "sometimes"}, "redis.appendfsync"),
])
def test_settings_fail_at_start_with_the_name(env, needle):
    with pytest.raises(ConfigError) as e:
        load_settings(env=env)
    assert needle in str(e.value)


def test_wire_ids_fit_32_characters_and_round_trip() -> None:
    from core.ids import from_wire_id, longest_order_id, make_order_id, to_wire_id
    assert len(make_order_id("local", "s0", 7, 1_764_000_000_000)) == 32   # sent as it is
    for shard in (10, 1023):
        oid = make_order_id("local", "s0", shard, 1_764_000_000_000)
        wire = to_wire_id(oid)
        assert len(wire) <= 32 and "_" not in wire and from_wire_id(wire) == oid
    assert to_wire_id("cf0123456789abcdef0123") == "cf0123456789abcdef0123"   # fits: as is
    assert from_wire_id("cf0123456789abcdef0123") == "cf0123456789abcdef0123"
    assert from_wire_id("WhatEver") == "WhatEver"          # not a packed id: unchanged
    assert len(to_wire_id(longest_order_id("cnsouth", "set01", 8))) <= 32
    import pytest
    with pytest.raises(ValueError):
        to_wire_id(longest_order_id("abcdefghijkl", "abcdefghijkl", 1024))
    with pytest.raises(ValueError):
        to_wire_id("x" * 40)


async def test_wire_id_connector_translates_ids_both_ways() -> None:
    import dataclasses
    from datetime import date, datetime, timezone

    from channels.base import (Ack, Capabilities, ChannelResult, ChargeRequest, Notification,
                               RefundRequest, RefundResult, RefundStatus, Statement,
                               StatementKind, StatementLine)
    from channels.wire_ids import WireIdConnector
    from core.ids import make_order_id, to_wire_id
    from core.states import Fact

    oid = make_order_id("local", "s0", 12, 1_764_000_000_000)     # 33 characters
    wire = to_wire_id(oid)
    seen: list[str] = []

    class Inner:
        name = "short"
        capabilities = Capabilities(frozenset({"CNY"}), frozenset({"barcode"}))

        async def charge(self, req: ChargeRequest) -> ChannelResult:
            seen.append(req.order_id)
            return ChannelResult(Fact.PAID)

        async def query(self, order_id: str, currency: str) -> ChannelResult:
            seen.append(order_id)
            return ChannelResult(Fact.PAID)

        async def cancel(self, order_id: str) -> ChannelResult:
            seen.append(order_id)
            return ChannelResult(Fact.CLOSED)

        async def refund(self, req: RefundRequest) -> RefundResult:
            seen.append(req.order_id)
            return RefundResult(RefundStatus.SUCCEEDED, req.refund_id)

        async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
            seen.append(order_id)
            return RefundResult(RefundStatus.SUCCEEDED, refund_id)

        def parse_notification(self, body: bytes, headers: object) -> Notification:
            return Notification(wire, Fact.PAID, "T", 1, "CNY", "n", "SUCCESS")

        def ack(self, accepted: bool) -> Ack:
            return Ack(200, "text/plain", b"ok")

        async def statement(self, day: date) -> Statement:
            line = StatementLine(StatementKind.PAYMENT, wire, "T", 1, "CNY",
                                 datetime.now(timezone.utc))
            return Statement("short", day, (line,))

        async def close(self) -> None:
            pass

    c = WireIdConnector(Inner(), 32)  # type: ignore[arg-type]
    await c.charge(ChargeRequest(oid, 1, "CNY", "s", "barcode"))
    await c.query(oid, "CNY")
    await c.cancel(oid)
    await c.refund(RefundRequest(oid, "r1", 1, 1, "CNY"))
    await c.refund_query(oid, "r1", "CNY")
    assert seen == [wire] * 5 and len(wire) <= 32
    assert c.parse_notification(b"", {}).order_id == oid
    assert (await c.statement(date.today())).lines[0].order_id == oid
    assert dataclasses.asdict(c.ack(True))["status"] == 200
