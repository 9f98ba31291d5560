"""Alipay transformers: request building, every response mapping, amounts and notifications."""
from __future__ import annotations

import json
import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, strategies as st

from channels.alipay import signing, transformers as tf
from channels.alipay.connector import AlipayConfig, AlipayConnector
from channels.base import ChargeRequest, OutcomeUnknown, ProtocolError
from core.settings import KEYS_DIR
from core.states import Fact

APP_ID = "2021000000000001"
PLATFORM_KEY = signing.load_private_key(KEYS_DIR / "alipay_platform_private.pem")
PLATFORM_PUB = signing.load_public_key(KEYS_DIR / "alipay_platform_public.pem")
APP_KEY = signing.load_private_key(KEYS_DIR / "alipay_app_private.pem")
NOW = datetime(2025, 1, 1, 16, 30, 5, tzinfo=timezone.utc)


def _charge(amount: int = 1234, notify_url: str = "") -> ChargeRequest:
    return ChargeRequest("ord-1", amount, "CNY", "游戏币", "barcode", auth_code="28763443825664394",
                         notify_url=notify_url)


# ---- amounts and time -----------------------------------------------------------------------

@pytest.mark.parametrize("fen, yuan", [(1, "0.01"), (10, "0.10"), (100, "1.00"), (1234, "12.34"),
                                       (10_000_000_000, "100000000.00"), (0, "0.00")])
def test_fen_yuan_both_ways(fen: int, yuan: str) -> None:
    assert tf.fen_to_yuan(fen) == yuan
    assert tf.yuan_to_fen(yuan) == fen


@given(st.integers(0, 10**12))
def test_fen_yuan_round_trip(fen: int) -> None:
    assert tf.yuan_to_fen(tf.fen_to_yuan(fen)) == fen


@pytest.mark.parametrize("bad", ["1.234", "-1.00", "1e3", "", "1,00", ".5", 1.0, 100, None])
def test_malformed_amounts_are_protocol_errors(bad: object) -> None:
    with pytest.raises(ProtocolError):
        tf.yuan_to_fen(bad)


def test_yuan_with_one_decimal_is_accepted() -> None:
    assert tf.yuan_to_fen("12.3") == 1230


def test_timestamp_is_beijing_time() -> None:
    assert tf.alipay_timestamp(NOW) == "2025-01-02 00:30:05"
    assert tf.alipay_timestamp(NOW.astimezone(timezone(timedelta(hours=-5)))) == "2025-01-02 00:30:05"
    with pytest.raises(AssertionError):
        tf.alipay_timestamp(datetime(2025, 1, 1))


# ---- requests -------------------------------------------------------------------------------

def test_pay_params_are_exactly_alipays() -> None:
    params = tf.pay_params(APP_ID, _charge(), NOW, "http://127.0.0.1:8080/notify/alipay")
    biz = json.loads(params.pop("biz_content"))
    assert params == {"app_id": APP_ID, "method": "alipay.trade.pay", "format": "JSON",
                      "charset": "utf-8", "sign_type": "RSA2", "timestamp": "2025-01-02 00:30:05",
                      "version": "1.0", "notify_url": "http://127.0.0.1:8080/notify/alipay"}
    assert biz == {"out_trade_no": "ord-1", "scene": "bar_code", "auth_code": "28763443825664394",
                   "subject": "游戏币", "total_amount": "12.34"}


def test_request_notify_url_wins_over_the_configured_one() -> None:
    params = tf.pay_params(APP_ID, _charge(notify_url="http://x/n"), NOW, "http://y/n")
    assert params["notify_url"] == "http://x/n"


def test_pay_params_refuse_other_currencies_and_zero() -> None:
    with pytest.raises(AssertionError):
        tf.pay_params(APP_ID, ChargeRequest("o", 100, "USD", "s", "barcode"), NOW, "")
    with pytest.raises(AssertionError):
        tf.pay_params(APP_ID, _charge(amount=0), NOW, "")


@pytest.mark.parametrize("build, method", [(tf.query_params, "alipay.trade.query"),
                                           (tf.cancel_params, "alipay.trade.cancel")])
def test_query_and_cancel_params(build: Any, method: str) -> None:
    params = build(APP_ID, "ord-9", NOW)
    assert params["method"] == method and "notify_url" not in params
    assert json.loads(params["biz_content"]) == {"out_trade_no": "ord-9"}


