"""The Alipay sandbox's daily trade bill: download tokens (valid 30 s, as Alipay's URLs) and the
ZIP of GBK CSV files rendered from the ledger's statement rows, in Alipay's 业务明细 layout.

Deviations: the bill is rendered when it is downloaded, from the ledger as it is then (Alipay's
bills are fixed and ready T+1 from about 10:00; the sandbox serves any past day and today, so
tests need not wait); the day is the ledger's day (UTC, channels.sandbox.ledger.statement), not
Beijing's; ZIP member names are stored as UTF-8 (flagged), while Alipay's archives are commonly
read with GBK names (the connector reads both); there are no discounts, stores or fees (0.00).
"""
from __future__ import annotations

import csv
import io
import secrets
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from channels.alipay import bill, transformers as tf
from channels.sandbox.ledger import Ledger, StatementRow

BILL_URL_VALID_S = 30               # "下载超时，请重新下载" after this (aliyun article 707638)
BILL_TOKENS_MAX = 1024              # outstanding download URLs; the oldest are forgotten first
DOWNLOAD_PATH = "/downloadBillFile.resource"
EXPIRED_PAGE = "下载超时，请重新下载".encode("utf-8")
COUNTERPART = "159****5620"


@dataclass(frozen=True)
class BillToken:
    day: date
    expires_at: float                # time.monotonic()


class BillTokens:
    """Download tokens: bounded, each valid BILL_URL_VALID_S seconds (any number of GETs)."""

    def __init__(self, valid_s: float = BILL_URL_VALID_S, max_tokens: int = BILL_TOKENS_MAX) -> None:
        assert valid_s > 0 and max_tokens > 0
        self.valid_s = valid_s
        self.max_tokens = max_tokens
        self._tokens: OrderedDict[str, BillToken] = OrderedDict()

    def issue(self, day: date) -> str:
        token = secrets.token_hex(16)
        self._tokens[token] = BillToken(day, time.monotonic() + self.valid_s)
        while len(self._tokens) > self.max_tokens:
            self._tokens.popitem(last=False)
        return token

    def day_for(self, token: str) -> date | None:
        """The token's day, or None when it is unknown or expired."""
        found = self._tokens.get(token)
        if found is None or time.monotonic() > found.expires_at:
            return None
        return found.day


def account(seller_id: str) -> str:
    """The bill's account id: the seller's pid plus Alipay's "0156" suffix."""
    return f"{seller_id}0156"


def file_stem(seller_id: str, day: date) -> str:
    return f"{account(seller_id)}_{day:%Y%m%d}"


def _cn_time(at: datetime) -> str:
    return f"{at:%Y年%m月%d日 %H:%M:%S}"


def _money(fen: int) -> str:
    return ("-" if fen < 0 else "") + tf.fen_to_yuan(abs(fen))


def _row(row: StatementRow) -> list[str]:
    trade = row.trade
    if row.refund is None:
        amount, kind, refund_no = trade.total_amount, bill.TYPE_PAYMENT, ""
    else:
        amount, kind, refund_no = -row.refund.amount, bill.TYPE_REFUND, row.refund.out_refund_no
    created = trade.created or row.at
    cells = {
        bill.COL_TRADE_NO: trade.trade_no + "\t", bill.COL_ORDER_ID: trade.out_trade_no + "\t",
        bill.COL_TYPE: kind, bill.COL_SUBJECT: trade.subject,
        bill.COL_CREATED: tf.alipay_timestamp(created), bill.COL_FINISHED: tf.alipay_timestamp(row.at),
        "操作员": "\t", "对方账户": COUNTERPART, bill.COL_AMOUNT: _money(amount),
        bill.COL_RECEIVED: _money(amount), bill.COL_REFUND_ID: refund_no + "\t",
        bill.COL_FEE: "0.00", "分润（元）": "0.00",
    }
    return [cells.get(name, "0.00" if name.endswith("（元）") else "") for name in bill.COLUMNS]


def render_detail(rows: list[StatementRow], seller_id: str, day: date, now: datetime) -> str:
    """The 业务明细 CSV text (before GBK encoding)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    start = datetime(day.year, day.month, day.day)
    pays = [r for r in rows if r.refund is None]
    refs = [r for r in rows if r.refund is not None]
    pay_total = sum(r.trade.total_amount for r in pays)
    ref_total = -sum(r.refund.amount for r in refs if r.refund is not None)
    out.write("#支付宝业务明细查询\r\n")
    out.write(f"#账号：[{account(seller_id)}]\r\n")
    out.write(f"#起始日期：[{_cn_time(start)}]   终止日期：[{_cn_time(start + timedelta(days=1))}]\r\n")
    out.write("#" + "-" * 41 + "业务明细列表" + "-" * 40 + "\r\n")
    writer.writerow(bill.COLUMNS)
    for row in rows:
        writer.writerow(_row(row))
    out.write("#" + "-" * 41 + "业务明细列表结束" + "-" * 36 + "\r\n")
    out.write(f"#交易合计：{len(pays)}笔，商家实收共{_money(pay_total)}元，商家优惠共0.00元\r\n")
    out.write(f"#退款合计：{len(refs)}笔，商家实收退款共{_money(ref_total)}元，商家优惠退款共0.00元\r\n")
    out.write(f"#导出时间：[{_cn_time(now.astimezone(tf.BEIJING))}]\r\n")
    return out.getvalue()


def render_summary(rows: list[StatementRow], seller_id: str, day: date, now: datetime) -> str:
    """The 业务明细(汇总) CSV text: one total line (no stores in the sandbox)."""
    pays = [r for r in rows if r.refund is None]
    refs = [r for r in rows if r.refund is not None]
    received = (sum(r.trade.total_amount for r in pays)
                - sum(r.refund.amount for r in refs if r.refund is not None))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    start = datetime(day.year, day.month, day.day)
    out.write("#支付宝业务汇总查询\r\n")
    out.write(f"#账号：[{account(seller_id)}]\r\n")
    out.write(f"#起始日期：[{_cn_time(start)}]   终止日期：[{_cn_time(start + timedelta(days=1))}]\r\n")
    out.write("#" + "-" * 41 + "业务汇总列表" + "-" * 40 + "\r\n")
    writer.writerow(["门店编号", "门店名称", "交易订单总笔数", "退款订单总笔数", "订单金额（元）",
                     "商家实收（元）", "支付宝优惠（元）", "商家优惠（元）", "卡消费金额（元）",
                     "服务费（元）", "分润（元）", "实收净额（元）"])
    writer.writerow(["合计", "", len(pays), len(refs), _money(received), _money(received),
                     "0.00", "0.00", "0.00", "0.00", "0.00", _money(received)])
    out.write("#" + "-" * 41 + "业务汇总列表结束" + "-" * 36 + "\r\n")
    out.write(f"#导出时间：[{_cn_time(now.astimezone(tf.BEIJING))}]\r\n")
    return out.getvalue()


def render_zip(ledger: Ledger, seller_id: str, day: date, now: datetime) -> bytes:
    """The downloadable archive: the detail and summary files, GBK-encoded ('?' for characters
    GBK lacks, as a GBK export would)."""
    rows = ledger.statement(day)
    stem = file_stem(seller_id, day)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(stem + bill.DETAIL_SUFFIX,
                    render_detail(rows, seller_id, day, now).encode(bill.BILL_ENCODING, "replace"))
        zf.writestr(stem + bill.SUMMARY_SUFFIX,
                    render_summary(rows, seller_id, day, now).encode(bill.BILL_ENCODING, "replace"))
    return buf.getvalue()
