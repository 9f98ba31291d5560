"""Pure UnionPay 5.1.0 request builders and answer mappers; times are passed in, no I/O.

The product is Token支付 (bizType 000902): an off-session consume of a card the payer bound
earlier, the token sent in ``tokenPayData={token=...&trId=...}``. Amounts are integer fen (分) in
``txnAmt``; currencies by ISO numeric code (156 CNY, 840 USD, 344 HKD).

What a back-end answer's respCode proves (UnionPay's demo: "00 交易已受理(不代表交易已成功)",
"03/04/05 后续需发起交易状态查询交易确定交易状态", "其他应答码为失败"):
  00, 03, 04, 05   accepted or unknown: the result is read with queryTrans (confirm_codes)
  12 重复交易       this orderId was used before: its trade's state is read with queryTrans
  DECLINE_CODES    refused, nothing taken                               -> DECLINED / FAILED
  anything else    (06 busy, 74/75 "扣款成功，销账…", unknown codes)      -> OutcomeUnknown
queryTrans: respCode 00 then origRespCode 00/A6 paid, 03/04/05 processing, any other failed;
respCode 34 查无此交易; anything else -> OutcomeUnknown.
"""
from __future__ import annotations

import base64
import binascii
import io
import zipfile
import zlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import Mapping

from channels import callbacks
from channels.base import (ChannelResult, ChargeRequest, Notification, NotificationKind,
                           OutcomeUnknown, ProtocolError, RefundRequest, RefundResult,
                           RefundStatus, Statement, StatementKind, StatementLine)
from channels.unionpay import signing
from channels.unionpay.ids import BEIJING, from_wire_id, txn_time
from core.states import Fact

VERSION = "5.1.0"
ENCODING = "UTF-8"
ACCESS_TYPE = "0"                 # merchant connected directly
CHANNEL_TYPE = "07"               # internet (PC); 08 mobile
BIZ_TOKEN = "000902"              # Token支付
BIZ_DEFAULT = "000000"            # file transfer, 冲正
ACC_TYPE_CARD = "01"
FILE_TYPE_ZM = "00"

TXN_QUERY, TXN_CONSUME, TXN_REFUND, TXN_CANCEL = "00", "01", "04", "31"
TXN_FILE, TXN_REVERSAL = "76", "99"

PATH_BACK = "/gateway/api/backTransReq.do"
PATH_QUERY = "/gateway/api/queryTrans.do"
PATH_FILE = "/gateway/api/fileTransRequest.do"

CURRENCY_CODES = {"CNY": "156", "USD": "840", "HKD": "344"}
CURRENCY_BY_CODE = {v: k for k, v in CURRENCY_CODES.items()}
SETTLEMENT_CURRENCY = "CNY"
AMOUNT_FEN_MAX = 999_999_999_999  # txnAmt is N1..12

CODE_OK = "00"
CODE_DEFECTIVE_SUCCESS = "A6"     # 有缺陷的成功: the money moved
CODE_DUPLICATE = "12"
CODE_NO_SUCH_TRADE = "34"
CODE_ALREADY_REVERSED = "45"      # 原交易已被成功退货或已被成功撤销
CODE_FILE_MISSING = "98"
SUCCESS_CODES = frozenset({CODE_OK, CODE_DEFECTIVE_SUCCESS})
PROCESSING_CODES = frozenset({"03", "04", "05"})
CONFIRM_CODES = frozenset({CODE_OK}) | PROCESSING_CODES
# Refusals that prove nothing was taken (平台接入接口规范 第5部分 附录, 应答码).
DECLINE_CODES = frozenset({
    "01", "10", "11", "13", "30", "31", "32", "33", "38", "39", "40",
    "60", "61", "62", "63", "64", "65", "66", "67", "68", "69", "71", "72", "73", "77", "78",
    "80", "81",
})
REFUND_FAIL_CODES = DECLINE_CODES | frozenset({"35", "36", CODE_ALREADY_REVERSED})

