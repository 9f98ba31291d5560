"""WeChat Pay v3 transformers: request bodies and every answer-mapping branch, callbacks and the
trade bill (round-tripped through the sandbox's renderer)."""
from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from channels.base import (ChargeRequest, NotificationKind, OutcomeUnknown, ProtocolError,
                           RefundRequest, RefundStatus, StatementKind)
from channels.sandbox.engine import SandboxConfig
from channels.sandbox.ledger import Refund, RefundState, StatementRow, Trade, TradeStatus
from channels.sandbox.wechatpay import WechatPaySandbox
from channels.sandbox.wechatpay_routes import render_bill
from channels.wechatpay import bill, signing, transformers as tf
from channels.wechatpay.transformers import Answer, CancelStep
from core.settings import KEYS_DIR
from core.states import Fact

MCHID, APPID = "1900009191", "wxd678efh567hg6787"
APIV3 = "paycellSandboxApiV3Key0123456789"
KEY = signing.load_private_key(KEYS_DIR / "wechatpay_merchant_private.pem")
PUB = signing.load_public_key(KEYS_DIR / "wechatpay_merchant_public.pem")


def _charge(payment_type: str = "barcode", **over: Any) -> ChargeRequest:
    fields: dict[str, Any] = dict(order_id="o-1", amount=1200, currency="CNY", subject="gems",
                                  payment_type=payment_type, auth_code="134567890123456789")
    fields.update(over)
    return ChargeRequest(**fields)


def _txn(state: str = "SUCCESS", **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"appid": APPID, "mchid": MCHID, "out_trade_no": "o-1",
                           "transaction_id": "4200001", "trade_type": "MICROPAY",
                           "trade_state": state, "amount": {"total": 1200, "currency": "CNY"}}
    out.update(over)
    return out


# ---- requests ---------------------------------------------------------------------------------

def test_codepay_body_follows_the_documented_fields() -> None:
    body = tf.codepay_body(APPID, MCHID, _charge(client_ip="10.0.0.1"), "https://m/notify")
    assert body == {
        "appid": APPID, "mchid": MCHID, "description": "gems", "out_trade_no": "o-1",
        "payer": {"auth_code": "134567890123456789"},
        "amount": {"total": 1200, "currency": "CNY"},
        "scene_info": {"store_info": {"id": "0001"}, "device_ip": "10.0.0.1"},
        "notify_url": "https://m/notify"}
    assert "notify_url" not in tf.codepay_body(APPID, MCHID, _charge())


def test_prepay_body_and_paths() -> None:
    body = tf.prepay_body(APPID, MCHID, _charge("native", subject="x" * 200), "https://m/n")
    assert body["notify_url"] == "https://m/n" and len(body["description"]) == 127
    assert "payer" not in body and body["amount"] == {"total": 1200, "currency": "CNY"}
    assert tf.query_path("a|b*c", MCHID) == (
        "/v3/pay/transactions/out-trade-no/a%7Cb%2Ac?mchid=1900009191")
    assert tf.close_path("o1") == "/v3/pay/transactions/out-trade-no/o1/close"
    assert tf.reverse_path("o1") == "/v3/pay/transactions/out-trade-no/o1/reverse"
    assert tf.refund_query_path("r1") == "/v3/refund/domestic/refunds/r1"
    assert tf.tradebill_path(date(2019, 6, 11)) == (
        "/v3/bill/tradebill?bill_date=2019-06-11&bill_type=ALL&tar_type=GZIP")


def test_refund_body_sends_paycell_refund_id_as_out_refund_no() -> None:
    req = RefundRequest("o-1", "rf-9", 300, 1200, "CNY", reason="r" * 100)
    body = tf.refund_body(req, "https://m/n")
    assert body == {"out_trade_no": "o-1", "out_refund_no": "rf-9", "reason": "r" * 80,
                    "amount": {"refund": 300, "total": 1200, "currency": "CNY"},
                    "notify_url": "https://m/n"}


