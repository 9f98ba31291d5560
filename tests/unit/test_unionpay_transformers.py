"""UnionPay transformers: request fields, every answer-mapping branch, notifications and the ZM
bill parser (against records laid out by the sandbox's writer and by hand)."""
from __future__ import annotations

import base64
import io
import zipfile
import zlib
from datetime import date, datetime, timezone

import pytest
from hypothesis import given, strategies as st

from channels.base import (ChannelResult, ChargeRequest, NotificationKind, OutcomeUnknown,
                           ProtocolError, RefundRequest, RefundResult, RefundStatus,
                           StatementKind)
from channels.sandbox.unionpay import zm_record
from channels.unionpay import transformers as tf
from core.states import Fact

M = tf.Merchant("777290058110048", "99988877766")
NOW = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
WIRE = "cf0123456789abcdef0123"


def _req(amount: int = 1200, currency: str = "CNY") -> ChargeRequest:
    return ChargeRequest(WIRE, amount, currency, "gems", "card", payment_token="6226090000000048")


def _ans(**kw: str) -> dict[str, str]:
    return {"merId": M.mer_id, "orderId": WIRE, **kw}


# ---- requests -------------------------------------------------------------------------------

def test_consume_params_are_a_token_consume_in_fen() -> None:
    p = tf.consume_params(M, _req(1234, "USD"), WIRE, NOW, NOW.replace(minute=15), "http://n/")
    assert {k: p[k] for k in ("version", "encoding", "signMethod", "txnType", "txnSubType",
                              "bizType", "accessType", "channelType", "merId", "orderId",
                              "txnTime", "txnAmt", "currencyCode", "accType", "backUrl",
                              "payTimeout", "tokenPayData")} == {
        "version": "5.1.0", "encoding": "UTF-8", "signMethod": "01", "txnType": "01",
        "txnSubType": "01", "bizType": "000902", "accessType": "0", "channelType": "07",
        "merId": M.mer_id, "orderId": WIRE, "txnTime": "20250301160000", "txnAmt": "1234",
        "currencyCode": "840", "accType": "01", "backUrl": "http://n/",
        "payTimeout": "20250301161500",
        "tokenPayData": "{token=6226090000000048&trId=99988877766}"}


def test_consume_needs_a_token_and_a_known_currency() -> None:
    with pytest.raises(ValueError):
        tf.consume_params(M, ChargeRequest(WIRE, 1, "CNY", "s", "card"), WIRE, NOW, NOW, "u")
    with pytest.raises(ValueError):
        tf.consume_params(M, _req(currency="EUR"), WIRE, NOW, NOW, "u")
    with pytest.raises(ValueError):
        tf.consume_params(M, _req(), WIRE, NOW, NOW, "")


def test_refund_cancel_reversal_query_and_file_params() -> None:
    rq = RefundRequest(WIRE, "rf1", 300, 1200, "HKD")
    r = tf.refund_params(M, rq, "rf0000000001", WIRE, "951807261002324791038", NOW, "u")
    assert (r["txnType"], r["txnSubType"], r["origQryId"], r["txnAmt"], r["currencyCode"],
            r["reqReserved"], r["orderId"]) == ("04", "00", "951807261002324791038", "300",
                                                "344", WIRE, "rf0000000001")
    c = tf.cancel_params(M, "Yabc12345", WIRE, "q1", 1200, "CNY", NOW, "u")
    assert (c["txnType"], c["txnAmt"], c["origQryId"], c["orderId"]) == ("31", "1200", "q1",
                                                                         "Yabc12345")
    v = tf.reversal_params(M, WIRE, NOW)
    assert (v["txnType"], v["txnSubType"], v["bizType"], v["txnTime"]) == (
        "99", "01", "000000", "20250301160000")
    q = tf.query_params(M, WIRE, NOW)
    assert (q["txnType"], q["txnSubType"], q["orderId"], q["txnTime"]) == (
        "00", "00", WIRE, "20250301160000")
    f = tf.file_params(M, date(2025, 2, 28), NOW)
    assert (f["txnType"], f["txnSubType"], f["bizType"], f["settleDate"], f["fileType"]) == (
        "76", "01", "000000", "0228", "00")


# ---- back-end answers -----------------------------------------------------------------------

@pytest.mark.parametrize("code", ["00", "03", "04", "05", "12"])
def test_accepted_or_unknown_codes_are_confirmed_by_query(code: str) -> None:
    assert tf.needs_query(_ans(respCode=code), M, WIRE) is True