NOTIFY_BODY_MAX_BYTES = 32_768
BILL_BYTES_MAX = 64 * 1_048_576
ZM_FILE_MARK = "ZM_"
# ZM fields (全渠道平台接入接口规范 第3部分 文件接口, 6.1; the ACP SDK's parseZMFile widths),
# each followed by one separator byte; GBK text.
ZM_WIDTHS = (3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2, 6, 2, 4,
             32, 1, 21, 15, 1, 15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 32, 98)
ZM_TIME, ZM_AMOUNT, ZM_QUERY_ID, ZM_ORDER_ID, ZM_FEE = 4, 6, 9, 11, 15
ZM_TXN_TYPE, ZM_ORIG_QUERY_ID, ZM_MER_ID, ZM_RESERVED = 19, 26, 27, 34


@dataclass(frozen=True)
class Merchant:
    mer_id: str
    token_requestor_id: str       # trId of tokenPayData


# ---- requests -------------------------------------------------------------------------------

def _common(m: Merchant, txn_type: str, sub_type: str, biz: str, at: datetime) -> dict[str, str]:
    return {"version": VERSION, "encoding": ENCODING, "signMethod": signing.SIGN_METHOD_RSA,
            "txnType": txn_type, "txnSubType": sub_type, "bizType": biz,
            "accessType": ACCESS_TYPE, "merId": m.mer_id, "txnTime": txn_time(at)}


def fen(amount: int) -> str:
    assert isinstance(amount, int) and 0 < amount <= AMOUNT_FEN_MAX, amount
    return str(amount)


def currency_code(currency: str) -> str:
    try:
        return CURRENCY_CODES[currency]
    except KeyError:
        raise ValueError(f"unionpay cannot take {currency}") from None


def consume_params(m: Merchant, req: ChargeRequest, wire_id: str, at: datetime,
                   pay_timeout_at: datetime, back_url: str) -> dict[str, str]:
    """Token consume (txnType 01, txnSubType 01, bizType 000902) for one charge."""
    if not req.payment_token:
        raise ValueError("unionpay token consume needs the payer's token (payment_token)")
    if not back_url:
        raise ValueError("unionpay consume needs a backUrl (the notify URL)")
    params = _common(m, TXN_CONSUME, "01", BIZ_TOKEN, at)
    params.update({
        "channelType": CHANNEL_TYPE, "orderId": wire_id,
        "currencyCode": currency_code(req.currency),
        "txnAmt": fen(req.amount), "accType": ACC_TYPE_CARD, "backUrl": back_url,
        "payTimeout": txn_time(pay_timeout_at),
        "tokenPayData": f"{{token={req.payment_token}&trId={m.token_requestor_id}}}",
    })
    return params


def query_params(m: Merchant, wire_id: str, at: datetime) -> dict[str, str]:
    """queryTrans by the queried trade's own orderId and txnTime (`at`)."""
    params = _common(m, TXN_QUERY, "00", BIZ_TOKEN, at)
    params["orderId"] = wire_id
    return params


def refund_params(m: Merchant, req: RefundRequest, wire_refund_id: str, wire_order_id: str,
                  orig_query_id: str, at: datetime, back_url: str) -> dict[str, str]:
    """退货 (txnType 04): its own orderId, the payment's queryId as origQryId; reqReserved carries
    the payment's orderId back in the notification and the ZM file."""
    params = _common(m, TXN_REFUND, "00", BIZ_TOKEN, at)
    params.update({"channelType": CHANNEL_TYPE, "orderId": wire_refund_id,
                   "origQryId": orig_query_id, "txnAmt": fen(req.amount),
                   "currencyCode": currency_code(req.currency), "backUrl": back_url,
                   "reqReserved": wire_order_id})
    return params