def test_split_puts_common_params_in_the_query_and_biz_in_the_body() -> None:
    signed = signing.sign_params(tf.query_params(APP_ID, "o", NOW), APP_KEY)
    query, form = tf.split_for_wire(signed)
    assert set(form) == {"biz_content"}
    assert set(query) == {"app_id", "method", "format", "charset", "sign_type", "timestamp",
                          "version", "sign"}


# ---- pay ------------------------------------------------------------------------------------

def _fail(code: str, sub_code: str = "", sub_msg: str = "") -> dict[str, str]:
    return {"code": code, "msg": "m", "sub_code": sub_code, "sub_msg": sub_msg}


def test_pay_success_is_paid_with_amount() -> None:
    res = tf.map_pay({"code": "10000", "trade_no": "T1", "out_trade_no": "ord-1",
                      "total_amount": "12.34"}, "ord-1")
    assert (res.fact, res.channel_trade_no, res.amount, res.currency) == (Fact.PAID, "T1", 1234, "CNY")


def test_pay_waiting() -> None:
    res = tf.map_pay({"code": "10003", "trade_no": "T2", "out_trade_no": "ord-1"}, "ord-1")
    assert (res.fact, res.channel_trade_no, res.raw_status) == (Fact.WAITING, "T2", "WAIT_BUYER_PAY")


@pytest.mark.parametrize("sub_code", sorted(tf.DECLINE_SUB_CODES))
def test_pay_business_declines(sub_code: str) -> None:
    res = tf.map_pay(_fail("40004", sub_code, "余额不足"), "ord-1")
    assert (res.fact, res.failure_code, res.failure_message) == (Fact.DECLINED, sub_code, "余额不足")
    assert res.raw_status == f"40004/{sub_code}"


@pytest.mark.parametrize("code, sub_code", [("40001", "isv.missing-signature"),
                                            ("40002", "isv.invalid-signature")])
def test_pay_refused_by_the_gateway_is_declined(code: str, sub_code: str) -> None:
    res = tf.map_pay(_fail(code, sub_code), "ord-1")
    assert (res.fact, res.failure_code) == (Fact.DECLINED, sub_code)


def test_pay_on_a_closed_trade_is_closed() -> None:
    res = tf.map_pay(_fail("40004", "ACQ.TRADE_HAS_CLOSE"), "ord-1")
    assert (res.fact, res.failure_code) == (Fact.CLOSED, "ACQ.TRADE_HAS_CLOSE")


@pytest.mark.parametrize("payload", [
    _fail("40004", "ACQ.TRADE_HAS_SUCCESS"),   # money already moved
    _fail("40004", "ACQ.SYSTEM_ERROR"),
    _fail("40004", "ACQ.SOMETHING_NEW"),       # unknown sub_codes prove nothing
    _fail("40004", ""),
    _fail("20000", "isp.unknow-error"),
    _fail("40006", "isv.insufficient-isv-permissions"),
    _fail("99999"),
    {},
])
def test_pay_answers_that_do_not_prove_anything_are_unknown(payload: dict[str, str]) -> None:
    with pytest.raises(OutcomeUnknown) as err:
        tf.map_pay(payload, "ord-1")
    assert type(err.value) is OutcomeUnknown