@pytest.mark.parametrize("code", ["64", "01", "11", "61", "33"])
def test_refusals_are_declines(code: str) -> None:
    assert tf.needs_query(_ans(respCode=code), M, WIRE) is False
    res = tf.declined(_ans(respCode=code, respMsg="x"))
    assert (res.fact, res.failure_code, res.failure_message) == (Fact.DECLINED, code, "x")


@pytest.mark.parametrize("code", ["06", "74", "75", "99", ""])
def test_other_codes_are_unknown_outcomes(code: str) -> None:
    with pytest.raises(OutcomeUnknown):
        tf.needs_query(_ans(respCode=code), M, WIRE)


def test_answers_for_another_order_or_merchant_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        tf.needs_query({"respCode": "00", "orderId": "other0000"}, M, WIRE)
    with pytest.raises(ProtocolError):
        tf.needs_query({"respCode": "00", "merId": "1"}, M, WIRE)


def _q(orig: str, **kw: str) -> dict[str, str]:
    return _ans(**{"respCode": "00", "origRespCode": orig, "queryId": "q1", "txnAmt": "1200",
                   "currencyCode": "156", **kw})


@pytest.mark.parametrize("orig", ["00", "A6"])
def test_query_paid(orig: str) -> None:
    res = tf.map_query(_q(orig), M, WIRE)
    assert (res.fact, res.channel_trade_no, res.amount, res.currency, res.raw_status) == (
        Fact.PAID, "q1", 1200, "CNY", orig)


@pytest.mark.parametrize("orig", ["03", "04", "05"])
def test_query_processing_is_waiting(orig: str) -> None:
    assert tf.map_query(_q(orig), M, WIRE).fact is Fact.WAITING


def test_query_failed_is_closed_and_34_is_no_such_trade() -> None:
    res = tf.map_query(_q("64"), M, WIRE)
    assert (res.fact, res.failure_code, res.exists) == (Fact.CLOSED, "64", True)
    none = tf.map_query(_ans(respCode="34"), M, WIRE)
    assert (none.exists, none.fact) == (False, Fact.WAITING)


def test_query_errors() -> None:
    with pytest.raises(OutcomeUnknown):
        tf.map_query(_ans(respCode="03"), M, WIRE)
    with pytest.raises(ProtocolError):
        tf.map_query(_ans(respCode="00"), M, WIRE)               # no origRespCode
    with pytest.raises(ProtocolError):
        tf.map_query(_q("00", currencyCode="978"), M, WIRE)
    with pytest.raises(ProtocolError):
        tf.map_query(_q("00", txnAmt="12.00"), M, WIRE)
    with pytest.raises(ProtocolError):
        tf.map_query({**_q("00"), "queryId": ""}, M, WIRE)


def test_charge_result_from_the_confirming_query() -> None:
    paid = ChannelResult(Fact.PAID, "q1", 1200, "CNY")
    assert tf.charge_result(paid, _req(), duplicate=False) is paid
    other = ChannelResult(Fact.PAID, "q1", 999, "CNY")
    assert tf.charge_result(other, _req(), duplicate=True).failure_code == "12"
    with pytest.raises(ProtocolError):
        tf.charge_result(other, _req(), duplicate=False)
    failed = ChannelResult(Fact.CLOSED, "q1", raw_status="64", failure_code="64")
    assert (tf.charge_result(failed, _req(), False).fact,
            tf.charge_result(failed, _req(), False).failure_code) == (Fact.DECLINED, "64")
    waiting = ChannelResult(Fact.WAITING, "q1")
    assert tf.charge_result(waiting, _req(), False) is waiting
    with pytest.raises(OutcomeUnknown):
        tf.charge_result(ChannelResult(Fact.WAITING, exists=False), _req(), False)


def _rq(orig: str, amount: str = "300") -> dict[str, str]:
    return {"merId": M.mer_id, "orderId": "rf00000001", "respCode": "00", "origRespCode": orig,
            "txnType": "04", "queryId": "q2", "txnAmt": amount, "currencyCode": "156"}


@pytest.mark.parametrize(("orig", "status"), [("00", RefundStatus.SUCCEEDED),
                                              ("A6", RefundStatus.SUCCEEDED),
                                              ("05", RefundStatus.PENDING),
                                              ("01", RefundStatus.FAILED)])
def test_refund_query_states(orig: str, status: RefundStatus) -> None:
    res = tf.map_refund_query(_rq(orig), M, "rf00000001", "rf1")
    assert (res.status, res.refund_id, res.amount, res.channel_refund_no) == (status, "rf1", 300,
                                                                              "q2")