def cancel_params(m: Merchant, wire_cancel_id: str, wire_order_id: str, orig_query_id: str,
                  amount: int, currency: str, at: datetime, back_url: str) -> dict[str, str]:
    """消费撤销 (txnType 31) of a paid consume, same day: the full amount back."""
    params = _common(m, TXN_CANCEL, "00", BIZ_TOKEN, at)
    params.update({"channelType": CHANNEL_TYPE, "orderId": wire_cancel_id,
                   "origQryId": orig_query_id, "txnAmt": fen(amount),
                   "currencyCode": currency_code(currency), "backUrl": back_url,
                   "reqReserved": wire_order_id})
    return params


def reversal_params(m: Merchant, wire_id: str, orig_at: datetime) -> dict[str, str]:
    """冲正 (txnType 99, txnSubType 01): void the consume orderId + txnTime, whatever came of it."""
    params = _common(m, TXN_REVERSAL, "01", BIZ_DEFAULT, orig_at)
    params.update({"channelType": CHANNEL_TYPE, "orderId": wire_id})
    return params


def file_params(m: Merchant, day: date, at: datetime) -> dict[str, str]:
    """fileTransRequest (txnType 76) for the ZM bill of clearing day `day` (settleDate MMDD)."""
    params = _common(m, TXN_FILE, "01", BIZ_DEFAULT, at)
    params.update({"settleDate": day.strftime("%m%d"), "fileType": FILE_TYPE_ZM})
    return params


# ---- answers --------------------------------------------------------------------------------

def _code(answer: Mapping[str, str], key: str = "respCode") -> str:
    return answer.get(key, "")


def _check(answer: Mapping[str, str], m: Merchant, wire_id: str) -> None:
    if answer.get("merId", m.mer_id) != m.mer_id:
        raise ProtocolError("unionpay answered for another merId")
    if answer.get("orderId", wire_id) != wire_id:
        raise ProtocolError("unionpay answered for another orderId")


def amount_of(answer: Mapping[str, str]) -> int:
    text = answer.get("txnAmt", "")
    if not text.isdigit() or len(text) > 12:
        raise ProtocolError("unionpay txnAmt is malformed")
    return int(text)


def currency_of(answer: Mapping[str, str]) -> str:
    currency = CURRENCY_BY_CODE.get(answer.get("currencyCode", CURRENCY_CODES["CNY"]))
    if currency is None:
        raise ProtocolError("unionpay currencyCode is not one paycell takes")
    return currency


def needs_query(answer: Mapping[str, str], m: Merchant, wire_id: str,
                decline: frozenset[str] = DECLINE_CODES) -> bool:
    """A back-end answer: True when its result must be read with queryTrans, False for a
    refusal that took nothing (in `decline`); OutcomeUnknown for anything else."""
    _check(answer, m, wire_id)
    code = _code(answer)
    if code in CONFIRM_CODES or code == CODE_DUPLICATE:
        return True
    if code in decline:
        return False
    raise OutcomeUnknown(f"unionpay answered respCode {code or '(none)'}")


def declined(answer: Mapping[str, str]) -> ChannelResult:
    return ChannelResult(Fact.DECLINED, raw_status=_code(answer), failure_code=_code(answer),
                         failure_message=answer.get("respMsg", ""))


def map_query(answer: Mapping[str, str], m: Merchant, wire_id: str) -> ChannelResult:
    """queryTrans of a consume: PAID / WAITING / CLOSED (failed, reversed), exists=False on 34."""
    _check(answer, m, wire_id)
    code = _code(answer)
    if code == CODE_NO_SUCH_TRADE:
        return ChannelResult(Fact.WAITING, raw_status=code, exists=False)
    if code != CODE_OK:
        raise OutcomeUnknown(f"unionpay queryTrans answered respCode {code or '(none)'}")
    orig = _code(answer, "origRespCode")
    query_id = answer.get("queryId", "")
    if orig in SUCCESS_CODES:
        if not query_id:
            raise ProtocolError("unionpay paid answer without queryId")
        return ChannelResult(Fact.PAID, query_id, amount_of(answer), currency_of(answer), orig)
    if orig in PROCESSING_CODES:
        return ChannelResult(Fact.WAITING, query_id, raw_status=orig)
    if not orig:
        raise ProtocolError("unionpay queryTrans answer without origRespCode")
    return ChannelResult(Fact.CLOSED, query_id, raw_status=orig, failure_code=orig,
                         failure_message=answer.get("origRespMsg", ""))


