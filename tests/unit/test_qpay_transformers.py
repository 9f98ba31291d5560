"""QPay transformers and connector logic: requests, every answer mapping, notifications, the bill,
the cancel ladder (close, then reverse) and the sandbox's bill and ack rule. No network."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, strategies as st

from channels.base import (ChargeRequest, OutcomeUnknown, ProtocolError, RefundRequest,
                           RefundStatus, StatementKind)
from channels.qpay import signing, transformers as tf
from channels.qpay.connector import QPayConfig, QPayConnector
from channels.sandbox.engine import SandboxConfig
from channels.sandbox.qpay import QPaySandbox, bill, qpay_ack
from core.settings import load_settings
from core.states import Fact

KEY = "paycellSandboxQPayKey0123456789ab"
M = tf.Merchant("1900000109")
PAID_AT = datetime(2025, 1, 1, 16, 30, 5, tzinfo=timezone.utc)


def _charge(subject: str = "游戏币", client_ip: str = "") -> ChargeRequest:
    return ChargeRequest("ord-1", 1234, "CNY", subject, "barcode",
                         auth_code="910123456789012345", client_ip=client_ip)


def _answer(result: str = "SUCCESS", **fields: str) -> dict[str, str]:
    out = {"return_code": "SUCCESS", "mch_id": M.mch_id, "result_code": result, **fields}
    return signing.parse_xml(signing.to_xml(signing.sign_params(out, KEY)))


def _paid(**over: str) -> dict[str, str]:
    fields = {"trade_state": "SUCCESS", "transaction_id": "1000120250101",
              "out_trade_no": "ord-1", "total_fee": "1234", "fee_type": "CNY", **over}
    return _answer(**fields)


def _failed(code: str, **fields: str) -> dict[str, str]:
    return _answer("FAIL", err_code=code, err_code_des="说明", **fields)


# ---- amounts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["", "-1", "1.5", "１２", "1e3", None, 12, "9" * 16])
def test_fen_refuses_anything_but_plain_digits(bad: object) -> None:
    with pytest.raises(ProtocolError):
        tf.fen(bad)


@given(st.integers(0, 10**12))
def test_yuan_round_trip(amount: int) -> None:
    assert tf.yuan_to_fen(tf.fen_to_yuan(amount)) == amount


def test_qpay_time_is_beijing() -> None:
    assert tf.qpay_time(PAID_AT) == "20250102003005"


# ---- requests ---------------------------------------------------------------------------------

def test_micropay_params() -> None:
    params = tf.micropay_params(tf.Merchant("m1", "app9"), _charge(client_ip="10.1.2.3"), "n1",
                                device_info="dev", notify_url="http://n/qpay")
    assert params == {"mch_id": "m1", "appid": "app9", "nonce_str": "n1", "out_trade_no": "ord-1",
                      "body": "游戏币", "fee_type": "CNY", "total_fee": "1234",
                      "spbill_create_ip": "10.1.2.3", "trade_type": "MICROPAY",
                      "auth_code": "910123456789012345", "device_info": "dev",
                      "notify_url": "http://n/qpay"}


def test_micropay_body_is_cut_on_a_utf8_boundary_and_ip_defaults() -> None:
    params = tf.micropay_params(M, _charge("币" * 60, client_ip="2001:db8::1:2:3:4:5"), "n",
                                device_info="d", notify_url="")
    assert params["body"] == "币" * 42 and len(params["body"].encode()) == 126
    assert params["spbill_create_ip"] == "127.0.0.1" and "notify_url" not in params


def test_refund_and_query_params() -> None:
    rq = RefundRequest("ord-1", "rf-1", 300, 1234, "CNY", channel_trade_no="tx-1")
    assert tf.refund_params(M, rq, "n", op_user_id="op", op_passwd_md5="md5") == {
        "mch_id": M.mch_id, "nonce_str": "n", "out_trade_no": "ord-1", "out_refund_no": "rf-1",
        "refund_fee": "300", "op_user_id": "op", "op_user_passwd": "md5",
        "transaction_id": "tx-1"}
    assert tf.refund_query_params(M, "ord-1", "rf-1", "n")["out_refund_no"] == "rf-1"
    assert tf.statement_params(M, date(2025, 3, 4), "n") == {
        "mch_id": M.mch_id, "nonce_str": "n", "bill_date": "20250304", "bill_type": "ALL"}
    with pytest.raises(AssertionError):
        tf.common(M, "n" * 33)


# ---- micropay ---------------------------------------------------------------------------------

def test_micropay_paid() -> None:
    res = tf.map_micropay(_paid(), M, "ord-1")
    assert (res.fact, res.channel_trade_no, res.amount, res.currency) == (
        Fact.PAID, "1000120250101", 1234, "CNY")


def test_micropay_success_without_trade_state_is_paid_and_userpaying_state_waits() -> None:
    assert tf.map_micropay(_answer(transaction_id="t", total_fee="5"), M, "o").fact is Fact.PAID
    assert tf.map_micropay(_answer(trade_state="USERPAYING"), M, "o").fact is Fact.WAITING


def test_micropay_userpaying_error_waits() -> None:
    res = tf.map_micropay(_failed("USERPAYING"), M, "ord-1")
    assert (res.fact, res.raw_status) == (Fact.WAITING, "USERPAYING")


@pytest.mark.parametrize("code", sorted(tf.MICROPAY_DECLINES))
def test_micropay_declines(code: str) -> None:
    res = tf.map_micropay(_failed(code), M, "ord-1")
    assert (res.fact, res.failure_code, res.failure_message) == (Fact.DECLINED, code, "说明")


@pytest.mark.parametrize("code", ["ORDERCLOSED", "ORDERREVERSED"])
def test_micropay_on_a_fenced_trade_number_is_closed(code: str) -> None:
    assert tf.map_micropay(_failed(code), M, "ord-1").fact is Fact.CLOSED


@pytest.mark.parametrize("code", ["SYSTEMERROR", "BANKERROR", "ORDERPAID", "SOMETHING_NEW", ""])
def test_micropay_unknown_outcomes(code: str) -> None:
    with pytest.raises(OutcomeUnknown) as e:
        tf.map_micropay(_failed(code), M, "ord-1")
    assert not isinstance(e.value, ProtocolError)


def test_gateway_refusal_is_unknown_not_declined() -> None:
    with pytest.raises(OutcomeUnknown):
        tf.map_micropay({"return_code": "FAIL", "return_msg": "签名错误"}, M, "ord-1")


@pytest.mark.parametrize("fields", [
    _paid(transaction_id=""), _paid(out_trade_no="ord-2"), _paid(total_fee="12.34"),
    _paid(fee_type="USD"), _paid(trade_state="WHATEVER"), _paid(mch_id="999"),
    _answer("MAYBE"),
])
def test_micropay_malformed_answers(fields: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_micropay(fields, M, "ord-1")


# ---- query, close, reverse --------------------------------------------------------------------

@pytest.mark.parametrize("state, fact", sorted(tf.TRADE_STATE_FACTS.items()))
def test_query_states(state: str, fact: Fact) -> None:
    res = tf.map_query(_paid(trade_state=state), M, "ord-1")
    assert (res.fact, res.raw_status, res.exists) == (fact, state, True)
    if fact is Fact.PAID:
        assert res.amount == 1234


def test_query_of_an_unknown_trade() -> None:
    res = tf.map_query(_failed("ORDERNOTEXIST"), M, "ord-1")
    assert (res.exists, res.fact) == (False, Fact.WAITING)
    with pytest.raises(OutcomeUnknown):
        tf.map_query(_failed("SYSTEMERROR"), M, "ord-1")


def test_close_answers() -> None:
    closed = tf.map_close(_answer(), M)
    assert (closed.fact, closed.action) == (Fact.CLOSED, "close")
    assert tf.map_close(_failed("ORDERCLOSED"), M).fact is Fact.CLOSED
    assert tf.map_close(_failed("ORDERPAID"), M).fact is Fact.PAID
    assert tf.map_close(_failed("ORDERNOTEXIST"), M).exists is False
    with pytest.raises(OutcomeUnknown):
        tf.map_close(_failed("SYSTEMERROR"), M)


def test_reverse_answers() -> None:
    res = tf.map_reverse(_answer(recall="N"), M, "refund")
    assert (res.fact, res.action, res.raw_status) == (Fact.CLOSED, "refund", "REVOKED")
    for fields in (_answer(recall="Y"), _failed("SYSTEMERROR", recall="Y")):
        with pytest.raises(OutcomeUnknown):
            tf.map_reverse(fields, M, "close")


# ---- refunds ----------------------------------------------------------------------------------

RQ = RefundRequest("ord-1", "rf-1", 300, 1234, "CNY")


def test_refund_accepted_is_pending() -> None:
    res = tf.map_refund(_answer(out_trade_no="ord-1", out_refund_no="rf-1", refund_id="r9",
                                refund_fee="300"), M, RQ)
    assert (res.status, res.refund_id, res.channel_refund_no, res.amount) == (
        RefundStatus.PENDING, "rf-1", "r9", 300)


@pytest.mark.parametrize("code", sorted(tf.REFUND_REFUSALS))
def test_refund_refusals_fail(code: str) -> None:
    res = tf.map_refund(_failed(code), M, RQ)
    assert (res.status, res.failure_code) == (RefundStatus.FAILED, code)


@pytest.mark.parametrize("code", ["SYSTEMERROR", "BIZERR_NEED_RETRY", "NEW_CODE"])
def test_refund_unknown_outcomes(code: str) -> None:
    with pytest.raises(OutcomeUnknown):
        tf.map_refund(_failed(code), M, RQ)


def test_refund_answer_for_another_refund_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        tf.map_refund(_answer(out_refund_no="rf-2"), M, RQ)


def _refunds(*rows: tuple[str, str, str]) -> dict[str, str]:
    fields = {"refund_count": str(len(rows))}
    for n, (no, status, fee) in enumerate(rows):
        fields |= {f"out_refund_no_{n}": no, f"refund_status_{n}": status,
                   f"refund_fee_{n}": fee, f"refund_id_{n}": f"r{n}"}
    return _answer(**fields)


@pytest.mark.parametrize("raw, status", sorted(tf.REFUND_STATES.items()))
def test_refund_query_statuses(raw: str, status: RefundStatus) -> None:
    res = tf.map_refund_query(_refunds(("rf-0", "SUCCESS", "1"), ("rf-1", raw, "300")), M, "rf-1")
    assert (res.status, res.amount, res.channel_refund_no, res.raw_status) == (
        status, 300, "r1", raw)


def test_refund_query_of_an_unknown_refund() -> None:
    assert tf.map_refund_query(_failed("REFUNDNOTEXIST"), M, "rf-1").exists is False
    assert tf.map_refund_query(_refunds(("rf-0", "SUCCESS", "1")), M, "rf-1").exists is False
    with pytest.raises(OutcomeUnknown):
        tf.map_refund_query(_failed("SYSTEMERROR"), M, "rf-1")


@pytest.mark.parametrize("fields", [
    _refunds(("rf-1", "MAYBE", "1")), _answer(refund_count="x"), _answer(refund_count="1000"),
    _refunds(("rf-1", "SUCCESS", "1.00")),
])
def test_refund_query_malformed(fields: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        tf.map_refund_query(fields, M, "rf-1")


# ---- notifications ----------------------------------------------------------------------------

def _notify(key: str = KEY, sign_type: str = signing.SIGN_MD5, **over: str) -> bytes:
    fields = {"mch_id": M.mch_id, "nonce_str": "n1", "trade_type": "MICROPAY",
              "trade_state": "SUCCESS", "fee_type": "CNY", "total_fee": "1234",
              "transaction_id": "tx-1", "out_trade_no": "ord-1", "time_end": "20250102003005",
              **over}
    return signing.to_xml(signing.sign_params(fields, key, sign_type))


@pytest.mark.parametrize("sign_type", sorted(signing.SIGN_TYPES))
def test_notification(sign_type: str) -> None:
    note = tf.map_notification(_notify(sign_type=sign_type), M, KEY)
    assert (note.order_id, note.fact, note.channel_trade_no, note.amount, note.notify_id) == (
        "ord-1", Fact.PAID, "tx-1", 1234, "tx-1:SUCCESS")


@pytest.mark.parametrize("body", [
    _notify(key="forged"), _notify().replace(b"1234", b"1334"), _notify(mch_id="1"),
    _notify(trade_state="NEW"), _notify(out_trade_no=""), _notify(fee_type="USD"),
    b"<xml></xml>", b"success",
])
def test_untrustworthy_notifications(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        tf.map_notification(body, M, KEY)


def test_ack_bodies_parse_as_qpay_expects() -> None:
    assert qpay_ack(200, tf.ACK_SUCCESS) and not qpay_ack(200, tf.ACK_FAIL)
    assert not qpay_ack(500, tf.ACK_SUCCESS) and not qpay_ack(200, b"success")


# ---- the bill ---------------------------------------------------------------------------------

# A published QPay bill sample (the qpay gem's fake server): header, one refund row as QPay writes
# it (ids backticked, 暂无数据 placeholders, RMB), and the summary header; the summary values are
# made consistent with the one row (the sample's summary counts 9 rows that it does not list).
SAMPLE = (
    "交易时间,商户号,商户APPID,子商户号,子商户APPID,用户标识,设备号,支付场景,商户订单号,QQ钱包订单号,"
    "付款银行,货币种类,订单金额(元),商户优惠金额(元),商户应收金额(元),QQ钱包优惠金额(元),用户支付金额(元),"
    "交易状态,退款提交时间,商户退款订单号,QQ钱包退款订单号,退款金额(元),退还QQ钱包优惠金额(元),退款状态,"
    "退款成功时间,退款方式,商品名称,商户数据包,手续费金额(元),费率\n"
    "2016/7/23 14:14,1263732001,暂无数据,1263711801,暂无数据,暂无数据,暂无数据,暂无数据,"
    "`100540000011201607231001010451,`1263711801461607231903720235,财付通余额,RMB,0,暂无数据,暂无数据,"
    "0,,转入退款,2016/7/23 14:14,`REV_100540000011201607231001010451,"
    "`1121263711801607230535066910,0.01,0,退款成功,暂无数据,暂无数据,暂无数据,暂无数据,暂无数据,暂无数据\n"
    "交易总笔数,订单总金额(元),商户优惠总金额(元),商户应收总金额(元),QQ钱包优惠总金额(元),用户支付总金额(元),"
    "退款总金额(元),退还QQ钱包优惠总金额(元),手续费总金额(元)\n"
    "1,0,0,0,0,0,0.01,0,0").encode()


def test_published_sample_row_parses() -> None:
    st_ = tf.parse_statement(SAMPLE, date(2016, 7, 23))
    (line,) = st_.lines
    assert (line.kind, line.order_id, line.channel_trade_no, line.amount, line.currency) == (
        StatementKind.REFUND, "100540000011201607231001010451", "1263711801461607231903720235",
        1, "CNY")
    assert (line.refund_id, line.channel_refund_no) == (
        "REV_100540000011201607231001010451", "1121263711801607230535066910")
    assert line.at == datetime(2016, 7, 23, 14, 14, tzinfo=timezone(timedelta(hours=8)))
    assert (st_.payments_count, st_.payments_total, st_.refunds_total) == (0, 0, 1)


@pytest.mark.parametrize("bad", [
    SAMPLE.replace(b"\n1,0,0", b"\n9,0,0"), SAMPLE.replace(b",0.01,0,", b",0.02,0,", 1),
    SAMPLE.replace(b"RMB", b"USD"), SAMPLE.replace("转入退款".encode(), "其他".encode()),
    SAMPLE.replace(b"2016/7/23 14:14,1263732001", b"yesterday,1263732001"),
    SAMPLE.replace(b",`REV_", b",x,`REV_"), SAMPLE.split(b"\n", 1)[1], b"",
])
def test_malformed_bills(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        tf.parse_statement(bad, date(2016, 7, 23))


def test_bill_download_error_is_reported() -> None:
    body = b"<xml><return_code>FAIL</return_code><retcode>-1</retcode><retmsg>no</retmsg></xml>"
    with pytest.raises(tf.BillRefused):
        tf.parse_statement(body, date(2025, 1, 1))


async def test_sandbox_bill_round_trips_through_the_parser() -> None:
    sb = QPaySandbox(SandboxConfig())
    paid = sb.ledger.ensure("ord-1", 4000)
    sb.ledger.pay(paid, PAID_AT)
    paid.subject = "gems, 100"
    sb.ledger.refund(paid, "rf-1", 700, PAID_AT + timedelta(minutes=1))
    other = sb.ledger.ensure("ord-2", 1501)
    sb.ledger.pay(other, PAID_AT + timedelta(minutes=2))
    text = bill(sb, PAID_AT.date())
    assert text.count(b"\r\n") == 6 and "gems， 100".encode() in text
    st_ = tf.parse_statement(text, PAID_AT.date())
    got = sorted((x.kind.value, x.order_id, x.amount, x.refund_id, x.fee) for x in st_.lines)
    assert got == [("payment", "ord-1", 4000, "", 24), ("payment", "ord-2", 1501, "", 9),
                   ("refund", "ord-1", 700, "rf-1", 0)]
    assert (st_.payments_count, st_.payments_total, st_.refunds_total) == (2, 5501, 700)
    assert st_.lines[0].at == PAID_AT


# ---- connector: configuration and the cancel ladder -------------------------------------------

def test_config_from_settings() -> None:
    cfg = QPayConfig.from_settings(load_settings(env={}), "http://gw/notify")
    assert (cfg.mch_id, cfg.op_user_id, cfg.gateway_url, cfg.cert_gateway_url) == (
        "1900000109", "1900000109", "http://127.0.0.1:8091/qpay", "http://127.0.0.1:8091/qpay")
    assert "QPayKey" not in repr(cfg) and "Operator" not in repr(cfg)
    real = QPayConfig.from_settings(load_settings(env={}, overrides={"qpay": {
        "gateway_url": "https://qpay.qq.com/", "cert_gateway_url": "https://api.qpay.qq.com",
        "op_user_id": "op1"}}), "")
    assert (real.gateway_url, real.cert_gateway_url, real.op_user_id) == (
        "https://qpay.qq.com", "https://api.qpay.qq.com", "op1")


class Scripted(QPayConnector):
    """The connector with its HTTP exchange replaced by scripted answers."""

    def __init__(self, answers: dict[str, dict[str, str]]) -> None:
        super().__init__(QPayConfig.from_settings(load_settings(env={}), ""), None,
                         nonce=lambda: "n")
        self.answers, self.calls = answers, []   # type: ignore[var-annotated]

    async def _call(self, path: str, params: dict[str, str], cert: bool = False) -> Any:
        self.calls.append((path, cert, params))
        return self.answers[path]


async def test_cancel_closes_an_unpaid_trade() -> None:
    c = Scripted({tf.PATH_CLOSE: _answer()})
    res = await c.cancel("ord-1")
    assert (res.fact, res.action, [p for p, _, _ in c.calls]) == (Fact.CLOSED, "close",
                                                                    [tf.PATH_CLOSE])


async def test_cancel_reverses_a_paid_trade_with_the_operator() -> None:
    c = Scripted({tf.PATH_CLOSE: _failed("ORDERPAID"), tf.PATH_REVERSE: _answer(recall="N")})
    res = await c.cancel("ord-1")
    assert (res.fact, res.action) == (Fact.CLOSED, "refund")
    path, cert, params = c.calls[1]
    assert (path, cert, params["op_user_id"], params["op_user_passwd"]) == (
        tf.PATH_REVERSE, True, "1900000109", signing.operator_password("paycellSandboxOperator"))


async def test_cancel_of_an_unknown_trade_reverses_it_as_a_fence() -> None:
    c = Scripted({tf.PATH_CLOSE: _failed("ORDERNOTEXIST"), tf.PATH_REVERSE: _answer()})
    res = await c.cancel("ord-1")
    assert (res.fact, res.action, len(c.calls)) == (Fact.CLOSED, "close", 2)


async def test_refund_goes_to_the_certificate_host() -> None:
    c = Scripted({tf.PATH_REFUND: _answer(out_refund_no="rf-1", refund_fee="300")})
    assert (await c.refund(RQ)).status is RefundStatus.PENDING
    assert c.calls[0][:2] == (tf.PATH_REFUND, True)


# ---- the sandbox's request checks -------------------------------------------------------------

def _request(key: str = KEY, **over: str) -> dict[str, str]:
    fields = {"mch_id": M.mch_id, "nonce_str": "n1", "out_trade_no": "ord-1",
              "op_user_id": M.mch_id,
              "op_user_passwd": signing.operator_password("paycellSandboxOperator"), **over}
    return signing.sign_params(fields, key)


def _fields(resp: Any) -> dict[str, str]:
    return signing.parse_xml(resp.body)


@pytest.mark.parametrize("fields, msg", [
    (_request(mch_id="1"), "商户号不存在"), (_request(nonce_str="n" * 33), "nonce_str 错误"),
    (_request(key="wrong"), "签名错误"), ({**_request(), "sign_type": "SHA1"}, "签名类型错误"),
])
def test_sandbox_refuses_foreign_or_badly_signed_requests(fields: dict[str, str],
                                                          msg: str) -> None:
    sb = QPaySandbox(SandboxConfig())
    resp = sb.check(fields, ("out_trade_no",), operator=False)
    assert resp is not None and _fields(resp) == {"return_code": "FAIL", "return_msg": msg}


@pytest.mark.parametrize("fields, code", [
    (_request(), "LACK_PARAMS"), (_request(out_refund_no="rf", op_user_passwd="x"), "NOAUTH"),
    (_request(out_refund_no="rf", op_user_id="someone"), "NOAUTH"),
    (_request(out_refund_no="r" * 33), "PARAM_ERROR"),
])
def test_sandbox_business_refusals_are_signed(fields: dict[str, str], code: str) -> None:
    sb = QPaySandbox(SandboxConfig())
    resp = sb.check(fields, ("out_trade_no", "out_refund_no"), operator=True)
    assert resp is not None and isinstance(resp.body, bytes)
    answer = signing.open_signed(resp.body, KEY)
    assert (answer["result_code"], answer["err_code"]) == ("FAIL", code)


def test_sandbox_accepts_a_well_signed_hmac_request() -> None:
    sb = QPaySandbox(SandboxConfig())
    fields = signing.sign_params({"mch_id": M.mch_id, "nonce_str": "n", "out_trade_no": "o"},
                                 KEY, signing.SIGN_HMAC_SHA256)
    assert sb.check(fields, ("out_trade_no",), operator=False) is None
