"""PayPal transformers: request bodies, every answer mapping, the fence, webhooks, statements."""
from __future__ import annotations

import copy
from datetime import date, datetime, timezone
from typing import Any

import pytest
from hypothesis import given, strategies as st

from channels.base import (ChargeRequest, NotificationKind, OutcomeUnknown, ProtocolError,
                           RefundRequest, RefundStatus, StatementKind)
from channels.paypal import transformers as tf
from core.ids import make_order_id
from core.states import Fact

OID = "P_us_a_3_0abcdefgh0123456789abc"


def _charge(amount: int = 1234, currency: str = "USD") -> ChargeRequest:
    return ChargeRequest(OID, amount, currency, "gems", "card", payment_token="8kk8451t")


def _capture(status: str = "COMPLETED", value: str = "12.34", **extra: Any) -> dict[str, Any]:
    return {"id": "2GG279541U471931P", "status": status,
            "amount": {"currency_code": "USD", "value": value}, "invoice_id": OID, **extra}


def _order(status: str = "COMPLETED", capture: dict[str, Any] | None = None,
           refunds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    unit: dict[str, Any] = {"reference_id": OID, "invoice_id": OID, "custom_id": OID,
                            "amount": {"currency_code": "USD", "value": "12.34"}}
    if capture is not None:
        unit["payments"] = {"captures": [capture], "refunds": refunds or []}
    return {"id": "5O190127TN364715T", "intent": "CAPTURE", "status": status,
            "payment_source": {"card": {"last_digits": "1111"}}, "purchase_units": [unit]}


def _refund(status: str = "COMPLETED", value: str = "3.00", rid: str = "rf1") -> dict[str, Any]:
    return {"id": "1JU08902781691411", "status": status, "invoice_id": rid,
            "amount": {"currency_code": "USD", "value": value},
            "links": [{"rel": "up", "method": "GET",
                       "href": "https://api.paypal.com/v2/payments/captures/2GG279541U471931P"}]}


# ---- amounts, time, ids ---------------------------------------------------------------------------

@pytest.mark.parametrize("minor, text", [(1, "0.01"), (1234, "12.34"), (100, "1.00"), (0, "0.00")])
def test_values_both_ways(minor: int, text: str) -> None:
    assert tf.to_value(minor, "USD") == text
    assert tf.from_money({"currency_code": "USD", "value": text}) == (minor, "USD")


@given(st.integers(0, 10**11), st.sampled_from(sorted(tf.CURRENCIES)))
def test_value_round_trip(minor: int, currency: str) -> None:
    money = {"currency_code": currency, "value": tf.to_value(minor, currency)}
    assert tf.from_money(money, currency) == (minor, currency)


def test_negative_values_from_transaction_search() -> None:
    assert tf.from_money({"currency_code": "EUR", "value": "-7.00"}) == (-700, "EUR")


@pytest.mark.parametrize("money", [None, {"currency_code": "JPY", "value": "1"},
                                   {"currency_code": "USD", "value": "1.234"},
                                   {"currency_code": "USD", "value": 12.34},
                                   {"currency_code": "USD", "value": "1e3"}])
def test_malformed_money_is_a_protocol_error(money: Any) -> None:
    with pytest.raises(ProtocolError):
        tf.from_money(money)


def test_money_in_another_currency_than_expected() -> None:
    with pytest.raises(ProtocolError):
        tf.from_money({"currency_code": "EUR", "value": "1.00"}, "USD")


def test_order_age_from_a_paycell_id_and_the_retention_window() -> None:
    now_ms = 1_764_000_000_000
    young = make_order_id("us", "a", 3, now_ms - 3_600_000, rand=7)
    old = make_order_id("us", "a", 3, now_ms - 6 * 3_600_000, rand=7)
    assert tf.order_created_ms(young) == now_ms - 3_600_000
    assert tf.within_retention(young, now_ms, 6 * 3600)
    assert not tf.within_retention(old, now_ms, 6 * 3600)
    assert tf.within_retention(old, now_ms, 72 * 3600)
    assert tf.order_created_ms("cf0123") is None and tf.within_retention("cf0123", now_ms, 7200)


@pytest.mark.parametrize("text", ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00+0000",
                                  "2024-05-01T10:00:00+00:00"])
def test_parse_time(text: str) -> None:
    assert tf.parse_time(text) == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)