def charge_result(queried: ChannelResult, req: ChargeRequest, duplicate: bool) -> ChannelResult:
    """What a consume did, from the queryTrans that followed its answer."""
    if not queried.exists:
        raise OutcomeUnknown("unionpay accepted the consume but cannot find it yet")
    if queried.fact is Fact.PAID and (queried.amount, queried.currency) != (req.amount,
                                                                            req.currency):
        if duplicate:   # this orderId was paid with another amount: this request took nothing
            return ChannelResult(Fact.DECLINED, raw_status=CODE_DUPLICATE,
                                 failure_code=CODE_DUPLICATE, failure_message="重复交易")
        raise ProtocolError("unionpay paid another amount than the consume asked")
    if queried.fact is Fact.CLOSED:
        return ChannelResult(Fact.DECLINED, queried.channel_trade_no,
                             raw_status=queried.raw_status, failure_code=queried.failure_code,
                             failure_message=queried.failure_message)
    return queried


def map_refund_query(answer: Mapping[str, str], m: Merchant, wire_refund_id: str,
                     refund_id: str) -> RefundResult:
    _check(answer, m, wire_refund_id)
    code = _code(answer)
    if code == CODE_NO_SUCH_TRADE:
        return RefundResult(RefundStatus.PENDING, refund_id, raw_status=code, exists=False)
    if code != CODE_OK:
        raise OutcomeUnknown(f"unionpay queryTrans answered respCode {code or '(none)'}")
    if answer.get("txnType", TXN_REFUND) != TXN_REFUND:
        raise ProtocolError("unionpay: the refund's orderId names another kind of trade")
    orig = _code(answer, "origRespCode")
    query_id = answer.get("queryId", "")
    amount = amount_of(answer)
    currency = currency_of(answer)
    if orig in SUCCESS_CODES:
        return RefundResult(RefundStatus.SUCCEEDED, refund_id, query_id, amount, currency, orig)
    if orig in PROCESSING_CODES:
        return RefundResult(RefundStatus.PENDING, refund_id, query_id, amount, currency, orig)
    if not orig:
        raise ProtocolError("unionpay queryTrans answer without origRespCode")
    return RefundResult(RefundStatus.FAILED, refund_id, query_id, amount, currency, orig,
                        failure_code=orig, failure_message=answer.get("origRespMsg", ""))


def refund_failed(answer: Mapping[str, str], refund_id: str) -> RefundResult:
    return RefundResult(RefundStatus.FAILED, refund_id, raw_status=_code(answer),
                        failure_code=_code(answer), failure_message=answer.get("respMsg", ""))


def refund_result(queried: RefundResult, req: RefundRequest, duplicate: bool) -> RefundResult:
    """What a refund request did, from the queryTrans of its orderId that followed."""
    if not queried.exists:        # accepted, not visible yet
        return RefundResult(RefundStatus.PENDING, req.refund_id, raw_status="05")
    if queried.amount != req.amount:
        if duplicate:             # the refund number was used with another amount
            return RefundResult(RefundStatus.FAILED, req.refund_id, raw_status=CODE_DUPLICATE,
                                failure_code=CODE_DUPLICATE, failure_message="重复交易")
        raise ProtocolError("unionpay refunded another amount than asked")
    return queried