def test_refund_query_of_nothing_and_errors() -> None:
    none = tf.map_refund_query({"respCode": "34"}, M, "rf00000001", "rf1")
    assert (none.exists, none.status) == (False, RefundStatus.PENDING)
    with pytest.raises(OutcomeUnknown):
        tf.map_refund_query({"respCode": "37"}, M, "rf00000001", "rf1")
    with pytest.raises(ProtocolError):
        tf.map_refund_query({**_rq("00"), "txnType": "01"}, M, "rf00000001", "rf1")


def test_refund_answer_codes() -> None:
    assert tf.needs_query({"respCode": "00"}, M, "rf00000001", tf.REFUND_FAIL_CODES)
    for code in ("33", "35", "36", "45"):
        assert not tf.needs_query({"respCode": code}, M, "rf00000001", tf.REFUND_FAIL_CODES)
        failed = tf.refund_failed({"respCode": code}, "rf1")
        assert (failed.status, failed.failure_code) == (RefundStatus.FAILED, code)


def test_refund_result_from_the_confirming_query() -> None:
    rq = RefundRequest(WIRE, "rf1", 300, 1200, "CNY")
    ok = RefundResult(RefundStatus.SUCCEEDED, "rf1", "q2", 300, "CNY")
    assert tf.refund_result(ok, rq, False) is ok
    assert tf.refund_result(RefundResult(RefundStatus.PENDING, "rf1", exists=False), rq,
                            False).status is RefundStatus.PENDING
    other = RefundResult(RefundStatus.SUCCEEDED, "rf1", "q2", 500, "CNY")
    assert tf.refund_result(other, rq, True).status is RefundStatus.FAILED
    with pytest.raises(ProtocolError):
        tf.refund_result(other, rq, False)


def test_cancel_and_reversal_answers() -> None:
    paid = ChannelResult(Fact.PAID, "q1", 1200, "CNY")
    for code in ("00", "12", "45"):
        res = tf.map_cancel({"respCode": code}, M, "Yc", paid)
        assert (res.fact, res.action, res.amount) == (Fact.CLOSED, "refund", 1200)
    assert tf.map_cancel({"respCode": "35"}, M, "Yc", paid) is paid
    with pytest.raises(OutcomeUnknown):
        tf.map_cancel({"respCode": "03"}, M, "Yc", paid)
    closed = tf.map_reversal({"respCode": "00"}, M, WIRE)
    assert (closed.fact, closed.action) == (Fact.CLOSED, "close")
    with pytest.raises(OutcomeUnknown):
        tf.map_reversal({"respCode": "35"}, M, WIRE)


# ---- notifications --------------------------------------------------------------------------

def _note(**kw: str) -> dict[str, str]:
    return {"merId": M.mer_id, "txnType": "01", "respCode": "00", "orderId": WIRE,
            "queryId": "q1", "txnAmt": "1200", "currencyCode": "156", **kw}


def test_payment_notification() -> None:
    n = tf.map_notification(_note(), M)
    assert (n.kind, n.order_id, n.fact, n.amount, n.currency, n.channel_trade_no,
            n.notify_id) == (NotificationKind.PAYMENT, WIRE, Fact.PAID, 1200, "CNY", "q1",
                             "01:q1")
    assert tf.map_notification(_note(respCode="64"), M).fact is Fact.DECLINED


def test_refund_notification_names_the_payment_by_req_reserved() -> None:
    n = tf.map_notification(_note(txnType="04", orderId="rf00000001", queryId="q2",
                                  origQryId="q1", txnAmt="300", reqReserved=WIRE), M)
    assert (n.kind, n.order_id, n.refund_id, n.refund_status, n.refund_amount,
            n.channel_trade_no, n.notify_id) == (
        NotificationKind.REFUND, WIRE, "rf00000001", RefundStatus.SUCCEEDED, 300, "q1", "04:q2")


@pytest.mark.parametrize("bad", [{"merId": "1"}, {"respCode": "05"}, {"txnType": "76"},
                                 {"queryId": ""}, {"orderId": "a-b"},
                                 {"txnType": "04", "reqReserved": ""}])