def test_token_expiry_keeps_a_margin() -> None:
    token = tf.parse_token({"access_token": "A21AA", "token_type": "Bearer", "expires_in": 32400},
                           100.0, 300)
    assert (token.access_token, token.expires_at) == ("A21AA", 100.0 + 32100)
    short = tf.parse_token({"access_token": "A", "token_type": "Bearer", "expires_in": 60}, 0, 300)
    assert short.expires_at == 30                # never less than half the lifetime
    assert "A21AA" not in repr(token)
    with pytest.raises(ProtocolError):
        tf.parse_token({"access_token": "A", "token_type": "Basic", "expires_in": 60}, 0, 300)


# ---- requests ---------------------------------------------------------------------------------

def test_charge_body_for_a_vaulted_card() -> None:
    body = tf.charge_body(_charge(), "card")
    assert body["intent"] == "CAPTURE"
    unit = body["purchase_units"][0]
    assert (unit["reference_id"], unit["invoice_id"], unit["custom_id"]) == (OID, OID, OID)
    assert unit["amount"] == {"currency_code": "USD", "value": "12.34"}
    assert body["payment_source"] == {"card": {"vault_id": "8kk8451t", "stored_credential": {
        "payment_initiator": "MERCHANT", "payment_type": "UNSCHEDULED", "usage": "SUBSEQUENT"}}}


def test_charge_body_for_a_vaulted_wallet() -> None:
    assert tf.charge_body(_charge(), "paypal")["payment_source"] == {
        "paypal": {"vault_id": "8kk8451t"}}


def test_fence_body_can_take_no_money() -> None:
    body = tf.fence_body(OID, "GBP")
    assert "payment_source" not in body
    unit = body["purchase_units"][0]
    assert (unit["reference_id"], unit["custom_id"]) == (OID, tf.FENCE_MARK)
    assert "invoice_id" not in unit and unit["amount"]["currency_code"] == "GBP"


def test_refund_body() -> None:
    rq = RefundRequest(OID, "rf1", 300, 1234, "USD", reason="x" * 300)
    body = tf.refund_body(rq)
    assert body["amount"] == {"currency_code": "USD", "value": "3.00"}
    assert (body["invoice_id"], body["custom_id"], len(body["note_to_payer"])) == ("rf1", OID, 255)


def test_transactions_params() -> None:
    assert tf.transactions_params(date(2024, 5, 1), 2) == {
        "start_date": "2024-05-01T00:00:00Z", "end_date": "2024-05-01T23:59:59Z",
        "fields": "all", "page_size": "500", "page": "2"}


# ---- orders -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cstatus", ["COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"])
def test_paid_captures(cstatus: str) -> None:
    res = tf.map_order(_order(capture=_capture(cstatus)), OID)
    assert (res.fact, res.channel_trade_no, res.amount, res.currency) == (
        Fact.PAID, "2GG279541U471931P", 1234, "USD")
    assert res.raw_status == f"COMPLETED/{cstatus}"


def test_pending_capture_is_waiting() -> None:
    res = tf.map_order(_order(capture=_capture("PENDING", status_details={"reason": "ECHECK"})),
                       OID)
    assert (res.fact, res.channel_trade_no, res.failure_message) == (
        Fact.WAITING, "2GG279541U471931P", "ECHECK")


@pytest.mark.parametrize("cstatus", ["DECLINED", "FAILED"])
def test_declined_capture(cstatus: str) -> None:
    capture = _capture(cstatus, processor_response={"response_code": "5120"})
    res = tf.map_order(_order(capture=capture), OID)
    assert (res.fact, res.failure_code) == (Fact.DECLINED, "5120")
    bare = tf.map_order(_order(capture=_capture(cstatus)), OID)
    assert bare.failure_code == f"CAPTURE_{cstatus}"


@pytest.mark.parametrize("status", ["PAYER_ACTION_REQUIRED", "APPROVED", "CREATED", "SAVED"])
def test_orders_awaiting_the_payer_are_waiting(status: str) -> None:
    assert tf.map_order(_order(status), OID).fact is Fact.WAITING


def test_voided_order_is_closed() -> None:
    assert tf.map_order(_order("VOIDED"), OID).fact is Fact.CLOSED


def test_a_fence_order_means_no_charge() -> None:
    fence = {"id": "9AB", "status": "CREATED", "purchase_units": tf.fence_body(OID, "USD")[
        "purchase_units"]}
    assert tf.is_fence(fence)
    res = tf.map_order(fence, OID)
    assert (res.fact, res.exists, res.failure_code) == (Fact.CLOSED, False, "ORDER_FENCED")
    charged = _order("CREATED")
    assert not tf.is_fence(charged) and tf.map_order(charged, OID).exists