def map_cancel(answer: Mapping[str, str], m: Merchant, wire_cancel_id: str,
               paid: ChannelResult) -> ChannelResult:
    """消费撤销 of a paid trade: reversed (CLOSED, action refund) or, when UnionPay will not
    reverse it (next day, partly refunded...), the trade stays PAID (refund it instead)."""
    _check(answer, m, wire_cancel_id)
    code = _code(answer)
    if code in (CODE_OK, CODE_DUPLICATE, CODE_ALREADY_REVERSED):
        return ChannelResult(Fact.CLOSED, paid.channel_trade_no, paid.amount, paid.currency,
                             raw_status=code, action="refund")
    if code in REFUND_FAIL_CODES:
        return paid
    raise OutcomeUnknown(f"unionpay 消费撤销 answered respCode {code or '(none)'}")


def map_reversal(answer: Mapping[str, str], m: Merchant, wire_id: str) -> ChannelResult:
    """冲正 of a consume not known to be paid: the orderId is void from now on."""
    _check(answer, m, wire_id)
    code = _code(answer)
    if code in (CODE_OK, CODE_ALREADY_REVERSED):
        return ChannelResult(Fact.CLOSED, answer.get("queryId", ""), raw_status=code,
                             action="close")
    raise OutcomeUnknown(f"unionpay 冲正 answered respCode {code or '(none)'}")


# ---- notifications --------------------------------------------------------------------------

def parse_form(body: bytes) -> dict[str, str]:
    """A urlencoded utf-8 body as a dict; ProtocolError on repeats or bad bytes."""
    return callbacks.parse_form(body, NOTIFY_BODY_MAX_BYTES, "unionpay")


def _paycell_id(wire: str) -> str:
    try:
        return from_wire_id(wire)
    except ValueError:
        raise ProtocolError("unionpay orderId was not made by paycell") from None


def map_notification(form: Mapping[str, str], m: Merchant) -> Notification:
    """A verified (signing.open_signed) back notification: consume (01), refund (04) or
    consume cancel (31)."""
    if form.get("merId") != m.mer_id:
        raise ProtocolError("unionpay notification for another merId")
    code, txn_type = _code(form), form.get("txnType", "")
    query_id, wire_id = form.get("queryId", ""), form.get("orderId", "")
    if not query_id or not wire_id:
        raise ProtocolError("unionpay notification lacks queryId or orderId")
    notify_id = f"{txn_type}:{query_id}"
    amount, currency = amount_of(form), currency_of(form)
    if txn_type == TXN_CONSUME:
        if code in SUCCESS_CODES:
            fact = Fact.PAID
        elif code in DECLINE_CODES:
            fact = Fact.DECLINED
        else:
            raise ProtocolError("unionpay consume notification with an unknown respCode")
        return Notification(_paycell_id(wire_id), fact, query_id, amount, currency, notify_id,
                            code)
    if txn_type in (TXN_REFUND, TXN_CANCEL):
        if code in SUCCESS_CODES:
            status = RefundStatus.SUCCEEDED
        elif code in REFUND_FAIL_CODES:
            status = RefundStatus.FAILED
        else:
            raise ProtocolError("unionpay refund notification with an unknown respCode")
        refund_id = _paycell_id(wire_id) if txn_type == TXN_REFUND else wire_id
        return Notification(_paycell_id(form.get("reqReserved", "")), Fact.PAID,
                            form.get("origQryId", ""), None, currency, notify_id, code,
                            NotificationKind.REFUND, refund_id, status, amount)
    raise ProtocolError("unionpay notification of an unexpected txnType")


# ---- statement ------------------------------------------------------------------------------

def bill_zip(answer: Mapping[str, str]) -> bytes:
    """fileContent = Base64(deflate(zip)) (AcpService.deCodeFileContent), size-bounded."""
    try:
        packed = base64.b64decode(answer.get("fileContent", ""), validate=True)
        inflater = zlib.decompressobj()
        data = inflater.decompress(packed, BILL_BYTES_MAX)
    except (binascii.Error, ValueError, zlib.error):
        raise ProtocolError("unionpay fileContent is not base64 deflate") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise ProtocolError("unionpay bill too large or truncated")
    return data


