"""Stripe request building and answer mapping: every branch of what an answer means for the money."""
from __future__ import annotations

import urllib.parse
from datetime import date, datetime, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, strategies as st

from channels.base import (ChargeRequest, NotificationKind, NotSent, OutcomeUnknown,
                           ProtocolError, RefundRequest, RefundStatus, StatementKind)
from channels.stripe import forms, signing, transformers as tf
from channels.stripe.connector import StripeConfig, StripeConnector
from core.clock import FakeClock
from core.states import Fact

ORDER = "o-1"
REQ = ChargeRequest(order_id=ORDER, amount=1234, currency="USD", subject="gems",
                    payment_type="card", payer_id="cus_1", payment_token="pm_card_visa")


def pi(status: str = "succeeded", order: str = ORDER, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "pi_1", "object": "payment_intent", "amount": 1234,
                           "amount_received": 1234 if status == "succeeded" else 0,
                           "currency": "usd", "status": status,
                           "metadata": {tf.ORDER_KEY: order}, "last_payment_error": None}
    out.update(extra)
    return out


def err(etype: str, code: str = "", **extra: Any) -> dict[str, Any]:
    return {"error": {"type": etype, "code": code, "message": "m", **extra}}


def refund(status: str = "succeeded", rid: str = "rf-1", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "re_1", "object": "refund", "amount": 300, "currency": "usd",
                           "status": status, "payment_intent": "pi_1",
                           "metadata": {tf.REFUND_KEY: rid, tf.ORDER_KEY: ORDER}}
    out.update(extra)
    return out


# ---- form encoding ----------------------------------------------------------------------------

def test_create_params_on_the_wire() -> None:
    pairs = forms.encode_params(tf.create_params(REQ))
    assert pairs == [
        ("amount", "1234"), ("currency", "usd"), ("payment_method", "pm_card_visa"),
        ("payment_method_types[0]", "card"), ("confirm", "true"), ("off_session", "true"),
        ("description", "gems"), ("metadata[paycell_order_id]", "o-1"), ("customer", "cus_1")]


def test_create_params_leave_out_an_empty_customer() -> None:
    params = tf.create_params(ChargeRequest("o", 50, "JPY", "s", "card", payment_token="pm_x"))
    assert "customer" not in params and (params["amount"], params["currency"]) == (50, "jpy")


@given(st.dictionaries(st.text("abcxyz_", min_size=1, max_size=6),
                       st.one_of(st.text(max_size=8), st.dictionaries(
                           st.text("pqr", min_size=1, max_size=3), st.text(max_size=5),
                           max_size=3),
                                 st.lists(st.text(max_size=5), min_size=1, max_size=3)),
                       max_size=6))
def test_decode_inverts_encode(params: dict[str, Any]) -> None:
    wire = urllib.parse.parse_qsl(urllib.parse.urlencode(forms.encode_params(params)),
                                  keep_blank_values=True)
    expected = {k: v for k, v in params.items() if v != {}}
    assert forms.decode_params(wire) == expected


def test_decode_reads_brackets_and_empty_list_index() -> None:
    assert forms.decode_params([("expand[]", "a"), ("expand[]", "b"), ("created[gte]", "1"),
                             ("metadata[k]", "v")]) == {
        "expand": ["a", "b"], "created": {"gte": "1"}, "metadata": {"k": "v"}}


