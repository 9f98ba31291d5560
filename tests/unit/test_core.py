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
