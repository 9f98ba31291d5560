"""Alipay refunds: alipay.trade.refund and fastpay.refund.query requests and every answer mapping,
refund notifications, and the connector's confirmation of a fund_change "N" by query."""
from __future__ import annotations

import json
import urllib.parse
from datetime import datetime, timezone
from typing import Any

import pytest

from channels.alipay import signing, transformers as tf
from channels.alipay.connector import AlipayConfig, AlipayConnector
from channels.base import (NotificationKind, OutcomeUnknown, ProtocolError, RefundRequest,
                           RefundResult, RefundStatus)
from core.settings import KEYS_DIR
from core.states import Fact

APP_ID = "2021000000000001"
PLATFORM_KEY = signing.load_private_key(KEYS_DIR / "alipay_platform_private.pem")
PLATFORM_PUB = signing.load_public_key(KEYS_DIR / "alipay_platform_public.pem")
APP_KEY = signing.load_private_key(KEYS_DIR / "alipay_app_private.pem")
NOW = datetime(2025, 1, 1, 16, 30, 5, tzinfo=timezone.utc)
FORM_CT = {"Content-Type": "application/x-www-form-urlencoded"}


def _req(amount: int = 300, reason: str = "conformance") -> RefundRequest:
    return RefundRequest("ord-1", "rf-1", amount, 1234, "CNY", reason=reason)


def _fail(code: str, sub_code: str = "", sub_msg: str = "") -> dict[str, str]:
    return {"code": code, "msg": "m", "sub_code": sub_code, "sub_msg": sub_msg}


# ---- requests -------------------------------------------------------------------------------

def test_refund_params_carry_the_refund_id_as_out_request_no() -> None:
    params = tf.refund_params(APP_ID, _req(), NOW)
    biz = json.loads(params.pop("biz_content"))
    assert params["method"] == "alipay.trade.refund" and "notify_url" not in params
    assert biz == {"out_trade_no": "ord-1", "refund_amount": "3.00", "out_request_no": "rf-1",
                   "refund_reason": "conformance"}


def test_refund_params_leave_out_an_empty_reason_and_refuse_nonsense() -> None:
    assert "refund_reason" not in json.loads(tf.refund_params(APP_ID, _req(reason=""), NOW)
                                             ["biz_content"])
    with pytest.raises(AssertionError):
        tf.refund_params(APP_ID, _req(amount=0), NOW)
    with pytest.raises(AssertionError):
        tf.refund_params(APP_ID, RefundRequest("o", "r", 1, 1, "USD"), NOW)


def test_refund_query_params() -> None:
    params = tf.refund_query_params(APP_ID, "ord-1", "rf-1", NOW)
    assert params["method"] == "alipay.trade.fastpay.refund.query"
    assert json.loads(params["biz_content"]) == {
        "out_trade_no": "ord-1", "out_request_no": "rf-1", "query_options": ["gmt_refund_pay"]}


# ---- alipay.trade.refund answers ------------------------------------------------------------

def _refunded(fund_change: str | None, **over: str) -> dict[str, str]:
    payload = {"code": "10000", "msg": "Success", "trade_no": "T1", "out_trade_no": "ord-1",
               "refund_fee": "3.00", "gmt_refund_pay": "2025-01-02 00:30:06"}
    if fund_change is not None:
        payload["fund_change"] = fund_change
    payload.update(over)
    return payload


def test_refund_with_fund_change_y_succeeded() -> None:
    res = tf.map_refund(_refunded("Y"), _req())
    assert (res.status, res.refund_id, res.amount, res.currency, res.raw_status) == (
        RefundStatus.SUCCEEDED, "rf-1", 300, "CNY", "fund_change=Y")


def test_refund_fee_is_the_total_not_this_refunds_amount() -> None:
    # a second partial refund: refund_fee is everything refunded so far
    res = tf.map_refund(_refunded("Y", refund_fee="10.00"), _req(300))
    assert (res.status, res.amount) == (RefundStatus.SUCCEEDED, 300)


@pytest.mark.parametrize("fund_change", ["N", None])
def test_refund_without_money_moving_now_is_pending_for_a_query(fund_change: str | None) -> None:
    res = tf.map_refund(_refunded(fund_change), _req())
    assert res.status is RefundStatus.PENDING
    assert res.raw_status == f"fund_change={fund_change or '-'}"


@pytest.mark.parametrize("sub_code", sorted(tf.REFUND_REFUSED_SUB_CODES))
def test_refund_refusals_are_failed_with_the_sub_code(sub_code: str) -> None:
    res = tf.map_refund(_fail("40004", sub_code, "退款金额无效"), _req())
    assert (res.status, res.failure_code, res.failure_message, res.raw_status) == (
        RefundStatus.FAILED, sub_code, "退款金额无效", f"40004/{sub_code}")