def zm_text(zip_bytes: bytes) -> bytes:
    """The ZM (一般交易明细) file inside the bill zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
            names = [n for n in zf.namelist() if ZM_FILE_MARK in n and "ZME_" not in n]
            if len(names) != 1:
                raise ProtocolError("unionpay bill zip has no single ZM file")
            info = zf.getinfo(names[0])
            if info.file_size > BILL_BYTES_MAX:
                raise ProtocolError("unionpay ZM file too large")
            return zf.read(info)
    except (zipfile.BadZipFile, KeyError):
        raise ProtocolError("unionpay bill is not a zip") from None


def zm_fields(line: bytes) -> list[str]:
    """One fixed-width ZM record (GBK, one separator byte after each field), fields stripped."""
    out, pos = [], 0
    for width in ZM_WIDTHS:
        if pos + width > len(line):
            raise ProtocolError("unionpay ZM record too short")
        out.append(line[pos:pos + width].decode("gbk", errors="strict").strip())
        pos += width + 1
    return out


def _zm_time(text: str, day: date) -> datetime:
    """交易传输时间 MMDDhhmmss (Beijing) on or just before clearing day `day`."""
    try:
        at = datetime.strptime(f"{day.year}{text}", "%Y%m%d%H%M%S")
    except ValueError:
        raise ProtocolError("unionpay ZM time is malformed") from None
    if at.date() > day and (at.date() - day).days > 31:     # December rows of a January bill
        at = at.replace(year=day.year - 1)
    return at.replace(tzinfo=BEIJING)


def _zm_amount(text: str) -> int:
    digits = text[1:] if text[:1] in ("C", "D") else text
    if not digits.isdigit():
        raise ProtocolError("unionpay ZM amount is malformed")
    return int(digits)


def zm_line(fields: list[str], day: date, m: Merchant) -> StatementLine | None:
    txn_type = fields[ZM_TXN_TYPE]
    if fields[ZM_MER_ID] and fields[ZM_MER_ID] != m.mer_id:
        raise ProtocolError("unionpay ZM record of another merId")
    amount, at = _zm_amount(fields[ZM_AMOUNT]), _zm_time(fields[ZM_TIME], day)
    fee = _zm_amount(fields[ZM_FEE] or "0")
    if txn_type == TXN_CONSUME:
        return StatementLine(StatementKind.PAYMENT, _paycell_id(fields[ZM_ORDER_ID]),
                             fields[ZM_QUERY_ID], amount, SETTLEMENT_CURRENCY, at, fee=fee,
                             raw_status=txn_type)
    if txn_type in (TXN_REFUND, TXN_CANCEL):
        wire = fields[ZM_ORDER_ID]
        return StatementLine(StatementKind.REFUND, _paycell_id(fields[ZM_RESERVED]),
                             fields[ZM_ORIG_QUERY_ID], amount, SETTLEMENT_CURRENCY, at,
                             refund_id=_paycell_id(wire) if txn_type == TXN_REFUND else "",
                             channel_refund_no=fields[ZM_QUERY_ID], fee=fee,
                             raw_status=txn_type)
    return None                      # other kinds (冲正 ...) move no money of a paycell order


def parse_statement(answer: Mapping[str, str], day: date, m: Merchant,
                    channel: str = "unionpay") -> Statement:
    """The fileTransRequest answer's ZM file as a Statement; the ZM file has no summary row,
    so the totals are computed from its records."""
    lines = []
    for raw in zm_text(bill_zip(answer)).splitlines():
        if raw.strip():
            line = zm_line(zm_fields(raw), day, m)
            if line is not None:
                lines.append(line)
    payments = [x for x in lines if x.kind is StatementKind.PAYMENT]
    return Statement(channel, day, tuple(lines), payments_count=len(payments),
                     payments_total=sum(x.amount for x in payments),
                     refunds_total=sum(x.amount for x in lines
                                       if x.kind is StatementKind.REFUND))