@pytest.mark.parametrize("pairs", [
    [("a", "1"), ("a", "2")], [("a", "1"), ("a[b]", "2")], [("a[b]", "1"), ("a[0]", "2")],
    [("[x]", "1")], [("a[b", "1")], [("a[0][b]", "1")],
])
def test_decode_refuses_malformed_names(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        forms.decode_params(pairs)


def test_other_request_builders() -> None:
    fence = tf.fence_params(ORDER)
    assert "confirm" not in fence and fence["metadata"] == {tf.ORDER_KEY: ORDER,
                                                            tf.FENCE_KEY: "cancel"}
    rq = RefundRequest(ORDER, "rf-1", 300, 1234, "USD")
    assert tf.refund_params(rq, "pi_1") == {
        "payment_intent": "pi_1", "amount": 300,
        "metadata": {tf.REFUND_KEY: "rf-1", tf.ORDER_KEY: ORDER}}
    assert tf.search_query("a'b\\c") == "metadata['paycell_order_id']:'a\\'b\\\\c'"
    assert tf.window_params("cus_1", 1000, 300, "pi_9") == {
        "limit": 100, "created": {"gte": 700, "lte": 1300}, "customer": "cus_1",
        "starting_after": "pi_9"}
    assert "customer" not in tf.window_params("", 1000, 300)
    assert tf.day_bounds(date(2025, 1, 2)) == (1735776000, 1735862400)
    assert tf.balance_params(date(2025, 1, 2))["created"] == {"gte": 1735776000,
                                                              "lt": 1735862400}
    assert tf.cancel_key("pi_1", "ab") == "cancel-pi_1-ab"
    assert len(tf.cancel_key("pi_" + "x" * 300, "ab")) == 255
    assert tf.valid_api_version("2025-03-31.basil") and tf.valid_api_version("2024-06-20")
    assert not tf.valid_api_version("latest")


# ---- PaymentIntent status ---------------------------------------------------------------------

@pytest.mark.parametrize(("status", "error", "fact"), [
    ("succeeded", None, Fact.PAID), ("canceled", None, Fact.CLOSED),
    ("requires_payment_method", {"code": "card_declined"}, Fact.DECLINED),
    ("requires_payment_method", None, Fact.WAITING), ("requires_action", None, Fact.WAITING),
    ("processing", None, Fact.WAITING), ("requires_confirmation", None, Fact.WAITING),
    ("requires_capture", None, Fact.WAITING),
])
def test_fact_of_every_status(status: str, error: Any, fact: Fact) -> None:
    assert tf.fact_of(pi(status, last_payment_error=error)) is fact


def test_unknown_status_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        tf.fact_of(pi("exploded"))


def test_map_intent() -> None:
    paid = tf.map_intent(pi(), ORDER)
    assert (paid.fact, paid.channel_trade_no, paid.amount, paid.currency) == (
        Fact.PAID, "pi_1", 1234, "USD")
    declined = tf.map_intent(pi("requires_payment_method", last_payment_error={
        "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
        "message": "no money"}), ORDER)
    assert (declined.fact, declined.failure_code, declined.failure_message) == (
        Fact.DECLINED, "insufficient_funds", "no money")
    closed = tf.map_intent(pi("canceled"), ORDER)
    assert (closed.fact, closed.action, closed.amount) == (Fact.CLOSED, "close", None)
    with pytest.raises(ProtocolError):
        tf.map_intent(pi(order="another"), ORDER)
    with pytest.raises(ProtocolError):
        tf.map_intent({**pi(), "object": "charge"}, ORDER)
    with pytest.raises(ProtocolError):
        tf.map_intent(pi(currency="xyz"), ORDER)
    with pytest.raises(ProtocolError):
        tf.map_intent(pi(amount_received=-1), ORDER)


# ---- charge answers ---------------------------------------------------------------------------

def test_charge_paid_waiting_and_amount_check() -> None:
    assert tf.map_charge(200, pi(), REQ).fact is Fact.PAID
    assert tf.map_charge(200, pi("requires_action"), REQ).fact is Fact.WAITING
    with pytest.raises(ProtocolError):
        tf.map_charge(200, pi(amount_received=999), REQ)
    with pytest.raises(ProtocolError):
        tf.map_charge(200, pi("canceled", metadata={tf.ORDER_KEY: ORDER, tf.FENCE_KEY: "x"}),
                      REQ)


def test_charge_declines() -> None:
    card = tf.map_charge(402, err("card_error", "card_declined",
                                  decline_code="insufficient_funds",
                                  payment_intent=pi("requires_payment_method")), REQ)
    assert (card.fact, card.failure_code, card.channel_trade_no) == (
        Fact.DECLINED, "insufficient_funds", "pi_1")
    auth = tf.map_charge(402, err("card_error", "authentication_required"), REQ)
    assert (auth.fact, auth.failure_code) == (Fact.DECLINED, "authentication_required")
    invalid = tf.map_charge(400, err("invalid_request_error", "amount_too_small"), REQ)
    assert (invalid.fact, invalid.failure_code) == (Fact.DECLINED, "amount_too_small")


@pytest.mark.parametrize(("status", "body", "raised"), [
    (400, err("idempotency_error"), tf.IdempotencyConflict),
    (401, err("invalid_request_error"), NotSent),
    (403, err("invalid_request_error"), NotSent),
    (429, err("invalid_request_error", "rate_limit"), NotSent),
    (409, err("idempotency_error"), OutcomeUnknown),
    (500, err("api_error"), OutcomeUnknown),
    (503, err("api_error"), OutcomeUnknown),
    (404, err("invalid_request_error", "resource_missing"), ProtocolError),
    (402, err("api_error"), OutcomeUnknown),
    (418, {"nothing": 1}, ProtocolError),
])
def test_charge_errors_by_what_they_mean(status: int, body: dict[str, Any],
                                        raised: type[Exception]) -> None:
    with pytest.raises(raised) as caught:
        tf.map_charge(status, body, REQ)
    if raised is OutcomeUnknown:       # not the narrower conflict or protocol error
        assert type(caught.value) is OutcomeUnknown


def test_reads_and_pages() -> None:
    assert tf.map_read(200, pi(), "x") == pi()
    assert tf.map_read(404, err("invalid_request_error", "resource_missing"), "x") is None
    with pytest.raises(ProtocolError):
        tf.map_read(404, err("invalid_request_error", "other"), "x")
    with pytest.raises(OutcomeUnknown):
        tf.map_read(500, err("api_error"), "x")
    assert tf.page_of({"object": "list", "data": [pi()], "has_more": True}, "list") == (
        [pi()], True)
    with pytest.raises(ProtocolError):
        tf.page_of({"object": "list", "data": [1]}, "list")
    with pytest.raises(ProtocolError):
        tf.page_of({"object": "search_result", "data": []}, "list")


def test_pick_intent_prefers_paid_then_open() -> None:
    closed, open_, paid = pi("canceled", id="pi_c"), pi("requires_action", id="pi_o"), pi(id="pi_p")
    other = pi(order="x", id="pi_x")
    assert tf.pick_intent([closed, open_, paid, other], ORDER)["id"] == "pi_p"  # type: ignore[index]
    assert tf.pick_intent([closed, open_], ORDER)["id"] == "pi_o"  # type: ignore[index]
    assert tf.pick_intent([other], ORDER) is None


def test_cancel_answers() -> None:
    assert tf.map_cancel(200, pi("canceled"), ORDER).fact is Fact.CLOSED  # type: ignore[union-attr]
    with pytest.raises(ProtocolError):
        tf.map_cancel(200, pi("succeeded"), ORDER)
    assert tf.map_cancel(400, err("invalid_request_error",
                                  "payment_intent_unexpected_state"), ORDER) is None
    with pytest.raises(OutcomeUnknown):
        tf.map_cancel(502, err("api_error"), ORDER)
    with pytest.raises(ProtocolError):
        tf.map_cancel(400, err("invalid_request_error", "parameter_invalid_string"), ORDER)


# ---- refunds ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "expected", "code"), [
    ("succeeded", RefundStatus.SUCCEEDED, ""), ("pending", RefundStatus.PENDING, ""),
    ("requires_action", RefundStatus.PENDING, ""), ("failed", RefundStatus.FAILED, "lost"),
    ("canceled", RefundStatus.FAILED, "canceled"),
])
def test_refund_statuses(status: str, expected: RefundStatus, code: str) -> None:
    res = tf.map_refund(200, refund(status, failure_reason="lost" if status == "failed"
                                    else None), "rf-1")
    assert (res.status, res.amount, res.currency, res.channel_refund_no, res.failure_code) == (
        expected, 300, "USD", "re_1", code)