def test_app_pay_data_is_signed_for_the_app_sdk() -> None:
    data = tf.app_pay_data(APPID, MCHID, "wx201410272009395522657a690389285100", KEY,
                           1414561699, "5K8264ILTKCH16CQ2502SI8ZNMTM67VS")
    assert (data["package"], data["partnerid"], data["prepayid"], data["timestamp"]) == (
        "Sign=WXPay", MCHID, "wx201410272009395522657a690389285100", "1414561699")
    message = (f"{APPID}\n1414561699\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\n"
               "wx201410272009395522657a690389285100\n").encode()
    assert signing.verify(PUB, message, data["sign"])


# ---- code pay ---------------------------------------------------------------------------------

def test_codepay_paid() -> None:
    res = tf.map_codepay(Answer(200, _txn()), "o-1")
    assert (res.fact, res.channel_trade_no, res.amount, res.currency, res.raw_status) == (
        Fact.PAID, "4200001", 1200, "CNY", "SUCCESS")


@pytest.mark.parametrize("ans", [
    Answer(202, {"code": "USERPAYING", "message": "用户支付中，需要输入密码"}),
    Answer(202, {"trade_state": "USERPAYING"}),
    Answer(200, {"trade_state": "USERPAYING", "out_trade_no": "o-1"}),
])
def test_codepay_waiting(ans: Answer) -> None:
    res = tf.map_codepay(ans, "o-1")
    assert (res.fact, res.raw_status) == (Fact.WAITING, "USERPAYING")


@pytest.mark.parametrize("ans,code", [
    (Answer(403, {"code": "NOT_ENOUGH", "message": "余额不足"}), "NOT_ENOUGH"),
    (Answer(400, {"code": "PARAM_ERROR"}), "PARAM_ERROR"),
    (Answer(401, {"code": "SIGN_ERROR"}), "SIGN_ERROR"),
    (Answer(200, _txn("PAYERROR", transaction_id="")), "PAYERROR"),
])
def test_codepay_declined(ans: Answer, code: str) -> None:
    res = tf.map_codepay(ans, "o-1")
    assert (res.fact, res.failure_code) == (Fact.DECLINED, code)


def test_codepay_on_a_fenced_number_is_closed() -> None:
    res = tf.map_codepay(Answer(400, {"code": "ORDER_CLOSED", "message": "订单已关闭"}), "o-1")
    assert (res.fact, res.failure_code, res.failure_message) == (
        Fact.CLOSED, "ORDER_CLOSED", "订单已关闭")


@pytest.mark.parametrize("ans", [
    Answer(400, {"code": "ORDERPAID"}), Answer(403, {"code": "OUT_TRADE_NO_USED"}),
    Answer(400, {"code": "INVALID_REQUEST"}), Answer(500, {"code": "SYSTEM_ERROR"}),
    Answer(502, {"code": "BANK_ERROR"}), Answer(429, {"code": "FREQUENCY_LIMITED"}),
    Answer(403, {"code": "SOMETHING_NEW"}), Answer(200, _txn("CLOSED")),
])
def test_codepay_unknown_outcomes(ans: Answer) -> None:
    with pytest.raises(OutcomeUnknown):
        tf.map_codepay(ans, "o-1")


@pytest.mark.parametrize("ans", [
    Answer(200, {}), Answer(200, _txn(out_trade_no="other")), Answer(200, _txn("WEIRD")),
    Answer(200, _txn(transaction_id="")), Answer(200, _txn(amount={"total": -1})),
    Answer(200, _txn(amount={"total": True})),
])
def test_codepay_untrustworthy_answers(ans: Answer) -> None:
    with pytest.raises(ProtocolError):
        tf.map_codepay(ans, "o-1")


# ---- prepay, query, cancel --------------------------------------------------------------------