@pytest.mark.parametrize("order", [
    _order("COMPLETED"),                                        # completed without a capture
    _order("PENDING_APPROVAL"),                                 # unknown status
    _order(capture=_capture("WEIRD")),
    _order(capture={"status": "COMPLETED"}),                    # capture without id
    {"status": "COMPLETED"},                                    # no id
    {"id": "X", "status": "COMPLETED", "purchase_units": []},
])
def test_malformed_orders_are_protocol_errors(order: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_order(order, OID)


def test_an_answer_for_another_order_is_refused() -> None:
    with pytest.raises(ProtocolError):
        tf.map_order(_order(capture=_capture()), "P_us_a_3_other")


# ---- create errors ------------------------------------------------------------------------------

def _error(name: str, issue: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "message": "m", "debug_id": "d"}
    if issue:
        body["details"] = [{"issue": issue, "description": "x"}]
    return body


@pytest.mark.parametrize("status, issue", [(422, "INSTRUMENT_DECLINED"),
                                           (422, "TRANSACTION_REFUSED"),
                                           (400, "INVALID_PARAMETER_VALUE"),
                                           (403, "")])
def test_refused_creates_are_declines(status: int, issue: str) -> None:
    res = tf.map_create_error(status, _error("UNPROCESSABLE_ENTITY", issue))
    assert res.fact is Fact.DECLINED
    assert res.failure_code == (issue or "UNPROCESSABLE_ENTITY")


@pytest.mark.parametrize("status, issue", [(422, "DUPLICATE_INVOICE_ID"), (409, ""),
                                           (404, "INVALID_RESOURCE_ID"),
                                           (422, "PREVIOUS_REQUEST_IN_PROGRESS")])
def test_create_errors_that_prove_nothing_are_unknown(status: int, issue: str) -> None:
    with pytest.raises(OutcomeUnknown):
        tf.map_create_error(status, _error("UNPROCESSABLE_ENTITY", issue))


# ---- refunds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("status, mapped", [("COMPLETED", RefundStatus.SUCCEEDED),
                                            ("PENDING", RefundStatus.PENDING),
                                            ("FAILED", RefundStatus.FAILED),
                                            ("CANCELLED", RefundStatus.FAILED)])
def test_refund_statuses(status: str, mapped: RefundStatus) -> None:
    res = tf.map_refund(_refund(status), "rf1", "USD")
    assert (res.status, res.refund_id, res.channel_refund_no, res.amount) == (
        mapped, "rf1", "1JU08902781691411", 300)


def test_minimal_refund_answer_has_no_amount() -> None:
    res = tf.map_refund({"id": "1JU", "status": "COMPLETED"}, "rf1", "USD")
    assert (res.status, res.amount) == (RefundStatus.SUCCEEDED, None)


