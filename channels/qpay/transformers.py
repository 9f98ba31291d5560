"""Pure QQ Wallet (QPay) request builders and answer mappers; `nonce` and times are passed in.

Amounts cross the API as integer fen strings (`total_fee`, `refund_fee`); the bill states yuan.
Both are converted only here, with integer arithmetic.

What an answer proves about the money (QPay answers return_code, then result_code + err_code):
  return_code FAIL (the gateway refused before processing; unsigned)        -> OutcomeUnknown
  micropay  result SUCCESS, trade_state SUCCESS (or absent)                 -> Fact.PAID
            err_code USERPAYING (the payer is confirming)                   -> Fact.WAITING
            err_code in MICROPAY_DECLINES (balance, expired/invalid code...) -> Fact.DECLINED
            err_code ORDERCLOSED / ORDERREVERSED (the trade number is fenced) -> Fact.CLOSED
            SYSTEMERROR, BANKERROR, ORDERPAID (already paid!), anything else -> OutcomeUnknown
  query     trade_state via TRADE_STATE_FACTS; err_code ORDERNOTEXIST       -> exists=False
  refund    accepted (result SUCCESS) is not refunded yet                   -> RefundStatus.PENDING
            err_code in REFUND_REFUSALS                                     -> RefundStatus.FAILED
            SYSTEMERROR, BIZERR_NEED_RETRY, anything else                    -> OutcomeUnknown
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Mapping

from channels.base import (ChannelError, ChannelResult, ChargeRequest, Notification,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus, Statement, StatementKind, StatementLine)
from channels.qpay import signing
from core.money import decimal_str_to_minor, minor_to_decimal_str
from core.states import Fact

CURRENCY = "CNY"
BEIJING = timezone(timedelta(hours=8))
TIME_FORMAT = "%Y%m%d%H%M%S"            # time_end and friends: yyyyMMddHHmmss, Beijing time
BILL_DATE_FORMAT = "%Y%m%d"
TRADE_TYPE_MICROPAY = "MICROPAY"
BODY_MAX_BYTES = 128                      # body: String(128)
CLIENT_IP_MAX_CHARS = 16                  # spbill_create_ip: String(16)
DEFAULT_CLIENT_IP = "127.0.0.1"
REFUND_COUNT_MAX = 100                    # refunds one refund-query answer may list

PATH_MICROPAY = "/cgi-bin/pay/qpay_micro_pay.cgi"
PATH_QUERY = "/cgi-bin/pay/qpay_order_query.cgi"
PATH_CLOSE = "/cgi-bin/pay/qpay_close_order.cgi"
PATH_REVERSE = "/cgi-bin/pay/qpay_reverse.cgi"          # api.qpay.qq.com, client certificate
PATH_REFUND = "/cgi-bin/pay/qpay_refund.cgi"            # api.qpay.qq.com, client certificate
PATH_REFUND_QUERY = "/cgi-bin/pay/qpay_refund_query.cgi"
PATH_STATEMENT = "/cgi-bin/sp_download/qpay_mch_statement_down.cgi"

SUCCESS = "SUCCESS"
FAIL = "FAIL"
ERR_USERPAYING = "USERPAYING"
ERR_ORDERPAID = "ORDERPAID"
ERR_ORDERCLOSED = "ORDERCLOSED"
ERR_ORDERREVERSED = "ORDERREVERSED"
ERR_ORDERNOTEXIST = "ORDERNOTEXIST"
ERR_REFUNDNOTEXIST = "REFUNDNOTEXIST"
ERR_SYSTEMERROR = "SYSTEMERROR"

# micropay err_codes that prove nothing was charged (the payer's side refused).
MICROPAY_DECLINES = frozenset({
    "NOTENOUGH", "AUTHCODEEXPIRE", "AUTH_CODE_INVALID", "AUTH_CODE_ERROR", "NOTSUPORTCARD",
    "BUYER_MISMATCH", "NOAUTH", "PARAM_ERROR", "LACK_PARAMS", "OUT_TRADE_NO_USED",
    "TRADE_ERROR", "PAYERROR",
})
MICROPAY_FENCED = frozenset({ERR_ORDERCLOSED, ERR_ORDERREVERSED})
# refund err_codes that prove the refund was refused (no money moved).
REFUND_REFUSALS = frozenset({
    "INVALID_REQUEST", "INVALID_REQ_TOO_MUCH", "NOTENOUGH", "TRADE_OVERDUE", "ORDERNOTEXIST",
    "USER_ACCOUNT_ABNORMAL", "PARAM_ERROR", "INVALID_TRANSACTIONID", "ERROR", "NOAUTH",
})

TRADE_STATE_FACTS: dict[str, Fact] = {
    "SUCCESS": Fact.PAID,
    "REFUND": Fact.PAID,          # paid, then (partly or wholly) refunded
    "NOTPAY": Fact.WAITING,
    "USERPAYING": Fact.WAITING,
    "CLOSED": Fact.CLOSED,
    "REVOKED": Fact.CLOSED,       # reversed (撤销): closed, any money given back
    "PAYERROR": Fact.DECLINED,
}
REFUND_STATES: dict[str, RefundStatus] = {
    "SUCCESS": RefundStatus.SUCCEEDED,
    "PROCESSING": RefundStatus.PENDING,
    "NOTSURE": RefundStatus.PENDING,     # to be re-submitted with the same out_refund_no
    "CHANGE": RefundStatus.PENDING,      # the original route failed; money is on its way
    "FAIL": RefundStatus.FAILED,
}


class BillRefused(ChannelError):
    """The bill download answered an error instead of a file (no bill yet, bad date...)."""
    code = "channel_bill_refused"


@dataclass(frozen=True)
class Merchant:
    mch_id: str
    appid: str = ""


# ---- amounts and time -----------------------------------------------------------------------

def fen(text: object) -> int:
    """"1234" -> 1234; ProtocolError for anything that is not a plain non-negative integer."""
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 15:
        raise ProtocolError("qpay amount is not an integer in fen")
    return int(text)


def fen_to_yuan(amount: int) -> str:
    assert isinstance(amount, int) and amount >= 0, amount
    return minor_to_decimal_str(amount, CURRENCY)


def yuan_to_fen(text: str) -> int:
    try:
        return decimal_str_to_minor(text, CURRENCY)
    except ValueError:
        raise ProtocolError("qpay bill amount is malformed") from None


def qpay_time(at: datetime) -> str:
    assert at.tzinfo is not None, "times must be timezone-aware"
    return at.astimezone(BEIJING).strftime(TIME_FORMAT)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


# ---- requests -------------------------------------------------------------------------------

def common(merchant: Merchant, nonce: str) -> dict[str, str]:
    assert 0 < len(nonce) <= 32, "nonce_str: at most 32 characters"
    params = {"mch_id": merchant.mch_id, "nonce_str": nonce}
    if merchant.appid:
        params["appid"] = merchant.appid
    return params


def micropay_params(merchant: Merchant, req: ChargeRequest, nonce: str, *,
                    device_info: str, notify_url: str) -> dict[str, str]:
    """Unsigned qpay_micro_pay.cgi fields for one barcode charge."""
    assert req.currency == CURRENCY and req.payment_type == "barcode", (req.currency,
                                                                       req.payment_type)
    assert req.amount > 0, req.amount
    ip = req.client_ip if 0 < len(req.client_ip) <= CLIENT_IP_MAX_CHARS else DEFAULT_CLIENT_IP
    params = common(merchant, nonce) | {
        "out_trade_no": req.order_id,
        "body": _truncate_utf8(req.subject, BODY_MAX_BYTES),
        "fee_type": CURRENCY,
        "total_fee": str(req.amount),
        "spbill_create_ip": ip,
        "trade_type": TRADE_TYPE_MICROPAY,
        "auth_code": req.auth_code,
        "device_info": device_info,
    }
    if req.notify_url or notify_url:
        params["notify_url"] = req.notify_url or notify_url
    return params


def order_params(merchant: Merchant, order_id: str, nonce: str) -> dict[str, str]:
    """qpay_order_query.cgi and qpay_close_order.cgi: the trade by out_trade_no."""
    return common(merchant, nonce) | {"out_trade_no": order_id}


def reverse_params(merchant: Merchant, order_id: str, nonce: str, *, op_user_id: str,
                   op_passwd_md5: str) -> dict[str, str]:
    return common(merchant, nonce) | {"out_trade_no": order_id, "op_user_id": op_user_id,
                                      "op_user_passwd": op_passwd_md5}


def refund_params(merchant: Merchant, req: RefundRequest, nonce: str, *, op_user_id: str,
                  op_passwd_md5: str) -> dict[str, str]:
    assert req.currency == CURRENCY and req.amount > 0, (req.currency, req.amount)
    params = common(merchant, nonce) | {
        "out_trade_no": req.order_id, "out_refund_no": req.refund_id,
        "refund_fee": str(req.amount), "op_user_id": op_user_id, "op_user_passwd": op_passwd_md5,
    }
    if req.channel_trade_no:
        params["transaction_id"] = req.channel_trade_no
    return params


def refund_query_params(merchant: Merchant, order_id: str, refund_id: str,
                        nonce: str) -> dict[str, str]:
    return common(merchant, nonce) | {"out_refund_no": refund_id, "out_trade_no": order_id}


def statement_params(merchant: Merchant, day: date, nonce: str) -> dict[str, str]:
    return common(merchant, nonce) | {"bill_date": day.strftime(BILL_DATE_FORMAT),
                                      "bill_type": "ALL"}


# ---- answers --------------------------------------------------------------------------------

def _accepted(fields: Mapping[str, str], merchant: Merchant, what: str) -> None:
    """return_code SUCCESS for our merchant, or the right error."""
    if fields.get("return_code") != SUCCESS:
        raise OutcomeUnknown(f"{what}: gateway refused the request "
                             f"(return_code={fields.get('return_code')!r})")
    if fields.get("mch_id", merchant.mch_id) != merchant.mch_id:
        raise ProtocolError(f"{what}: answer for another mch_id")
    if fields.get("result_code") not in (SUCCESS, FAIL):
        raise ProtocolError(f"{what}: answer without result_code")


def _check_order(fields: Mapping[str, str], order_id: str) -> None:
    got = fields.get("out_trade_no")
    if got and got != order_id:
        raise ProtocolError("qpay answered for another out_trade_no")


def _code(fields: Mapping[str, str]) -> str:
    return fields.get("err_code") or fields.get("result_code") or ""


def _refusal(fact: Fact, fields: Mapping[str, str]) -> ChannelResult:
    return ChannelResult(fact, fields.get("transaction_id", ""), raw_status=_code(fields),
                         failure_code=_code(fields),
                         failure_message=fields.get("err_code_des", ""))


def _paid(fields: Mapping[str, str], order_id: str, raw_status: str) -> ChannelResult:
    _check_order(fields, order_id)
    trade_no = fields.get("transaction_id", "")
    if not trade_no:
        raise ProtocolError("qpay paid answer without transaction_id")
    if fields.get("fee_type", CURRENCY) != CURRENCY:
        raise ProtocolError("qpay paid answer in another currency")
    return ChannelResult(Fact.PAID, trade_no, fen(fields.get("total_fee")), CURRENCY, raw_status)


def _by_state(fields: Mapping[str, str], order_id: str, state: str) -> ChannelResult:
    fact = TRADE_STATE_FACTS.get(state)
    if fact is None:
        raise ProtocolError("qpay: unknown trade_state")
    if fact is Fact.PAID:
        return _paid(fields, order_id, state)
    _check_order(fields, order_id)
    return ChannelResult(fact, fields.get("transaction_id", ""), raw_status=state)


def map_micropay(fields: Mapping[str, str], merchant: Merchant, order_id: str) -> ChannelResult:
    _accepted(fields, merchant, "qpay_micro_pay")
    if fields["result_code"] == SUCCESS:
        return _by_state(fields, order_id, fields.get("trade_state") or SUCCESS)
    code = fields.get("err_code", "")
    if code == ERR_USERPAYING:
        _check_order(fields, order_id)
        return ChannelResult(Fact.WAITING, fields.get("transaction_id", ""), raw_status=code)
    if code in MICROPAY_FENCED:
        return _refusal(Fact.CLOSED, fields)
    if code in MICROPAY_DECLINES:
        return _refusal(Fact.DECLINED, fields)
    raise OutcomeUnknown(f"qpay_micro_pay answered err_code={code!r}")


def map_query(fields: Mapping[str, str], merchant: Merchant, order_id: str) -> ChannelResult:
    _accepted(fields, merchant, "qpay_order_query")
    if fields["result_code"] == SUCCESS:
        return _by_state(fields, order_id, fields.get("trade_state", ""))
    if fields.get("err_code") == ERR_ORDERNOTEXIST:
        return ChannelResult(Fact.WAITING, raw_status=ERR_ORDERNOTEXIST, exists=False)
    raise OutcomeUnknown(f"qpay_order_query answered err_code={fields.get('err_code')!r}")


def map_close(fields: Mapping[str, str], merchant: Merchant) -> ChannelResult:
    """The close answer. Fact.PAID (ORDERPAID) and exists=False (ORDERNOTEXIST) tell the
    connector to reverse instead; anything final is Fact.CLOSED with action "close"."""
    _accepted(fields, merchant, "qpay_close_order")
    code = fields.get("err_code", "")
    if fields["result_code"] == SUCCESS or code in MICROPAY_FENCED:
        return ChannelResult(Fact.CLOSED, raw_status=code or "CLOSED", action="close")
    if code == ERR_ORDERPAID:
        return ChannelResult(Fact.PAID, raw_status=code)
    if code == ERR_ORDERNOTEXIST:
        return ChannelResult(Fact.WAITING, raw_status=code, exists=False)
    raise OutcomeUnknown(f"qpay_close_order answered err_code={code!r}")


def map_reverse(fields: Mapping[str, str], merchant: Merchant, action: str) -> ChannelResult:
    """Reverse (撤销): closed for good; `action` says whether money was known to be taken."""
    _accepted(fields, merchant, "qpay_reverse")
    if fields["result_code"] == SUCCESS and fields.get("recall", "N") != "Y":
        return ChannelResult(Fact.CLOSED, raw_status="REVOKED", action=action)
    raise OutcomeUnknown(f"qpay_reverse answered err_code={fields.get('err_code')!r}, "
                         f"recall={fields.get('recall')!r}")


def map_refund(fields: Mapping[str, str], merchant: Merchant, req: RefundRequest) -> RefundResult:
    _accepted(fields, merchant, "qpay_refund")
    if fields["result_code"] == SUCCESS:
        _check_order(fields, req.order_id)
        if fields.get("out_refund_no", req.refund_id) != req.refund_id:
            raise ProtocolError("qpay_refund answered for another out_refund_no")
        amount = fen(fields["refund_fee"]) if fields.get("refund_fee") else None
        return RefundResult(RefundStatus.PENDING, req.refund_id, fields.get("refund_id", ""),
                            amount, CURRENCY, raw_status="ACCEPTED")
    code = fields.get("err_code", "")
    if code in REFUND_REFUSALS:
        return RefundResult(RefundStatus.FAILED, req.refund_id, raw_status=code,
                            failure_code=code, failure_message=fields.get("err_code_des", ""))
    raise OutcomeUnknown(f"qpay_refund answered err_code={code!r}")


def map_refund_query(fields: Mapping[str, str], merchant: Merchant,
                     refund_id: str) -> RefundResult:
    _accepted(fields, merchant, "qpay_refund_query")
    if fields["result_code"] != SUCCESS:
        code = fields.get("err_code", "")
        if code in (ERR_REFUNDNOTEXIST, ERR_ORDERNOTEXIST):
            return RefundResult(RefundStatus.FAILED, refund_id, raw_status=code, exists=False)
        raise OutcomeUnknown(f"qpay_refund_query answered err_code={code!r}")
    try:
        count = int(fields.get("refund_count", "0"))
    except ValueError:
        raise ProtocolError("qpay_refund_query: bad refund_count") from None
    if not 0 <= count <= REFUND_COUNT_MAX:
        raise ProtocolError("qpay_refund_query: refund_count out of range")
    for n in range(count):
        if fields.get(f"out_refund_no_{n}") != refund_id:
            continue
        raw = fields.get(f"refund_status_{n}", "")
        status = REFUND_STATES.get(raw)
        if status is None:
            raise ProtocolError("qpay_refund_query: unknown refund_status")
        return RefundResult(status, refund_id, fields.get(f"refund_id_{n}", ""),
                            fen(fields.get(f"refund_fee_{n}")), CURRENCY, raw)
    return RefundResult(RefundStatus.FAILED, refund_id, raw_status="NOT_LISTED", exists=False)


# ---- notifications --------------------------------------------------------------------------

ACK_SUCCESS = b"<xml><return_code>SUCCESS</return_code></xml>"
ACK_FAIL = b"<xml><return_code>FAIL</return_code><return_msg>sign</return_msg></xml>"


def map_notification(body: bytes, merchant: Merchant, api_key: str) -> Notification:
    """A verified payment notification; ProtocolError for a bad signature or bad fields."""
    fields = signing.parse_xml(body)
    if not signing.verify(fields, api_key):
        raise ProtocolError("qpay notification signature does not verify")
    if fields.get("mch_id") != merchant.mch_id:
        raise ProtocolError("qpay notification for another mch_id")
    state = fields.get("trade_state", "")
    fact = TRADE_STATE_FACTS.get(state)
    order_id, trade_no = fields.get("out_trade_no", ""), fields.get("transaction_id", "")
    if fact is None or not order_id or not trade_no:
        raise ProtocolError("qpay notification lacks trade_state, out_trade_no or transaction_id")
    if fields.get("fee_type", CURRENCY) != CURRENCY:
        raise ProtocolError("qpay notification in another currency")
    amount = fen(fields["total_fee"]) if fields.get("total_fee") else None
    # QPay sends no notification id: the trade and its state identify a (repeated) callback.
    return Notification(order_id, fact, trade_no, amount, CURRENCY, f"{trade_no}:{state}", state)


# ---- the bill (交易账单) ------------------------------------------------------------------------

# Detail columns of an ALL bill, in the order QPay writes them (amount columns end in "(元)").
BILL_COLUMNS = (
    "交易时间", "商户号", "商户APPID", "子商户号", "子商户APPID", "用户标识", "设备号", "支付场景",
    "商户订单号", "QQ钱包订单号", "付款银行", "货币种类", "订单金额(元)", "商户优惠金额(元)",
    "商户应收金额(元)", "QQ钱包优惠金额(元)", "用户支付金额(元)", "交易状态", "退款提交时间",
    "商户退款订单号", "QQ钱包退款订单号", "退款金额(元)", "退还QQ钱包优惠金额(元)", "退款状态",
    "退款成功时间", "退款方式", "商品名称", "商户数据包", "手续费金额(元)", "费率",
)
SUMMARY_COLUMNS = (
    "交易总笔数", "订单总金额(元)", "商户优惠总金额(元)", "商户应收总金额(元)", "QQ钱包优惠总金额(元)",
    "用户支付总金额(元)", "退款总金额(元)", "退还QQ钱包优惠总金额(元)", "手续费总金额(元)",
)
BILL_PAID = frozenset({"支付成功", "SUCCESS"})
BILL_REFUND = frozenset({"转入退款", "REFUND"})
BILL_CURRENCIES = {"CNY": CURRENCY, "RMB": CURRENCY}
BILL_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M")
BILL_BODY_MAX_BYTES = 64 * 1024 * 1024
BILL_LINES_MAX = 2_000_000


def _cells(line: str) -> list[str]:
    """One bill line's fields: comma-separated, each possibly prefixed with a backtick."""
    return [cell.strip().removeprefix("`") for cell in line.split(",")]