def test_prepay_answers() -> None:
    app = tf.map_prepay(Answer(200, {"prepay_id": "wx26"}), "app")
    native = tf.map_prepay(Answer(200, {"code_url": "weixin://wxpay/bizpayurl?pr=p4l"}), "native")
    assert (app.fact, dict(app.pay_data)) == (Fact.WAITING, {"prepay_id": "wx26"})
    assert dict(native.pay_data) == {"code_url": "weixin://wxpay/bizpayurl?pr=p4l"}
    with pytest.raises(ProtocolError):
        tf.map_prepay(Answer(200, {"code_url": "x"}), "app")
    assert tf.map_prepay(Answer(400, {"code": "ORDER_CLOSED"}), "app").fact is Fact.CLOSED
    with pytest.raises(OutcomeUnknown):
        tf.map_prepay(Answer(500, {"code": "SYSTEM_ERROR"}), "native")


@pytest.mark.parametrize("state,fact", [
    ("SUCCESS", Fact.PAID), ("REFUND", Fact.PAID), ("NOTPAY", Fact.WAITING),
    ("USERPAYING", Fact.WAITING), ("ACCEPT", Fact.WAITING), ("CLOSED", Fact.CLOSED),
    ("REVOKED", Fact.CLOSED), ("PAYERROR", Fact.DECLINED),
])
def test_query_states(state: str, fact: Fact) -> None:
    res = tf.map_query(Answer(200, _txn(state)), "o-1")
    assert (res.fact, res.raw_status, res.exists) == (fact, state, True)


def test_query_not_found_and_errors() -> None:
    res = tf.map_query(Answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}), "o-1")
    assert (res.exists, res.fact) == (False, Fact.WAITING)
    for ans in (Answer(404, {"code": "RESOURCE_NOT_EXISTS"}), Answer(500, {}),
                Answer(429, {"code": "FREQUENCY_LIMITED"})):
        with pytest.raises(OutcomeUnknown):
            tf.map_query(ans, "o-1")


@pytest.mark.parametrize("ans,step", [
    (Answer(404, {"code": "ORDER_NOT_EXIST"}), CancelStep.CLOSE),
    (Answer(200, _txn("CLOSED")), CancelStep.DONE),
    (Answer(200, _txn("PAYERROR")), CancelStep.DONE),
    (Answer(200, _txn("SUCCESS")), CancelStep.REVERSE),
    (Answer(200, {"trade_state": "USERPAYING", "out_trade_no": "o-1"}), CancelStep.REVERSE),
    (Answer(200, _txn("SUCCESS", trade_type="NATIVE")), CancelStep.PAID),
    (Answer(200, _txn("NOTPAY", trade_type="APP")), CancelStep.CLOSE),
])
def test_cancel_steps(ans: Answer, step: CancelStep) -> None:
    assert tf.cancel_step(ans, tf.map_query(ans, "o-1")) is step


def test_close_and_reverse_answers() -> None:
    assert tf.close_done(Answer(204)) is True
    assert tf.close_done(Answer(400, {"code": "ORDERPAID"})) is False
    with pytest.raises(OutcomeUnknown):
        tf.close_done(Answer(500, {"code": "SYSTEM_ERROR"}))
    tf.reverse_done(Answer(200, {"out_trade_no": "o-1", "mchid": MCHID}), "o-1")
    with pytest.raises(ProtocolError):
        tf.reverse_done(Answer(200, {"out_trade_no": "o-2"}), "o-1")
    with pytest.raises(OutcomeUnknown):
        tf.reverse_done(Answer(400, {"code": "INVALID_REQUEST"}), "o-1")


# ---- refunds ----------------------------------------------------------------------------------

def _refund(status: str, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"refund_id": "50300", "out_refund_no": "rf-1", "status": status,
                           "amount": {"total": 1200, "refund": 300, "currency": "CNY"}}
    out.update(over)
    return out