@pytest.mark.parametrize("payload", [
    {"code": "10000", "total_amount": "1.00"},                                   # no trade_no
    {"code": "10000", "trade_no": "T", "total_amount": "1.001"},                 # bad amount
    {"code": "10000", "trade_no": "T", "total_amount": "1.00", "out_trade_no": "other"},
])
def test_pay_success_that_cannot_be_trusted_is_a_protocol_error(payload: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_pay(payload, "ord-1")


# ---- query and cancel -----------------------------------------------------------------------

@pytest.mark.parametrize("status, fact", [("TRADE_SUCCESS", Fact.PAID), ("TRADE_FINISHED", Fact.PAID),
                                          ("WAIT_BUYER_PAY", Fact.WAITING),
                                          ("TRADE_CLOSED", Fact.CLOSED)])
def test_query_statuses(status: str, fact: Fact) -> None:
    res = tf.map_query({"code": "10000", "trade_no": "T", "out_trade_no": "o",
                        "trade_status": status, "total_amount": "0.05"}, "o")
    assert (res.fact, res.raw_status, res.exists) == (fact, status, True)
    assert res.amount == (5 if fact is Fact.PAID else None)


def test_query_trade_not_exist_is_waiting_and_absent() -> None:
    res = tf.map_query(_fail("40004", "ACQ.TRADE_NOT_EXIST"), "o")
    assert (res.fact, res.exists) == (Fact.WAITING, False)


@pytest.mark.parametrize("payload", [_fail("20000", "isp.unknow-error"),
                                     _fail("40004", "ACQ.SYSTEM_ERROR"),
                                     _fail("40002", "isv.invalid-signature")])
def test_query_unknowns(payload: dict[str, str]) -> None:
    with pytest.raises(OutcomeUnknown):
        tf.map_query(payload, "o")


def test_query_unknown_status_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        tf.map_query({"code": "10000", "trade_status": "TRADE_PENDING"}, "o")


@pytest.mark.parametrize("action", ["close", "refund"])
def test_cancel_closes(action: str) -> None:
    res = tf.map_cancel({"code": "10000", "trade_no": "T", "out_trade_no": "o",
                         "retry_flag": "N", "action": action}, "o")
    assert (res.fact, res.action, res.channel_trade_no) == (Fact.CLOSED, action, "T")


@pytest.mark.parametrize("payload", [{"code": "10000", "retry_flag": "Y", "action": "close"},
                                     _fail("20000", "isp.unknow-error"),
                                     _fail("40004", "ACQ.TRADE_STATUS_ERROR")])
def test_cancel_not_done_is_unknown(payload: dict[str, str]) -> None:
    with pytest.raises(OutcomeUnknown):
        tf.map_cancel(payload, "o")


def test_cancel_unknown_action_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        tf.map_cancel({"code": "10000", "retry_flag": "N", "action": "explode"}, "o")


# ---- notifications --------------------------------------------------------------------------

def _notify(**over: str) -> dict[str, str]:
    form = {"notify_time": "2025-01-02 00:30:06", "notify_type": "trade_status_sync",
            "notify_id": "n-1", "app_id": APP_ID, "charset": "utf-8", "version": "1.0",
            "sign_type": "RSA2", "trade_no": "T9", "out_trade_no": "ord-1",
            "trade_status": "TRADE_SUCCESS", "total_amount": "12.34", "subject": "游戏币"}
    form.update(over)
    return signing.sign_notification(form, PLATFORM_KEY)


def _body(form: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(form).encode()


def _connector() -> AlipayConnector:
    config = AlipayConfig(APP_ID, "http://127.0.0.1:1/gateway.do", APP_KEY, PLATFORM_PUB, 1000, "")
    return AlipayConnector(config, None)


@pytest.mark.parametrize("status, fact", [("TRADE_SUCCESS", Fact.PAID),
                                          ("TRADE_CLOSED", Fact.CLOSED)])
def test_notification_maps(status: str, fact: Fact) -> None:
    note = _connector().parse_notification(_body(_notify(trade_status=status)),
                                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert (note.order_id, note.fact, note.channel_trade_no, note.amount, note.notify_id) == (
        "ord-1", fact, "T9", 1234, "n-1")


def test_notification_tampered_or_foreign_is_refused() -> None:
    c, ct = _connector(), "application/x-www-form-urlencoded"
    tampered = _notify()
    tampered["total_amount"] = "12.35"
    wrong_key = signing.sign_notification({k: v for k, v in _notify().items() if k != "sign"},
                                          APP_KEY)
    for form in (tampered, wrong_key, _notify(app_id="2021999999999999"),
                 {k: v for k, v in _notify().items() if k != "sign"}):
        with pytest.raises(ProtocolError):
            c.parse_notification(_body(form), {"Content-Type": ct})


def test_notification_needs_a_form_and_known_fields() -> None:
    c = _connector()
    with pytest.raises(ProtocolError):
        c.parse_notification(_body(_notify()), {"Content-Type": "application/json"})
    with pytest.raises(ProtocolError):
        c.parse_notification(_body(_notify()) + b"&app_id=x",
                             {"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(ProtocolError):
        c.parse_notification(_body(_notify(trade_status="WEIRD")),
                             {"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(ProtocolError):
        c.parse_notification(b"\xff=\xfe", {"Content-Type": "application/x-www-form-urlencoded"})


def test_ack_is_alipays_exact_words() -> None:
    c = _connector()
    assert (c.ack(True).status, c.ack(True).content_type, c.ack(True).body) == (
        200, "text/plain", b"success")
    assert (c.ack(False).status, c.ack(False).body) == (400, b"fail")