def _bill_time(text: str) -> datetime:
    for fmt in BILL_TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=BEIJING)
        except ValueError:
            continue
    raise ProtocolError("qpay bill: malformed time")


def _optional_yuan(text: str) -> int:
    """Fee cells may say 暂无数据 (no data): that is 0."""
    try:
        return decimal_str_to_minor(text.lstrip("-"), CURRENCY)
    except ValueError:
        return 0


def _bill_line(row: dict[str, str]) -> StatementLine:
    state = row["交易状态"]
    currency = BILL_CURRENCIES.get(row["货币种类"])
    if currency is None:
        raise ProtocolError("qpay bill: unknown currency")
    at, fee = _bill_time(row["交易时间"]), _optional_yuan(row["手续费金额"])
    if state in BILL_PAID:
        return StatementLine(StatementKind.PAYMENT, row["商户订单号"], row["QQ钱包订单号"],
                             yuan_to_fen(row["订单金额"]), currency, at, fee=fee, raw_status=state)
    if state in BILL_REFUND:
        return StatementLine(StatementKind.REFUND, row["商户订单号"], row["QQ钱包订单号"],
                             yuan_to_fen(row["退款金额"]), currency, at,
                             refund_id=row["商户退款订单号"],
                             channel_refund_no=row["QQ钱包退款订单号"], fee=fee,
                             raw_status=f"{state}/{row['退款状态']}")
    raise ProtocolError("qpay bill: unknown 交易状态")