@pytest.mark.parametrize("refund", [_refund("WEIRD"), _refund(rid="rf2"), {"status": "PENDING"}])
def test_bad_refund_answers(refund: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_refund(refund, "rf1", "USD")


@pytest.mark.parametrize("issue", ["REFUND_AMOUNT_EXCEEDED", "CAPTURE_FULLY_REFUNDED",
                                   "PENDING_CAPTURE", "REFUND_NOT_ALLOWED",
                                   "REFUND_TIME_LIMIT_EXCEEDED"])
def test_refused_refunds_fail_with_the_issue(issue: str) -> None:
    res = tf.map_refund_error(422, _error("UNPROCESSABLE_ENTITY", issue), "rf1", "USD")
    assert (res.status, res.failure_code, res.refund_id) == (RefundStatus.FAILED, issue, "rf1")


@pytest.mark.parametrize("status, issue", [(409, ""), (422, "DUPLICATE_INVOICE_ID")])
def test_refund_errors_that_prove_nothing(status: int, issue: str) -> None:
    with pytest.raises(OutcomeUnknown):
        tf.map_refund_error(status, _error("UNPROCESSABLE_ENTITY", issue), "rf1", "USD")


def test_find_refund_and_what_is_left_to_refund() -> None:
    order = _order(capture=_capture("PARTIALLY_REFUNDED"),
                   refunds=[_refund("COMPLETED", "3.00", "rf1"), _refund("PENDING", "1.00", "rf2"),
                            _refund("FAILED", "5.00", "rf3")])
    assert tf.find_refund(order, "rf2")["status"] == "PENDING"     # type: ignore[index]
    assert tf.find_refund(order, "rf9") is None
    assert tf.refundable(order) == ("2GG279541U471931P", 1234 - 300 - 100, "USD")
    twice = copy.deepcopy(order)
    twice["purchase_units"][0]["payments"]["refunds"].append(_refund(rid="rf1"))
    with pytest.raises(ProtocolError):
        tf.find_refund(twice, "rf1")


# ---- webhook events -----------------------------------------------------------------------------

def _event(event_type: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"id": "WH-58D329510W468432D-8HN650336L201105X", "event_version": "1.0",
            "event_type": event_type, "resource_type": "capture", "resource": resource}


def test_capture_completed_event() -> None:
    note = tf.map_event(_event("PAYMENT.CAPTURE.COMPLETED", _capture()))
    assert (note.kind, note.order_id, note.fact, note.channel_trade_no, note.amount,
            note.currency) == (NotificationKind.PAYMENT, OID, Fact.PAID, "2GG279541U471931P",
                               1234, "USD")
    assert note.notify_id == "WH-58D329510W468432D-8HN650336L201105X"


@pytest.mark.parametrize("event_type, status, fact", [
    ("PAYMENT.CAPTURE.DENIED", "DECLINED", Fact.DECLINED),
    ("PAYMENT.CAPTURE.PENDING", "PENDING", Fact.WAITING)])
def test_other_capture_events(event_type: str, status: str, fact: Fact) -> None:
    assert tf.map_event(_event(event_type, _capture(status))).fact is fact


def test_order_completed_event() -> None:
    note = tf.map_event(_event("CHECKOUT.ORDER.COMPLETED", _order(capture=_capture())))
    assert (note.order_id, note.fact, note.amount) == (OID, Fact.PAID, 1234)


def test_refund_event() -> None:
    refund = {**_refund("COMPLETED", "3.00", "rf1"), "custom_id": OID}
    note = tf.map_event(_event("PAYMENT.CAPTURE.REFUNDED", refund))
    assert (note.kind, note.order_id, note.refund_id, note.refund_status, note.refund_amount,
            note.channel_trade_no, note.amount) == (
        NotificationKind.REFUND, OID, "rf1", RefundStatus.SUCCEEDED, 300, "2GG279541U471931P",
        None)


@pytest.mark.parametrize("event", [
    _event("BILLING.SUBSCRIPTION.CREATED", {}),
    _event("PAYMENT.CAPTURE.COMPLETED", {**_capture(), "invoice_id": ""}),
    _event("PAYMENT.CAPTURE.REFUNDED", _refund()),               # no custom_id
    {"event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": _capture()},   # no id
])
def test_events_paycell_cannot_use(event: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_event(event)


# ---- Transaction Search -------------------------------------------------------------------------

def _txn(code: str, value: str, status: str = "S", **extra: str) -> dict[str, Any]:
    return {"transaction_info": {
        "transaction_id": "TXN1", "transaction_event_code": code,
        "transaction_initiation_date": "2024-05-01T10:00:00+0000",
        "transaction_amount": {"currency_code": "USD", "value": value},
        "transaction_status": status, **extra}}


def test_statement_lines() -> None:
    payload = {"total_pages": 1, "transaction_details": [
        _txn("T0006", "40.00", invoice_id=OID, fee_amount={"currency_code": "USD",  # type: ignore
                                                           "value": "-1.40"}),
        _txn("T1107", "-7.00", invoice_id="rf1", custom_field=OID, paypal_reference_id="CAP1"),
        _txn("T0006", "5.00", status="P", invoice_id="pending"),
        _txn("T0400", "-100.00"),                                   # a withdrawal: not an order
    ]}
    lines, pages = tf.map_transactions(payload)
    assert pages == 1 and len(lines) == 2
    pay, ref = lines
    assert (pay.kind, pay.order_id, pay.channel_trade_no, pay.amount, pay.fee) == (
        StatementKind.PAYMENT, OID, "TXN1", 4000, 140)
    assert (ref.kind, ref.order_id, ref.refund_id, ref.channel_trade_no, ref.channel_refund_no,
            ref.amount) == (StatementKind.REFUND, OID, "rf1", "CAP1", "TXN1", 700)
    assert pay.at == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize("payload", [
    {"transaction_details": []},
    {"total_pages": 1, "transaction_details": [{}]},
    {"total_pages": 1, "transaction_details": [_txn("T0006", "4.00")]},            # no invoice
    {"total_pages": 1, "transaction_details": [_txn("T1107", "7.00", invoice_id="r",
                                                    custom_field=OID)]},          # positive
])
def test_bad_transaction_pages(payload: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_transactions(payload)
