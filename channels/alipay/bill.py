"""Alipay's daily trade bill (业务明细), parsed into a Statement; pure, nothing here does I/O.

alipay.data.dataservice.bill.downloadurl.query (bill_type "trade") answers a bill_download_url;
a GET of it (unsigned) returns a ZIP holding two GBK-encoded CSV files:

  <account>_<yyyyMMdd>_业务明细.csv        one row per payment (业务类型 交易) and refund (退款)
  <account>_<yyyyMMdd>_业务明细(汇总).csv  the summary per store (not needed here)

The detail file starts with '#' comment lines (title, account, date range, a dashed
"业务明细列表" line), then the column header, the rows, and '#' footer lines:
``#交易合计：N笔，商家实收共X元，商家优惠共Y元`` and ``#退款合计：M笔，商家实收退款共-Z元，...``.
Ids carry a trailing tab (so spreadsheets keep them as text); refund rows have negative amounts;
a refund row's 退款批次号/请求号 is the refund's out_request_no.

Columns are found by name, so Alipay adding or moving columns does not break the parser. Line
amounts come from 订单金额（元） (the order's amount, what paycell charged and refunds), fees from
服务费（元）. The footer's counts and 商家实收 totals are checked against the rows' 商家实收 sums;
any mismatch, a missing footer or an unreadable row is a ProtocolError. The Statement's totals
are the footer's: they equal the sums of line amounts whenever nothing was discounted
(商家优惠 / 红包: paycell sends no marketing), which the check enforces for the count.
Rows of other business types (none expected for barcode payments) are skipped.
"""
from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass
from datetime import date, datetime
from typing import Iterator

from channels.alipay.transformers import BEIJING, CURRENCY, TIMESTAMP_FORMAT, yuan_to_fen
from channels.base import ProtocolError, Statement, StatementKind, StatementLine

CHANNEL = "alipay"
BILL_ENCODING = "gbk"
BILL_ZIP_MAX_BYTES = 64 * 1_048_576        # the downloaded archive
BILL_CSV_MAX_BYTES = 512 * 1_048_576       # one file inside it, uncompressed (zip-bomb bound)
BILL_MEMBERS_MAX = 8
DETAIL_SUFFIX = "_业务明细.csv"
SUMMARY_SUFFIX = "_业务明细(汇总).csv"
ZIP_UTF8_FLAG = 0x800

COL_TRADE_NO = "支付宝交易号"
COL_ORDER_ID = "商户订单号"
COL_TYPE = "业务类型"
COL_SUBJECT = "商品名称"
COL_CREATED = "创建时间"
COL_FINISHED = "完成时间"
COL_AMOUNT = "订单金额（元）"
COL_RECEIVED = "商家实收（元）"
COL_REFUND_ID = "退款批次号/请求号"
COL_FEE = "服务费（元）"
# The documented column order (the sandbox renders it; the parser only needs the named ones).
COLUMNS = ("支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号",
           "门店名称", "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）",
           "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）",
           "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）",
           "分润（元）", "备注")
REQUIRED_COLUMNS = (COL_TRADE_NO, COL_ORDER_ID, COL_TYPE, COL_FINISHED, COL_AMOUNT, COL_RECEIVED,
                    COL_REFUND_ID)
TYPE_PAYMENT = "交易"
TYPE_REFUND = "退款"

PAYMENTS_FOOTER = re.compile(r"^#交易合计：(\d+)笔，商家实收共(-?\d+(?:\.\d{1,2})?)元")
REFUNDS_FOOTER = re.compile(r"^#退款合计：(\d+)笔，商家实收退款共(-?\d+(?:\.\d{1,2})?)元")


def signed_yuan_to_fen(text: str) -> int:
    """"-12.34" -> -1234; the bill's amounts may be negative (refunds, fees)."""
    text = text.strip()
    if text.startswith("-"):
        return -yuan_to_fen(text[1:])
    return yuan_to_fen(text)


def member_name(info: zipfile.ZipInfo) -> str:
    """A ZIP member's real name: without the UTF-8 flag, Alipay's names are GBK bytes that
    zipfile decoded as cp437."""
    if info.flag_bits & ZIP_UTF8_FLAG:
        return info.filename
    try:
        return info.filename.encode("cp437").decode(BILL_ENCODING)
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def detail_csv(archive: bytes) -> str:
    """The decoded text of the 业务明细 file in a downloaded bill archive."""
    if len(archive) > BILL_ZIP_MAX_BYTES:
        raise ProtocolError("alipay bill archive too large")
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            infos = zf.infolist()
            if len(infos) > BILL_MEMBERS_MAX:
                raise ProtocolError("alipay bill archive has too many files")
            details = [i for i in infos if member_name(i).endswith(DETAIL_SUFFIX)]
            if len(details) != 1:
                raise ProtocolError("alipay bill archive: expected one 业务明细 file")
            if details[0].file_size > BILL_CSV_MAX_BYTES:
                raise ProtocolError("alipay bill file too large")
            with zf.open(details[0]) as f:
                raw = f.read(BILL_CSV_MAX_BYTES + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, UnicodeDecodeError):
        raise ProtocolError("alipay bill is not a readable ZIP") from None
    if len(raw) > BILL_CSV_MAX_BYTES:
        raise ProtocolError("alipay bill file too large")
    try:
        return raw.decode(BILL_ENCODING)
    except UnicodeDecodeError:
        raise ProtocolError("alipay bill file is not GBK") from None