def _names(header: list[str]) -> list[str]:
    return [name.removesuffix("(元)") for name in header]


def parse_statement(body: bytes, day: date) -> Statement:
    """The day's ALL bill: header, detail rows, summary header, summary row."""
    if body.lstrip().startswith(b"<xml"):
        fields = signing.parse_xml(body.strip())
        raise BillRefused(f"qpay bill download refused: retcode={fields.get('retcode')!r} "
                          f"{fields.get('retmsg') or fields.get('return_msg') or ''}")
    if len(body) > BILL_BODY_MAX_BYTES:
        raise ProtocolError("qpay bill too large")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProtocolError("qpay bill is not utf-8") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 3 or len(lines) > BILL_LINES_MAX:
        raise ProtocolError("qpay bill has no header or summary")
    header = _names(_cells(lines[0]))
    summary_header = _names(_cells(lines[-2]))
    missing = {"交易时间", "商户订单号", "QQ钱包订单号", "货币种类", "订单金额", "交易状态",
               "商户退款订单号", "QQ钱包退款订单号", "退款金额", "退款状态", "手续费金额"} - set(header)
    if missing or summary_header[:1] != ["交易总笔数"]:
        raise ProtocolError("qpay bill: unexpected header")
    out: list[StatementLine] = []
    for line in lines[1:-2]:
        cells = _cells(line)
        if len(cells) != len(header):
            raise ProtocolError("qpay bill: a row has the wrong number of fields")
        out.append(_bill_line(dict(zip(header, cells))))
    summary = dict(zip(summary_header, _cells(lines[-1])))
    return _statement(day, out, summary)