def test_unusable_notifications_are_protocol_errors(bad: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_notification(_note(**bad), M)


def test_notification_form_parsing() -> None:
    assert tf.parse_form(b"a=1&signPubKeyCert=-----BEGIN%0D%0Ax%2B") == {
        "a": "1", "signPubKeyCert": "-----BEGIN\r\nx+"}
    with pytest.raises(ProtocolError):
        tf.parse_form(b"a=1&a=2")
    with pytest.raises(ProtocolError):
        tf.parse_form(b"\xff=1")


# ---- statement ------------------------------------------------------------------------------

def _bill(records: list[bytes], name: str = "INN25022888ZM_777290058110048") -> dict[str, str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, b"".join(r + b"\r\n" for r in records))
        zf.writestr("INN25022888ZME_777290058110048", b"")
    return {"fileContent": base64.b64encode(zlib.compress(buf.getvalue())).decode()}


def test_zm_layout_by_hand() -> None:
    """Field 12 (商户订单号) starts after 11 fields and 11 separators: byte 3+11+11+6+10+19+12+4+
    2+21+2 + 11 = 112; 交易金额 is field 7 at byte 3+11+11+6+10+19 + 6 = 66."""
    record = zm_record({6: "000000001200", 11: WIRE, 19: "01", 4: "0228153000"})
    assert record[112:112 + len(WIRE)] == WIRE.encode()
    assert record[66:78] == b"000000001200"
    fields = tf.zm_fields(record)
    assert (fields[tf.ZM_ORDER_ID], fields[tf.ZM_AMOUNT], fields[tf.ZM_TXN_TYPE]) == (
        WIRE, "000000001200", "01")


def test_statement_lines_and_totals() -> None:
    pay = zm_record({4: "0228153000", 6: "000000001200", 9: "q1", 11: WIRE, 15: "D000000000004",
                     19: "01", 27: M.mer_id})
    ref = zm_record({4: "0228160000", 6: "000000000300", 9: "q2", 11: "rf00000001", 19: "04",
                     26: "q1", 27: M.mer_id, 34: WIRE})
    cancel = zm_record({4: "0228170000", 6: "000000000900", 9: "q3", 11: "Yabc", 19: "31",
                        26: "q9", 27: M.mer_id, 34: "cf9999999999"})
    other = zm_record({4: "0228170000", 6: "000000000100", 11: "cf8888888888", 19: "99"})
    st_ = tf.parse_statement(_bill([pay, ref, cancel, other]), date(2025, 2, 28), M)
    assert [(x.kind, x.order_id, x.amount, x.channel_trade_no, x.refund_id, x.channel_refund_no)
            for x in st_.lines] == [
        (StatementKind.PAYMENT, WIRE, 1200, "q1", "", ""),
        (StatementKind.REFUND, WIRE, 300, "q1", "rf00000001", "q2"),
        (StatementKind.REFUND, "cf9999999999", 900, "q9", "", "q3")]
    assert st_.lines[0].fee == 4
    assert st_.lines[0].at == datetime(2025, 2, 28, 7, 30, tzinfo=timezone.utc)
    assert (st_.payments_count, st_.payments_total, st_.refunds_total) == (1, 1200, 1200)


def test_a_december_row_in_a_january_bill_keeps_its_year() -> None:
    row = zm_record({4: "1231235959", 6: "000000000100", 11: WIRE, 19: "01"})
    line = tf.parse_statement(_bill([row]), date(2025, 1, 1), M).lines[0]
    assert line.at.year == 2024


@pytest.mark.parametrize("answer", [{"fileContent": "!!"}, {"fileContent": ""},
                                    {"fileContent": base64.b64encode(b"not deflate").decode()},
                                    {"fileContent":
                                     base64.b64encode(zlib.compress(b"x")).decode()}])
def test_unusable_bills_are_protocol_errors(answer: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        tf.parse_statement(answer, date(2025, 2, 28), M)


def test_bill_of_another_merchant_or_short_record_is_refused() -> None:
    with pytest.raises(ProtocolError):
        tf.parse_statement(_bill([zm_record({4: "0228153000", 6: "000000000001", 11: WIRE,
                                             19: "01", 27: "999999999999999"})]),
                           date(2025, 2, 28), M)
    with pytest.raises(ProtocolError):
        tf.parse_statement(_bill([b"S22 short"]), date(2025, 2, 28), M)


@given(st.lists(st.integers(min_value=1, max_value=10**12 - 1), max_size=5))
def test_statement_amounts_round_trip(amounts: list[int]) -> None:
    rows = [zm_record({4: "0228153000", 6: f"{a:012d}", 11: WIRE, 19: "01"}) for a in amounts]
    st_ = tf.parse_statement(_bill(rows), date(2025, 2, 28), M)
    assert [x.amount for x in st_.lines] == amounts and st_.payments_total == sum(amounts)