@pytest.mark.parametrize("code", ["40001", "40002"])
def test_refund_refused_by_the_gateway_is_failed(code: str) -> None:
    res = tf.map_refund(_fail(code, "isv.invalid-signature"), _req())
    assert (res.status, res.failure_code) == (RefundStatus.FAILED, "isv.invalid-signature")


@pytest.mark.parametrize("payload", [
    _fail("20000", "isp.unknow-error"),
    _fail("40004", "ACQ.SYSTEM_ERROR"),
    _fail("40004", "ACQ.DISCORDANT_REPEAT_REQUEST"),   # the number is another refund's
    _fail("40004", "ACQ.SOMETHING_NEW"),
    _fail("40006", "isv.insufficient-isv-permissions"),
    {},
])
def test_refund_answers_that_prove_nothing_are_unknown(payload: dict[str, str]) -> None:
    with pytest.raises(OutcomeUnknown) as err:
        tf.map_refund(payload, _req())
    assert type(err.value) is OutcomeUnknown


@pytest.mark.parametrize("over", [{"out_trade_no": "other"}, {"refund_fee": "3.001"}])
def test_refund_success_that_cannot_be_trusted(over: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_refund(_refunded("Y", **over), _req())


# ---- fastpay.refund.query answers -----------------------------------------------------------

def _queried(**over: str) -> dict[str, str]:
    payload = {"code": "10000", "msg": "Success", "trade_no": "T1", "out_trade_no": "ord-1",
               "out_request_no": "rf-1", "total_amount": "12.34", "refund_amount": "3.00",
               "refund_status": "REFUND_SUCCESS", "gmt_refund_pay": "2025-01-02 00:30:06"}
    payload.update(over)
    return {k: v for k, v in payload.items() if v != "-"}


def test_refund_query_success() -> None:
    res = tf.map_refund_query(_queried(), "ord-1", "rf-1")
    assert (res.status, res.amount, res.currency, res.exists, res.raw_status) == (
        RefundStatus.SUCCEEDED, 300, "CNY", True, "REFUND_SUCCESS")


def test_refund_query_without_refund_data_is_not_found() -> None:
    res = tf.map_refund_query(_queried(refund_amount="-", refund_status="-", total_amount="-"),
                              "ord-1", "rf-1")
    assert (res.status, res.exists, res.amount) == (RefundStatus.PENDING, False, None)


def test_refund_query_of_an_unknown_trade_is_not_found() -> None:
    res = tf.map_refund_query(_fail("40004", "ACQ.TRADE_NOT_EXIST"), "ord-1", "rf-1")
    assert (res.status, res.exists) == (RefundStatus.PENDING, False)


def test_refund_query_with_an_amount_but_no_status_stays_pending() -> None:
    res = tf.map_refund_query(_queried(refund_status="-"), "ord-1", "rf-1")
    assert (res.status, res.exists, res.amount) == (RefundStatus.PENDING, True, 300)


@pytest.mark.parametrize("payload, error", [
    (_queried(refund_status="REFUND_WEIRD"), ProtocolError),
    (_queried(out_request_no="rf-2"), ProtocolError),
    (_queried(out_trade_no="ord-2"), ProtocolError),
    (_queried(refund_amount="3.001"), ProtocolError),
    (_fail("20000", "isp.unknow-error"), OutcomeUnknown),
    (_fail("40004", "ACQ.SYSTEM_ERROR"), OutcomeUnknown),
])
def test_refund_query_errors(payload: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        tf.map_refund_query(payload, "ord-1", "rf-1")


# ---- refund notifications -------------------------------------------------------------------

def _notify(**over: str) -> bytes:
    form = {"notify_time": "2025-01-02 00:30:06", "notify_type": "trade_status_sync",
            "notify_id": "n-2", "app_id": APP_ID, "charset": "utf-8", "version": "1.0",
            "sign_type": "RSA2", "trade_no": "T9", "out_trade_no": "ord-1",
            "trade_status": "TRADE_SUCCESS", "total_amount": "12.34", "subject": "游戏币",
            "gmt_payment": "2025-01-02 00:30:00"}
    form.update(over)
    form = {k: v for k, v in form.items() if v != "-"}
    return urllib.parse.urlencode(signing.sign_notification(form, PLATFORM_KEY)).encode()


def _connector() -> AlipayConnector:
    config = AlipayConfig(APP_ID, "http://127.0.0.1:1/gateway.do", APP_KEY, PLATFORM_PUB, 1000, "")
    return AlipayConnector(config, None)


REFUND_FIELDS = {"out_biz_no": "rf-1", "refund_fee": "3.00", "gmt_refund": "2025-01-02 00:31:00"}


@pytest.mark.parametrize("status, refund_fee", [("TRADE_SUCCESS", "3.00"),     # partial
                                                ("TRADE_CLOSED", "12.34")])    # wholly refunded
def test_refund_notification(status: str, refund_fee: str) -> None:
    note = _connector().parse_notification(
        _notify(trade_status=status, **{**REFUND_FIELDS, "refund_fee": refund_fee}), FORM_CT)
    assert (note.kind, note.order_id, note.refund_id, note.refund_status, note.fact) == (
        NotificationKind.REFUND, "ord-1", "rf-1", RefundStatus.SUCCEEDED, Fact.PAID)
    # refund_fee is the refunded total: this refund's own amount is not stated
    assert (note.refund_amount, note.amount, note.raw_status, note.notify_id) == (
        None, 1234, status, "n-2")


def test_payment_notifications_stay_payments() -> None:
    paid = _connector().parse_notification(_notify(), FORM_CT)
    closed = _connector().parse_notification(_notify(trade_status="TRADE_CLOSED",
                                                     gmt_payment="-"), FORM_CT)
    assert (paid.kind, paid.fact, paid.refund_id, paid.refund_status) == (
        NotificationKind.PAYMENT, Fact.PAID, "", None)
    assert (closed.kind, closed.fact) == (NotificationKind.PAYMENT, Fact.CLOSED)


@pytest.mark.parametrize("over", [
    {**REFUND_FIELDS, "trade_status": "WAIT_BUYER_PAY"},    # a refund of an unpaid trade
    {**REFUND_FIELDS, "refund_fee": "-"},                   # refund without its amount
    {**REFUND_FIELDS, "refund_fee": "12.35"},               # more than the trade
    {**REFUND_FIELDS, "refund_fee": "3.001"},
])
def test_refund_notifications_that_cannot_be_trusted(over: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        _connector().parse_notification(_notify(**over), FORM_CT)


def test_forged_refund_notification_is_refused() -> None:
    form = dict(urllib.parse.parse_qsl(_notify(**REFUND_FIELDS).decode()))
    form["refund_fee"] = "12.34"
    with pytest.raises(ProtocolError):
        _connector().parse_notification(urllib.parse.urlencode(form).encode(), FORM_CT)


# ---- the connector's confirmation of fund_change "N" ------------------------------------------

class _Scripted(AlipayConnector):
    """The connector with its HTTP exchange replaced by scripted (already verified) answers."""

    def __init__(self, answers: list[dict[str, Any] | Exception]) -> None:
        super().__init__(AlipayConfig(APP_ID, "http://127.0.0.1:1/gateway.do", APP_KEY,
                                      PLATFORM_PUB, 1000, ""), None)
        self.answers = answers
        self.methods: list[str] = []

    async def _call(self, method: str, params: dict[str, str]) -> dict[str, Any]:
        self.methods.append(method)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def _refund(answers: list[dict[str, Any] | Exception]) -> tuple[RefundResult, list[str]]:
    c = _Scripted(answers)
    return await c.refund(_req()), c.methods


async def test_a_repeated_refund_is_confirmed_succeeded_by_query() -> None:
    res, methods = await _refund([_refunded("N"), _queried()])
    assert (res.status, res.amount, res.exists) == (RefundStatus.SUCCEEDED, 300, True)
    assert methods == ["alipay.trade.refund", "alipay.trade.fastpay.refund.query"]


async def test_fund_change_y_needs_no_query() -> None:
    res, methods = await _refund([_refunded("Y")])
    assert res.status is RefundStatus.SUCCEEDED and methods == ["alipay.trade.refund"]


@pytest.mark.parametrize("query_answer", [
    _queried(refund_amount="-", refund_status="-"),   # not visible yet
    OutcomeUnknown("timeout"),                         # the query itself failed
])
async def test_unconfirmed_refund_stays_pending(query_answer: dict[str, Any] | Exception) -> None:
    res, _ = await _refund([_refunded("N"), query_answer])
    assert (res.status, res.refund_id) == (RefundStatus.PENDING, "rf-1")


async def test_confirmed_refund_with_another_amount_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        await _refund([_refunded("N"), _queried(refund_amount="4.00")])


async def test_refund_refuses_other_currencies() -> None:
    with pytest.raises(ValueError):
        await _Scripted([]).refund(RefundRequest("o", "r", 1, 1, "USD"))
