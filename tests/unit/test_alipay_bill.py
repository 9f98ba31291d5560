"""Alipay's trade bill: the download URL request and its host allowlist, a hand-written GBK
业务明细 file parsed line by line, the footer checks, the archive's bounds, and the sandbox's
rendering read back by the parser."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from channels.alipay import bill, transformers as tf
from channels.base import ChannelError, OutcomeUnknown, ProtocolError, StatementKind
from channels.sandbox import alipay_bill
from channels.sandbox.ledger import Ledger

DAY = date(2019, 5, 9)
BEIJING = timezone(timedelta(hours=8))
NOW = datetime(2019, 5, 10, 2, 0, tzinfo=timezone.utc)

# A bill as Alipay writes it (column list per the reference notes): ids end in a tab, refund
# rows are negative, a store's discount makes 商家实收 differ from 订单金额 on one payment.
HEADER = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,"
          "终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,"
          "支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,"
          "卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注")
ROWS = [
    "2019050922001400000000000001\t,g-100\t,交易,60 宝石,2019-05-09 10:00:01,2019-05-09 10:00:03,"
    ",,\t,,英(158****66),6.00,6.00,0.00,0.00,0.00,0.00,0.00,,0.00,0.00,\t,-0.04,0.00,",
    "2019050922001400000000000002\t,g-101\t,交易,\"礼包,大\",2019-05-09 11:00:00,2019-05-09 11:00:02,"
    ",,\t,,英(158****66),30.00,29.00,0.00,0.00,0.00,1.00,0.00,,0.00,0.00,\t,-0.17,0.00,",
    "2019050922001400000000000001\t,g-100\t,退款,60 宝石,2019-05-09 10:00:01,2019-05-09 12:30:00,"
    ",,\t,,英(158****66),-2.50,-2.50,0.00,0.00,0.00,0.00,0.00,,0.00,0.00,rf-7\t,0.01,0.00,",
]
FOOTER_PAY = "#交易合计：2笔，商家实收共35.00元，商家优惠共1.00元"
FOOTER_REF = "#退款合计：1笔，商家实收退款共-2.50元，商家优惠退款共0.00元"


def _text(rows: list[str] = ROWS, pay: str = FOOTER_PAY, ref: str = FOOTER_REF,
          header: str = HEADER) -> str:
    lines = ["#支付宝业务明细查询", "#账号：[20881011179556110156]",
             "#起始日期：[2019年05月09日 00:00:00]   终止日期：[2019年05月10日 00:00:00]",
             "#-----------------------------------------业务明细列表----------------------------------------",
             header, *rows,
             "#-----------------------------------------业务明细列表结束------------------------------------",
             pay, ref, "#导出时间：[2019年05月10日 07:27:37]"]
    return "\r\n".join(lines) + "\r\n"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _gbk_named_zip(detail: bytes) -> bytes:
    """An archive whose member names are raw GBK bytes without the UTF-8 flag (as Windows tools
    and Alipay's exports write them): written with an ASCII placeholder, then patched."""
    placeholder = b"X" * len("业务明细".encode("gbk"))
    raw = _zip({"20881011179556110156_20190509_XXXXXXXX.csv": detail,
                "20881011179556110156_20190509_YYYYYYYY(huizong).csv": b"#"})
    return raw.replace(placeholder, "业务明细".encode("gbk"))


# ---- the request and its answer -------------------------------------------------------------

def test_bill_url_params() -> None:
    params = tf.bill_url_params("2021000000000001", DAY, NOW)
    assert params["method"] == "alipay.data.dataservice.bill.downloadurl.query"
    assert json.loads(params["biz_content"]) == {"bill_type": "trade", "bill_date": "2019-05-09"}


ALLOWED = tf.allowed_bill_hosts("http://127.0.0.1:8090/gateway.do", "dwbillcenter.alipay.com")


def test_allowed_hosts_are_the_gateways_and_the_configured_ones() -> None:
    assert ALLOWED == frozenset({"127.0.0.1:8090", "dwbillcenter.alipay.com"})
    assert tf.allowed_bill_hosts("https://openapi.alipay.com/gateway.do") == frozenset(
        {"openapi.alipay.com"})


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8090/downloadBillFile.resource?token=t",
    "https://dwbillcenter.alipay.com/downloadBillFile.resource?bizType=trade&token=t",
    "http://DWBILLCENTER.alipay.com/downloadBillFile.resource",
])
def test_bill_url_on_an_allowed_host(url: str) -> None:
    assert tf.map_bill_url({"code": "10000", "bill_download_url": url}, ALLOWED) == url


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",           # another host: never fetched
    "http://127.0.0.1:6379/",                             # the gateway's host, another port
    "http://127.0.0.1/downloadBillFile.resource",
    "file:///etc/passwd",
    "ftp://dwbillcenter.alipay.com/x",
    "http://user:pw@dwbillcenter.alipay.com/x",
    "http://dwbillcenter.alipay.com.evil.example/x",
    "http://127.0.0.1:99999/x",                            # malformed port
    "",
])
def test_bill_url_elsewhere_is_refused(url: str) -> None:
    with pytest.raises(ProtocolError):
        tf.map_bill_url({"code": "10000", "bill_download_url": url}, ALLOWED)