def _statement(day: date, lines: list[StatementLine], summary: dict[str, str]) -> Statement:
    paid = [x for x in lines if x.kind is StatementKind.PAYMENT]
    refunded = [x for x in lines if x.kind is StatementKind.REFUND]
    try:
        rows = int(summary["交易总笔数"])
        paid_total = yuan_to_fen(summary["订单总金额"])
        refunded_total = yuan_to_fen(summary["退款总金额"])
    except (KeyError, ValueError):
        raise ProtocolError("qpay bill: malformed summary") from None
    if (rows, paid_total, refunded_total) != (len(lines), sum(x.amount for x in paid),
                                              sum(x.amount for x in refunded)):
        raise ProtocolError("qpay bill: summary does not match its rows")
    return Statement("qpay", day, tuple(lines), payments_count=len(paid),
                     payments_total=paid_total, refunds_total=refunded_total)


def render_statement(rows: list[dict[str, str]], summary: Mapping[str, str]) -> bytes:
    """A bill in QPay's layout from cells keyed by BILL_COLUMNS / SUMMARY_COLUMNS (the
    sandbox's side). Every detail cell gets the backtick prefix; commas in free text are
    replaced by full-width commas so a row keeps its field count."""
    def cell(value: str) -> str:
        return "`" + value.replace(",", "，").replace("\n", " ")
    out = [",".join(BILL_COLUMNS)]
    out.extend(",".join(cell(row.get(c, "")) for c in BILL_COLUMNS) for row in rows)
    out.append(",".join(SUMMARY_COLUMNS))
    out.append(",".join(summary.get(c, "0") for c in SUMMARY_COLUMNS))
    return ("\r\n".join(out) + "\r\n").encode("utf-8")