def test_refund_errors() -> None:
    over = tf.map_refund(400, err("invalid_request_error", "amount_too_large"), "rf-1")
    assert (over.status, over.failure_code, over.refund_id) == (RefundStatus.FAILED,
                                                                 "amount_too_large", "rf-1")
    done = tf.map_refund(400, err("invalid_request_error", "charge_already_refunded"), "rf-1")
    assert done.failure_code == "charge_already_refunded"
    with pytest.raises(tf.IdempotencyConflict):
        tf.map_refund(400, err("idempotency_error"), "rf-1")
    with pytest.raises(NotSent):
        tf.map_refund(429, err("invalid_request_error", "rate_limit"), "rf-1")
    with pytest.raises(OutcomeUnknown):
        tf.map_refund(500, err("api_error"), "rf-1")
    with pytest.raises(ProtocolError):
        tf.map_refund(200, refund(rid="rf-other"), "rf-1")
    with pytest.raises(ProtocolError):
        tf.map_refund(200, refund("weird"), "rf-1")
    assert tf.pick_refund([refund(rid="a"), refund(rid="rf-1", id="re_2")], "rf-1")["id"] == "re_2"  # type: ignore[index]
    assert tf.pick_refund([refund(rid="a")], "rf-1") is None


# ---- notifications ----------------------------------------------------------------------------

def event(etype: str, obj: dict[str, Any], eid: str = "evt_1") -> dict[str, Any]:
    return {"id": eid, "object": "event", "type": etype, "data": {"object": obj}}


def test_payment_events() -> None:
    paid = tf.map_event(event("payment_intent.succeeded", pi()))
    assert (paid.order_id, paid.fact, paid.amount, paid.currency, paid.notify_id,
            paid.kind, paid.channel_trade_no) == (ORDER, Fact.PAID, 1234, "USD", "evt_1",
                                                  NotificationKind.PAYMENT, "pi_1")
    failed = tf.map_event(event("payment_intent.payment_failed", pi(
        "requires_payment_method", last_payment_error={"code": "card_declined"})))
    assert (failed.fact, failed.amount) == (Fact.DECLINED, 1234)
    assert tf.map_event(event("payment_intent.canceled", pi("canceled"))).fact is Fact.CLOSED