def test_bill_url_errors() -> None:
    with pytest.raises(tf.BillNotReady) as not_ready:
        tf.map_bill_url({"code": "40004", "sub_code": "isp.bill_not_exist"}, ALLOWED)
    assert isinstance(not_ready.value, ChannelError)
    assert not isinstance(not_ready.value, OutcomeUnknown)
    with pytest.raises(OutcomeUnknown):
        tf.map_bill_url({"code": "20000", "sub_code": "isp.unknow-error"}, ALLOWED)
    with pytest.raises(ProtocolError):
        tf.map_bill_url({"code": "10000"}, ALLOWED)


# ---- parsing --------------------------------------------------------------------------------

def test_hand_written_gbk_bill_is_parsed() -> None:
    archive = _zip({"20881011179556110156_20190509_业务明细.csv": _text().encode("gbk"),
                    "20881011179556110156_20190509_业务明细(汇总).csv": "#汇总".encode("gbk")})
    st_ = bill.parse_bill(archive, DAY)
    assert (st_.channel, st_.day, st_.payments_count, st_.payments_total, st_.refunds_total) == (
        "alipay", DAY, 2, 3500, 250)
    pay1, pay2, ref = st_.lines
    assert pay1 == pay1.__class__(StatementKind.PAYMENT, "g-100", "2019050922001400000000000001",
                                  600, "CNY", datetime(2019, 5, 9, 10, 0, 3, tzinfo=BEIJING),
                                  fee=4, raw_status="交易")
    assert (pay2.order_id, pay2.amount, pay2.fee) == ("g-101", 3000, 17)   # 订单金额, not 实收
    assert (ref.kind, ref.order_id, ref.refund_id, ref.amount, ref.fee, ref.at) == (
        StatementKind.REFUND, "g-100", "rf-7", 250, 1,
        datetime(2019, 5, 9, 12, 30, tzinfo=BEIJING))


def test_gbk_member_names_without_the_utf8_flag_are_found() -> None:
    st_ = bill.parse_bill(_gbk_named_zip(_text().encode("gbk")), DAY)
    assert [x.order_id for x in st_.lines] == ["g-100", "g-101", "g-100"]


def test_columns_are_found_by_name_and_other_business_types_skipped() -> None:
    names = HEADER.split(",")
    order = list(reversed(range(len(names))))
    header = ",".join(names[i] for i in order) + ",新列"

    def moved(row: str) -> str:
        cells = next(csv.reader([row]))
        return ",".join(f'"{cells[i]}"' for i in order) + ",x"
    other = ROWS[0].replace(",交易,", ",冻结,").replace("g-100", "g-999")
    st_ = bill.parse_detail(_text([moved(r) for r in ROWS + [other]], header=header), DAY)
    assert [(x.kind.value, x.order_id, x.amount) for x in st_.lines] == [
        ("payment", "g-100", 600), ("payment", "g-101", 3000), ("refund", "g-100", 250)]


def test_refund_without_request_number_is_known_by_the_trade_number() -> None:
    rows = [ROWS[0], ROWS[1], ROWS[2].replace("rf-7\t", "\t")]
    assert bill.parse_detail(_text(rows), DAY).lines[2].refund_id == "g-100"


def test_an_empty_day() -> None:
    st_ = bill.parse_detail(_text([], "#交易合计：0笔，商家实收共0.00元，商家优惠共0.00元",
                                  "#退款合计：0笔，商家实收退款共0.00元，商家优惠退款共0.00元"), DAY)
    assert (st_.lines, st_.payments_count, st_.payments_total, st_.refunds_total) == ((), 0, 0, 0)