@pytest.mark.parametrize("status,expected", [
    ("SUCCESS", RefundStatus.SUCCEEDED), ("PROCESSING", RefundStatus.PENDING),
    ("ABNORMAL", RefundStatus.PENDING), ("CLOSED", RefundStatus.FAILED),
])
def test_refund_statuses(status: str, expected: RefundStatus) -> None:
    for mapper in (tf.map_refund, tf.map_refund_query):
        res = mapper(Answer(200, _refund(status)), "rf-1")
        assert (res.status, res.channel_refund_no, res.amount, res.raw_status) == (
            expected, "50300", 300, status)
        assert res.failure_code == ("CLOSED" if status == "CLOSED" else "")


def test_refund_refusals_unknowns_and_bad_answers() -> None:
    over = tf.map_refund(Answer(400, {"code": "INVALID_REQUEST",
                                      "message": "申请退款金额超过订单可退金额"}), "rf-1")
    assert (over.status, over.failure_code, over.failure_message) == (
        RefundStatus.FAILED, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
    assert tf.map_refund(Answer(403, {"code": "NOT_ENOUGH"}), "rf-1").failure_code == "NOT_ENOUGH"
    for ans in (Answer(500, {"code": "SYSTEM_ERROR"}), Answer(429, {"code": "FREQUENCY_LIMITED"}),
                Answer(400, {})):
        with pytest.raises(OutcomeUnknown):
            tf.map_refund(ans, "rf-1")
    for bad in (_refund("SUCCESS", out_refund_no="rf-2"), _refund("WHAT"),
                _refund("SUCCESS", amount=None)):
        with pytest.raises(ProtocolError):
            tf.map_refund(Answer(200, bad), "rf-1")


def test_refund_query_of_an_unknown_refund() -> None:
    res = tf.map_refund_query(Answer(404, {"code": "RESOURCE_NOT_EXISTS"}), "rf-1")
    assert (res.exists, res.status, res.refund_id) == (False, RefundStatus.FAILED, "rf-1")
    with pytest.raises(OutcomeUnknown):
        tf.map_refund_query(Answer(404, {"code": "ORDER_NOT_EXIST"}), "rf-1")


# ---- callbacks --------------------------------------------------------------------------------

def _callback(plain: dict[str, Any], event: str = "TRANSACTION.SUCCESS", **over: Any) -> bytes:
    kind = "refund" if event.startswith("REFUND") else "transaction"
    resource = {"original_type": kind, "algorithm": "AEAD_AES_256_GCM", "associated_data": kind,
                "nonce": "abcdefghijkl",
                "ciphertext": signing.encrypt_resource(APIV3, orjson.dumps(plain),
                                                       "abcdefghijkl", kind)}
    envelope: dict[str, Any] = {"id": "EV-1", "create_time": "2026-01-01T10:00:00+08:00",
                                "resource_type": "encrypt-resource", "event_type": event,
                                "summary": "支付成功", "resource": resource}
    envelope.update(over)
    return orjson.dumps(envelope)


def _note(body: bytes) -> Any:
    envelope, resource = tf.open_callback(body, APIV3)
    return tf.map_notification(envelope, resource, MCHID, APPID)


def test_payment_callback() -> None:
    note = _note(_callback(_txn()))
    assert (note.order_id, note.fact, note.channel_trade_no, note.amount, note.currency,
            note.notify_id, note.kind) == ("o-1", Fact.PAID, "4200001", 1200, "CNY", "EV-1",
                                           NotificationKind.PAYMENT)


def test_refund_callback() -> None:
    plain = {"mchid": MCHID, "out_trade_no": "o-1", "transaction_id": "4200001",
             "out_refund_no": "rf-1", "refund_id": "50300", "refund_status": "SUCCESS",
             "amount": {"total": 1200, "refund": 300, "payer_total": 1200, "payer_refund": 300}}
    note = _note(_callback(plain, "REFUND.SUCCESS"))
    assert (note.kind, note.refund_id, note.refund_status, note.refund_amount, note.amount,
            note.fact, note.raw_status) == (NotificationKind.REFUND, "rf-1",
                                            RefundStatus.SUCCEEDED, 300, 1200, Fact.PAID,
                                            "SUCCESS")
    closed = _note(_callback({**plain, "refund_status": "CLOSED"}, "REFUND.CLOSED"))
    assert closed.refund_status is RefundStatus.FAILED


@pytest.mark.parametrize("body", [
    _callback(_txn(mchid="1900000000")), _callback(_txn(appid="wx_other")),
    _callback(_txn(), "PROFITSHARING.SUCCESS"), _callback(_txn(), resource_type="plain"),
    _callback(_txn(), id=""), _callback(_txn(out_trade_no="")),
    _callback({"mchid": MCHID, "out_trade_no": "o-1", "refund_status": "SUCCESS"},
              "REFUND.SUCCESS"),
    b"not json", b"[1]",
])
def test_untrustworthy_callbacks(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        _note(body)


def test_callback_with_another_algorithm_or_key_is_refused() -> None:
    envelope = orjson.loads(_callback(_txn()))
    envelope["resource"]["algorithm"] = "AEAD_SM4_GCM"
    with pytest.raises(ProtocolError):
        _note(orjson.dumps(envelope))
    with pytest.raises(ProtocolError):
        tf.open_callback(_callback(_txn()), "y" * 32)


# ---- trade bill -------------------------------------------------------------------------------

def test_tradebill_ticket() -> None:
    ticket = bill.map_tradebill(Answer(200, {"hash_type": "SHA1", "hash_value": "79bb0f45",
                                           "download_url": "https://x/v3/billdownload/file"}))
    assert ticket is not None and ticket.hash_value == "79bb0f45"
    assert bill.map_tradebill(Answer(400, {"code": "NO_STATEMENT_EXIST"})) is None
    with pytest.raises(ProtocolError):
        bill.map_tradebill(Answer(200, {"hash_type": "MD5", "hash_value": "1",
                                        "download_url": "u"}))
    with pytest.raises(OutcomeUnknown):
        bill.map_tradebill(Answer(400, {"code": "PARAM_ERROR"}))
    bill.check_bill_hash(bill.BillTicket("SHA1", hashlib.sha1(b"bill").hexdigest().upper(), "u"),
                       b"bill")
    with pytest.raises(ProtocolError):
        bill.check_bill_hash(bill.BillTicket("SHA1", hashlib.sha1(b"bill").hexdigest(), "u"),
                             b"bil")


DOC_BILL = "\n".join([
    ",".join(bill.BILL_HEADER),
    "`2014-11-10 16:33:45,`wx2421b1c4370ec43b,`10000100,`0,`1000,`1001690740201411100005734289,"
    "`1415640626,`085e9858e3ba5186aafcbaed1,`MICROPAY,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,"
    "`0.00,`0.00,`,`,`被扫支付测试,`订单额外描述,`0.00000,`0.60%,`0.01,`0.00,`",
    "`2014-11-10 16:46:14,`wx2421b1c4370ec43b,`10000100,`0,`1000,`1002780740201411100005729794,"
    "`1415635270,`085e9858e90ca40c0b5aee463,`MICROPAY,`REFUND,`OTHERS,`CNY,`0.00,`0.00,"
    "`2003950740201411100000012345,`RF1415635270,`0.01,`0.00,`ORIGINAL,`SUCCESS,`被扫支付测试,"
    "`订单额外描述,`0.00000,`0.60%,`0.00,`0.01,`",
    ",".join(bill.SUMMARY_HEADER),
    "`2,`0.01,`0.01,`0.00,`0.00000,`0.01,`0.01",
]) + "\n"


def test_parse_a_bill_in_the_documented_layout() -> None:
    st_ = bill.parse_tradebill("\ufeff" + DOC_BILL, date(2014, 11, 10))
    pay, ref = st_.lines
    assert (pay.kind, pay.order_id, pay.channel_trade_no, pay.amount, pay.fee, pay.raw_status) == (
        StatementKind.PAYMENT, "1415640626", "1001690740201411100005734289", 1, 0, "SUCCESS")
    assert pay.at == datetime(2014, 11, 10, 16, 33, 45, tzinfo=timezone(timedelta(hours=8)))
    assert (ref.kind, ref.refund_id, ref.channel_refund_no, ref.amount, ref.raw_status) == (
        StatementKind.REFUND, "RF1415635270", "2003950740201411100000012345", 1, "SUCCESS")
    assert (st_.payments_count, st_.payments_total, st_.refunds_total) == (1, 1, 1)


@pytest.mark.parametrize("mutate", [
    lambda b: b.replace("交易时间,", "时间,", 1),                 # not the ALL header
    lambda b: b.replace("`2,`0.01", "`3,`0.01"),                   # summary count
    lambda b: b.replace("`0.01,`0.01,`0.00,`0.00000", "`0.02,`0.01,`0.00,`0.00000"),
    lambda b: b.replace("`MICROPAY,`SUCCESS", "`MICROPAY,`WHAT"),  # unknown 交易状态
    lambda b: b.replace("`1415640626", "1415640626"),              # a field without backtick
    lambda b: b.replace("总交易单数", "合计"),                       # no summary
    lambda b: b.replace("`0.01,`0.00,`", "`0.0x,`0.00,`", 1),       # malformed amount
])
def test_malformed_bills_are_protocol_errors(mutate: Any) -> None:
    with pytest.raises(ProtocolError):
        bill.parse_tradebill(mutate(DOC_BILL), date(2014, 11, 10))


SANDBOX = WechatPaySandbox(SandboxConfig())
AT = datetime(2026, 3, 1, 1, 2, 3, tzinfo=timezone.utc)


@settings(max_examples=40, deadline=None)
@given(amounts=st.lists(st.integers(1, 10**9), min_size=1, max_size=6),
       refund_parts=st.lists(st.integers(1, 10**6), max_size=4),
       subject=st.text(max_size=12))
def test_sandbox_bills_parse_back_to_the_same_money(amounts: list[int], refund_parts: list[int],
                                                     subject: str) -> None:
    rows = []
    for i, amount in enumerate(amounts):
        trade = Trade(f"o{i}", amount, trade_no=f"42000{i}", status=TradeStatus.PAID,
                      subject=subject, payment_type="barcode", paid=AT)
        rows.append(StatementRow("payment", trade, None, AT))
        for j, part in enumerate(refund_parts):
            refund = Refund(f"r{i}-{j}", f"503{i}{j}", part, RefundState.SUCCESS, AT, AT)
            rows.append(StatementRow("refund", trade, refund, AT))
    parsed = bill.parse_tradebill(render_bill(SANDBOX, rows).decode(), AT.date())
    assert [(x.kind.value, x.order_id, x.amount) for x in parsed.lines] == [
        (r.kind, r.trade.out_trade_no, r.refund.amount if r.refund else r.trade.total_amount)
        for r in rows]
    assert (parsed.payments_count, parsed.payments_total, parsed.refunds_total) == (
        len(amounts), sum(amounts), len(amounts) * sum(refund_parts))
    assert all(x.fee == (x.amount * 6 + 500) // 1000 for x in parsed.lines
               if x.kind is StatementKind.PAYMENT)


@pytest.mark.parametrize("text,fen", [("0.00000", 0), ("0.00600", 1), ("0.00499", 0),
                                      ("1.23", 123), ("-0.00500", -1), ("12", 1200)])
def test_bill_fees_round_to_fen(text: str, fen: int) -> None:
    assert bill.fee_to_fen(text) == fen


@pytest.mark.parametrize("text", ["", "1.234567", "a.00", "1.2e3", "１.00", "--1"])
def test_malformed_bill_amounts(text: str) -> None:
    with pytest.raises(ProtocolError):
        bill.yuan_units(text)