def test_refund_events() -> None:
    note = tf.map_event(event("refund.updated", refund()))
    assert (note.kind, note.order_id, note.refund_id, note.refund_status, note.refund_amount,
            note.fact, note.channel_trade_no) == (NotificationKind.REFUND, ORDER, "rf-1",
                                                  RefundStatus.SUCCEEDED, 300, Fact.PAID, "pi_1")


@pytest.mark.parametrize("bad", [
    event("customer.created", {"id": "cus_1", "object": "customer"}),
    event("payment_intent.succeeded", pi(metadata={})),
    event("refund.created", refund(metadata={tf.REFUND_KEY: "rf-1"})),
    event("payment_intent.succeeded", refund()),
    {"id": "evt_1", "object": "charge", "type": "payment_intent.succeeded", "data": {}},
    {"object": "event", "type": "payment_intent.succeeded", "data": {"object": pi()}},
])
def test_events_paycell_cannot_use_are_protocol_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_event(bad)


def test_connector_verifies_webhooks_with_its_clock_and_tolerance() -> None:
    clock = FakeClock(1_764_000_000.0)
    conn = StripeConnector(StripeConfig("http://127.0.0.1:1/stripe", "sk_test_x", "whsec_x",
                                        300, 1000), None, clock=clock)
    body = orjson.dumps(event("payment_intent.succeeded", pi()))
    header = signing.signature_header(body, "whsec_x", int(clock.time()))
    assert conn.parse_notification(body, {"stripe-signature": header}).fact is Fact.PAID
    with pytest.raises(ProtocolError):
        conn.parse_notification(body, {})
    with pytest.raises(ProtocolError):
        conn.parse_notification(body, {"Stripe-Signature": signing.signature_header(
            body, "whsec_x", int(clock.time()) - 301)})
    with pytest.raises(ProtocolError):
        conn.parse_notification(b"not json", {"Stripe-Signature": signing.signature_header(
            b"not json", "whsec_x", int(clock.time()))})
    assert conn.ack(True).status == 200 and conn.ack(False).status == 400


# ---- statement --------------------------------------------------------------------------------

def txn(ttype: str, amount: int, source: Any, fee: int = 0, currency: str = "usd",
        created: int = 1735776100, tid: str = "txn_1") -> dict[str, Any]:
    return {"id": tid, "object": "balance_transaction", "type": ttype, "amount": amount,
            "fee": fee, "net": amount - fee, "currency": currency, "created": created,
            "status": "available", "source": source}


def charge(intent: Any) -> dict[str, Any]:
    return {"id": "ch_1", "object": "charge", "amount": 1234, "currency": "usd",
            "payment_intent": intent}


def test_statement_lines_and_computed_summary() -> None:
    rf = refund(payment_intent=pi())
    txns = [
        txn("charge", 1234, charge(pi()), fee=66, created=1735776100),
        txn("refund", -300, rf, created=1735776200, tid="txn_2"),
        txn("payout", -900, {"id": "po_1", "object": "payout"}, tid="txn_3"),
    ]
    st_ = tf.build_statement(date(2025, 1, 2), txns)
    pay, ref = st_.lines
    assert (pay.kind, pay.order_id, pay.channel_trade_no, pay.amount, pay.currency, pay.fee,
            pay.at) == (StatementKind.PAYMENT, ORDER, "pi_1", 1234, "USD", 66,
                        datetime.fromtimestamp(1735776100, timezone.utc))
    assert (ref.kind, ref.order_id, ref.refund_id, ref.channel_refund_no, ref.amount) == (
        StatementKind.REFUND, ORDER, "rf-1", "re_1", 300)
    assert (st_.payments_count, st_.payments_total, st_.refunds_total) == (1, 1234, 300)


def test_statement_line_edge_cases() -> None:
    settled_in_eur = tf.statement_line(txn("charge", 1100, charge(pi()), fee=60, currency="eur"))
    assert settled_in_eur is not None and (settled_in_eur.amount, settled_in_eur.currency,
                                           settled_in_eur.fee) == (1234, "USD", 0)
    foreign = tf.statement_line(txn("charge", 1234, charge("pi_9")))
    assert foreign is not None and (foreign.order_id, foreign.channel_trade_no) == ("", "")
    with pytest.raises(ProtocolError):
        tf.statement_line(txn("charge", 1234, "ch_1"))
    assert tf.statement_line(txn("stripe_fee", -10, {"id": "x"})) is None