@pytest.mark.parametrize("text", [
    _text(pay="#交易合计：3笔，商家实收共35.00元，商家优惠共1.00元"),       # count mismatch
    _text(pay="#交易合计：2笔，商家实收共35.01元，商家优惠共1.00元"),       # total mismatch
    _text(ref="#退款合计：1笔，商家实收退款共-2.51元，商家优惠退款共0.00元"),
    _text(ref="#导出时间：[2019年05月10日 07:27:37]"),                    # no refund footer
    _text(rows=ROWS[:2]),                                                 # a row missing
    _text(rows=[ROWS[0].replace("6.00,6.00", "-6.00,-6.00")]),
    _text(rows=[ROWS[2].replace("-2.50,-2.50", "2.50,2.50")]),
    _text(rows=[ROWS[0].replace("2019-05-09 10:00:03", "09/05/2019")]),
    _text(rows=[ROWS[0].replace("6.00,6.00", "6.001,6.00")]),
    _text(rows=[ROWS[0][:60]]),                                           # a cut row
    _text(header=HEADER.replace("商户订单号", "订单号")),                  # a needed column gone
    "#only comments\r\n",
])
def test_bills_that_do_not_add_up_are_refused(text: str) -> None:
    with pytest.raises(ProtocolError):
        bill.parse_detail(text, DAY)


@pytest.mark.parametrize("archive", [
    b"PK\x03\x04 not really a zip",
    "<html>下载超时，请重新下载</html>".encode(),
    _zip({"a.csv": b"x"}),                                               # no 业务明细 file
    _zip({"1_20190509_业务明细.csv": b"x", "2_20190509_业务明细.csv": b"y"}),
    _zip({"1_20190509_业务明细.csv": b"\xff\xff\xff"}),                   # not GBK
    _zip({"1_20190509_XXXX.csv": b"x", "\u00e9.csv": b""}).replace(   # flagged UTF-8, not UTF-8
        "\u00e9".encode(), b"\xce\xce"),
])
def test_archives_that_cannot_be_read_are_refused(archive: bytes) -> None:
    with pytest.raises(ProtocolError):
        bill.parse_bill(archive, DAY)


def test_archive_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _zip({"1_20190509_业务明细.csv": _text().encode("gbk")})
    monkeypatch.setattr(bill, "BILL_CSV_MAX_BYTES", 100)          # a zip bomb's inflated size
    with pytest.raises(ProtocolError, match="too large"):
        bill.parse_bill(archive, DAY)
    monkeypatch.setattr(bill, "BILL_ZIP_MAX_BYTES", 10)
    with pytest.raises(ProtocolError, match="too large"):
        bill.parse_bill(archive, DAY)


@given(st.integers(-10**12, 10**12))
def test_signed_yuan_round_trip(fen: int) -> None:
    text = ("-" if fen < 0 else "") + tf.fen_to_yuan(abs(fen))
    assert bill.signed_yuan_to_fen(text) == fen


# ---- the sandbox's bill read back -----------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**9), st.integers(0, 3)), max_size=6),
       st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
               max_size=12))
def test_sandbox_bill_reads_back(trades: list[tuple[int, int]], subject: str) -> None:
    ledger, at = Ledger(), datetime(2019, 5, 9, 3, tzinfo=timezone.utc)
    for n, (amount, refunds) in enumerate(trades):
        trade = ledger.ensure(f"g-{n}", amount)
        trade.subject = subject
        ledger.pay(trade, at)
        for k in range(min(refunds, amount)):
            ledger.refund(trade, f"rf-{n}-{k}", 1, at)
    archive = alipay_bill.render_zip(ledger, "2088101117955611", DAY, NOW)
    st_ = bill.parse_bill(archive, DAY)
    assert sorted((x.kind.value, x.order_id, x.refund_id, x.amount) for x in st_.lines) == sorted(
        [("payment", f"g-{n}", "", a) for n, (a, _) in enumerate(trades)]
        + [("refund", f"g-{n}", f"rf-{n}-{k}", 1)
           for n, (a, r) in enumerate(trades) for k in range(min(r, a))])
    assert st_.payments_total == sum(a for a, _ in trades)
    assert st_.refunds_total == sum(min(r, a) for a, r in trades)


def test_sandbox_bill_tokens_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(alipay_bill.time, "monotonic", lambda: clock[0])
    tokens = alipay_bill.BillTokens(max_tokens=2)
    first = tokens.issue(DAY)
    assert tokens.day_for(first) == DAY and tokens.day_for("nope") is None
    clock[0] += alipay_bill.BILL_URL_VALID_S + 0.001
    assert tokens.day_for(first) is None
    fresh = [tokens.issue(DAY) for _ in range(3)]
    assert [tokens.day_for(t) for t in fresh] == [None, DAY, DAY]     # bounded: oldest dropped