@dataclass(frozen=True)
class _Footer:
    payments_count: int
    payments_received: int
    refunds_count: int
    refunds_received: int        # negative, as the bill writes it


def _split(text: str) -> tuple[list[str], list[str]]:
    """(comment lines, data lines) of the detail file."""
    comments: list[str] = []
    data: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        (comments if line.lstrip().startswith("#") else data).append(line)
    return comments, data


def _footer(comments: list[str]) -> _Footer:
    pay = ref = None
    for line in comments:
        pay = pay or PAYMENTS_FOOTER.match(line.strip())
        ref = ref or REFUNDS_FOOTER.match(line.strip())
    if pay is None or ref is None:
        raise ProtocolError("alipay bill lacks its 交易合计 / 退款合计 footer")
    return _Footer(int(pay.group(1)), signed_yuan_to_fen(pay.group(2)),
                   int(ref.group(1)), signed_yuan_to_fen(ref.group(2)))


def _rows(data: list[str]) -> Iterator[dict[str, str]]:
    reader = csv.reader(data)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ProtocolError("alipay bill has no column header") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ProtocolError(f"alipay bill lacks columns {missing}")
    for cells in reader:
        if len(cells) < len(header):
            raise ProtocolError("alipay bill row has too few cells")
        yield {name: cell.strip() for name, cell in zip(header, cells)}   # strips the id tabs


def _time(text: str) -> datetime:
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=BEIJING)
    except ValueError:
        raise ProtocolError("alipay bill row has a malformed time") from None


def _line(row: dict[str, str]) -> tuple[StatementLine, int] | None:
    """(line, 商家实收 in fen as written) of one row; None for a business type not listed."""
    kind = {TYPE_PAYMENT: StatementKind.PAYMENT, TYPE_REFUND: StatementKind.REFUND}.get(row[COL_TYPE])
    if kind is None:
        return None
    amount = signed_yuan_to_fen(row[COL_AMOUNT])
    received = signed_yuan_to_fen(row[COL_RECEIVED])
    fee = abs(signed_yuan_to_fen(row[COL_FEE])) if row.get(COL_FEE) else 0
    if not row[COL_ORDER_ID] or not row[COL_TRADE_NO]:
        raise ProtocolError("alipay bill row without trade numbers")
    if kind is StatementKind.PAYMENT:
        if amount <= 0:
            raise ProtocolError("alipay bill payment row with a non-positive amount")
        return StatementLine(kind, row[COL_ORDER_ID], row[COL_TRADE_NO], amount, CURRENCY,
                             _time(row[COL_FINISHED]), fee=fee, raw_status=TYPE_PAYMENT), received
    if amount >= 0:
        raise ProtocolError("alipay bill refund row with a non-negative amount")
    # A refund made without out_request_no is known by the trade's out_trade_no (Alipay's rule).
    refund_id = row[COL_REFUND_ID] or row[COL_ORDER_ID]
    return StatementLine(kind, row[COL_ORDER_ID], row[COL_TRADE_NO], -amount, CURRENCY,
                         _time(row[COL_FINISHED]), refund_id=refund_id, fee=fee,
                         raw_status=TYPE_REFUND), received


def parse_detail(text: str, day: date) -> Statement:
    """The Statement of one decoded 业务明细 file, checked against its own footer."""
    comments, data = _split(text)
    footer = _footer(comments)
    lines: list[StatementLine] = []
    received = {StatementKind.PAYMENT: 0, StatementKind.REFUND: 0}
    for row in _rows(data):
        parsed = _line(row)
        if parsed is None:
            continue
        line, got = parsed
        lines.append(line)
        received[line.kind] += got
    payments = sum(1 for x in lines if x.kind is StatementKind.PAYMENT)
    refunds = len(lines) - payments
    if (payments, received[StatementKind.PAYMENT]) != (footer.payments_count,
                                                       footer.payments_received):
        raise ProtocolError("alipay bill: payment rows disagree with 交易合计")
    if (refunds, received[StatementKind.REFUND]) != (footer.refunds_count,
                                                     footer.refunds_received):
        raise ProtocolError("alipay bill: refund rows disagree with 退款合计")
    return Statement(CHANNEL, day, tuple(lines), payments_count=footer.payments_count,
                     payments_total=footer.payments_received,
                     refunds_total=-footer.refunds_received)


def parse_bill(archive: bytes, day: date) -> Statement:
    return parse_detail(detail_csv(archive), day)
