"""The WeChat Pay v3 trade bill (GET /v3/bill/tradebill, then its download): the download ticket,
the file's SHA1 check, and the ALL bill parsed into a Statement. Pure functions, no I/O.

Bill amounts are yuan strings (fees with up to five decimals), converted here with integer
arithmetic only; the summary row's totals are checked exactly, in 10^-5 yuan.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime

from channels.base import OutcomeUnknown, ProtocolError, Statement, StatementKind, StatementLine
from channels.wechatpay.transformers import (BEIJING, CHANNEL, CODE_NO_STATEMENT, CURRENCY,
                                             Answer)
from core.money import decimal_str_to_minor

BILL_BYTES_MAX = 64 * 1024 * 1024
BILL_DECIMALS_MAX = 5                   # bill fees may carry 5 decimals ("0.00600")


# ---- amounts --------------------------------------------------------------------------------

def yuan_to_fen(text: str) -> int:
    """"12.34" -> 1234, "-0.01" -> -1 (bill fees); ProtocolError for anything else."""
    negative = text.startswith("-")
    try:
        value = decimal_str_to_minor(text[1:] if negative else text, CURRENCY)
    except ValueError:
        raise ProtocolError("wechatpay bill amount is malformed") from None
    return -value if negative else value


def yuan_units(text: str) -> int:
    """A bill amount in 10^-5 yuan, exact: the unit summary totals are checked in."""
    negative = text.startswith("-")
    whole, _, frac = (text[1:] if negative else text).partition(".")
    if (not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > BILL_DECIMALS_MAX
            or not whole.isascii() or not frac.isascii()):
        raise ProtocolError("wechatpay bill amount is malformed")
    value = int(whole) * 10**BILL_DECIMALS_MAX + int(frac.ljust(BILL_DECIMALS_MAX, "0"))
    return -value if negative else value


def fee_to_fen(text: str) -> int:
    """A bill fee in fen, rounded half away from zero ("0.00600" -> 1)."""
    units = yuan_units(text)
    step = 10**(BILL_DECIMALS_MAX - 2)
    rounded = (abs(units) + step // 2) // step
    return -rounded if units < 0 else rounded


# ---- the bill -------------------------------------------------------------------------------

BILL_HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
               "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
               "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,"
               "费率备注").split(",")
SUMMARY_HEADER = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额".split(",")
COL = {name: i for i, name in enumerate(BILL_HEADER)}
# The detail column each summary total (after 总交易单数) adds up, in summary order.
SUMMED_COLUMNS = ("应结订单金额", "退款金额", "充值券退款金额", "手续费", "订单金额", "申请退款金额")
BILL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class BillTicket:
    hash_type: str
    hash_value: str
    download_url: str


def map_tradebill(ans: Answer) -> BillTicket | None:
    """The download ticket, or None when WeChat has no bill for the day (NO_STATEMENT_EXIST)."""
    if ans.status == 200:
        p = ans.payload
        ticket = BillTicket(str(p.get("hash_type") or ""), str(p.get("hash_value") or ""),
                            str(p.get("download_url") or ""))
        if ticket.hash_type != "SHA1" or not ticket.hash_value or not ticket.download_url:
            raise ProtocolError("wechatpay tradebill answer lacks hash_type/hash_value/url")
        return ticket
    if ans.status == 400 and ans.code == CODE_NO_STATEMENT:
        return None
    raise OutcomeUnknown(f"wechatpay tradebill answered {ans.text}")


def check_bill_hash(ticket: BillTicket, raw_bill: bytes) -> None:
    """The SHA1 covers the bill as generated (after gunzip)."""
    if hashlib.sha1(raw_bill).hexdigest().lower() != ticket.hash_value.lower():
        raise ProtocolError("wechatpay bill does not match its SHA1")


def _fields(line: str, width: int) -> list[str]:
    parts = line.split(",")
    if len(parts) != width or not all(p.startswith("`") for p in parts):
        raise ProtocolError("wechatpay bill row has the wrong shape")
    return [p[1:] for p in parts]


def _bill_line(row: list[str]) -> StatementLine:
    at = datetime.strptime(row[COL["交易时间"]], BILL_TIME_FORMAT).replace(tzinfo=BEIJING)
    state, currency = row[COL["交易状态"]], row[COL["货币种类"]] or CURRENCY
    fee = fee_to_fen(row[COL["手续费"]])
    if state == "REFUND":
        return StatementLine(StatementKind.REFUND, row[COL["商户订单号"]], row[COL["微信订单号"]],
                             yuan_to_fen(row[COL["退款金额"]]), currency, at,
                             refund_id=row[COL["商户退款单号"]],
                             channel_refund_no=row[COL["微信退款单号"]], fee=fee,
                             raw_status=row[COL["退款状态"]] or state)
    if state not in ("SUCCESS", "REVOKED"):
        raise ProtocolError("wechatpay bill row of an unknown 交易状态")
    return StatementLine(StatementKind.PAYMENT, row[COL["商户订单号"]], row[COL["微信订单号"]],
                         yuan_to_fen(row[COL["订单金额"]]), currency, at, fee=fee,
                         raw_status=state)


def parse_tradebill(text: str, day: date) -> Statement:
    """The ALL trade bill (27 columns, every value prefixed with a backtick, amounts in yuan, a
    summary header and row at the end) as a Statement, its summary checked against its rows."""
    lines = [ln.rstrip("\r") for ln in text.lstrip("\ufeff").split("\n") if ln.strip()]
    if len(lines) < 3 or lines[0].split(",") != BILL_HEADER:
        raise ProtocolError("wechatpay bill does not start with the ALL header")
    try:
        split = lines.index(",".join(SUMMARY_HEADER))
    except ValueError:
        raise ProtocolError("wechatpay bill has no summary") from None
    if split != len(lines) - 2:
        raise ProtocolError("wechatpay bill summary is not at the end")
    rows = [_fields(ln, len(BILL_HEADER)) for ln in lines[1:split]]
    bill_lines = tuple(_bill_line(r) for r in rows)
    summary = _fields(lines[-1], len(SUMMARY_HEADER))
    try:
        rows_count = int(summary[0])
    except ValueError:
        raise ProtocolError("wechatpay bill summary count is malformed") from None
    column_sums = [sum(yuan_units(r[COL[name]]) for r in rows) for name in SUMMED_COLUMNS]
    if rows_count != len(rows) or [yuan_units(v) for v in summary[1:]] != column_sums:
        raise ProtocolError("wechatpay bill summary does not match its rows")
    payments = [x for x in bill_lines if x.kind is StatementKind.PAYMENT]
    refunds = [x for x in bill_lines if x.kind is StatementKind.REFUND]
    return Statement(CHANNEL, day, bill_lines, len(payments), sum(x.amount for x in payments),
                     sum(x.amount for x in refunds))
