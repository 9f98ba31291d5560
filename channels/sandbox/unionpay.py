"""A local UnionPay 全渠道 gateway (version 5.1.0, signMethod 01) for local runs and tests.

Routes (under /unionpay/): POST /gateway/api/backTransReq.do (consume 01, refund 04, consume
cancel 31, 冲正 99), /gateway/api/queryTrans.do (00), /gateway/api/fileTransRequest.do (76).

What it checks, as UnionPay does: a urlencoded form without repeated fields; version 5.1.0,
signMethod 01 and every required field (else 13 报文交易要素缺失 / 10 报文格式错误); the merId;
certId naming the merchant's signing certificate (channels/sandbox/keys/unionpay_merchant_cert.pem)
and the signature over hex(SHA-256(sorted k=v&...)) with that certificate's key (else 11
验证签名失败). Every answer and notification is signed with the sandbox's "UnionPay" key and
carries its certificate in signPubKeyCert (CN 041@…@中国银联股份有限公司@…, issued by the sandbox
middle CA, issued by the sandbox root CA: unionpay_{root,middle,sign}_cert.pem).

Consume outcomes (engine amount table) in UnionPay's words: paid -> 00; waiting -> 00 accepted and
queryTrans origRespCode 05 until the payer's bank answers; declined -> 64 卡上的余额不足;
system error -> 03 交易通讯超时，请发起查询交易; a repeated orderId -> 12 重复交易. queryTrans
needs the trade's orderId AND txnTime (三要素): another txnTime is 34 查无此交易.

Deviations and assumptions (documented in the connector too):
  * 冲正 (99/01) is documented for 被扫消费; here it also voids a token consume, and for an
    orderId UnionPay never saw it records the orderId as void so a late consume gets 12 and
    queryTrans origRespCode 01. A 冲正'd or failed trade queries as origRespCode 01 (declined: 64).
  * After a 消费撤销 the original consume still queries as 00 (UnionPay's model: the cancel is its
    own transaction, with its own orderId and queryId, listed in the bill as txnType 31).
  * Over-refund answers 33 交易金额超限, refund of an unpaid trade 35, too many refunds 30,
    a refund orderId reused with another amount 12: the code table's nearest entries.
  * The bill (ZM file) lists the ledger's rows of the UTC day named by settleDate (MMDD, the
    latest such day not after today); merCharge is a flat 0.38% fee. Only ZM is real; the ZME
    file in the zip is empty.
"""
from __future__ import annotations

import base64
import io
import re
import zipfile
import zlib
from datetime import date, datetime
from typing import Mapping
from urllib.parse import urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from channels.sandbox import keyring
from channels.sandbox.engine import (SANDBOX, ChannelSandbox, Event, Outcome, SandboxConfig,
                                     dropped_response)
from channels.sandbox.ledger import (REFUSE_AMOUNT, REFUSE_CONFLICT, REFUSE_NOT_PAID, LedgerFull,
                                     Refund, RefundRefused, RefundState, Trade, TradeStatus)
from channels.sandbox.notifier import Delivery
from channels.unionpay import signing, transformers as tf
from channels.unionpay.ids import BEIJING, parse_txn_time, txn_time

MER_ID = "777290058110048"                 # core.settings UnionPaySettings.mer_id
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=UTF-8"
FEE_RATE_BP = 38                           # 0.38 %, the bill's merCharge
TOKEN_RE = re.compile(r"^\{token=([0-9A-Za-z]{1,64})&trId=([0-9]{1,20})\}$")
ORDER_ID_RE = re.compile(r"^[0-9A-Za-z]{8,40}$")
AMOUNT_RE = re.compile(r"^[1-9][0-9]{0,11}$")
REQUIRED = ("version", "encoding", "signMethod", "certId", "signature", "txnType", "txnSubType",
            "bizType", "accessType", "merId", "txnTime")
MESSAGES = {"00": "成功[0000000]", "03": "交易通讯超时，请发起查询交易", "10": "报文格式错误",
            "11": "验证签名失败", "12": "重复交易", "13": "报文交易要素缺失",
            "30": "交易未通过，请尝试使用其他银联卡支付或联系95516", "32": "商户无此交易权限",
            "33": "交易金额超限", "34": "查无此交易", "35": "原交易不存在或状态不正确",
            "45": "原交易已被成功退货或已被成功撤销", "64": "卡上的余额不足", "98": "文件不存在"}
REFUSAL_CODES = {REFUSE_NOT_PAID: "35", REFUSE_AMOUNT: "33", REFUSE_CONFLICT: "12"}
REFUND_STATE_CODES = {RefundState.SUCCESS: "00", RefundState.PROCESSING: "05",
                      RefundState.FAILED: "01"}
REVERSED_CODE, DECLINED_CODE = "01", "64"


def unionpay_ack(status: int, body: bytes) -> bool:
    """UnionPay retries unless the back URL answers HTTP 200 (or 302) within 10 s."""
    return status in (200, 302)


class UnionPaySandbox(ChannelSandbox):
    name = "unionpay"
    trade_no_prefix = "95"

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        self.sign_key: RSAPrivateKey = keyring.private_key("unionpay_sign_private.pem")
        self.sign_cert = x509.load_pem_x509_certificate(
            (keyring.KEYS_DIR / "unionpay_sign_cert.pem").read_bytes())
        merchant_cert = x509.load_pem_x509_certificate(
            (keyring.KEYS_DIR / "unionpay_merchant_cert.pem").read_bytes())
        key = merchant_cert.public_key()
        assert isinstance(key, RSAPublicKey)
        self.merchant_key: RSAPublicKey = key
        self.merchant_cert_id = signing.cert_id(merchant_cert)
        self._seq = 0
        # UnionPay-side ids: queryId -> (orderId of the trade, out_refund_no or "")
        self.by_query_id: dict[str, tuple[str, str]] = {}
        # orderId of a refund or cancel -> (consume orderId, out_refund_no)
        self.by_refund_order: dict[str, tuple[str, str]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(tf.PATH_BACK, back_trans)
        app.router.add_post(tf.PATH_QUERY, query_trans)
        app.router.add_post(tf.PATH_FILE, file_trans)

    # ---- ids and answers ----------------------------------------------------------------

    def new_query_id(self, now: datetime) -> str:
        self._seq += 1
        return f"{now.astimezone(BEIJING):%y%m%d%H%M%S}{self._seq % 10**9:09d}"

    def query_id_of(self, trade: Trade, refund: Refund | None = None) -> str:
        key = f"q:{refund.out_refund_no}" if refund is not None else "q"
        if key not in trade.extra:
            qid = trade.extra[key] = self.new_query_id(self.now())
            if len(self.by_query_id) >= self.ledger.trades_max:
                self.by_query_id.clear()       # bounded: ids of reset ledgers go first
            self.by_query_id[qid] = (trade.out_trade_no,
                                     refund.out_refund_no if refund is not None else "")
        return trade.extra[key]

    def answer(self, request: Mapping[str, str], code: str,
               extra: Mapping[str, str] | None = None) -> web.Response:
        fields = {k: request[k] for k in ("version", "encoding", "txnType", "txnSubType",
                                          "bizType", "accessType", "merId", "orderId",
                                          "txnTime", "settleDate") if request.get(k)}
        fields.update(signMethod=signing.SIGN_METHOD_RSA, respCode=code,
                      respMsg=MESSAGES.get(code, "交易失败"))
        fields.update(extra or {})
        signed = signing.sign_answer(fields, self.sign_key, self.sign_cert)
        return web.Response(body=signing.build_answer(signed), content_type="text/plain",
                            charset="utf-8")

    # ---- notifications ------------------------------------------------------------------

    def build_notification(self, trade: Trade, event: Event, refund: Refund | None,
                           notify_id: str, *, forged: bool = False) -> Delivery | None:
        if event is Event.CLOSED:
            return None                    # "失败的交易银联不会发送后台通知"
        now = self.now()
        base = {"version": tf.VERSION, "encoding": tf.ENCODING, "bizType": tf.BIZ_TOKEN,
                "accessType": tf.ACCESS_TYPE, "merId": MER_ID, "signMethod": "01",
                "currencyCode": tf.CURRENCY_CODES[trade.currency], "respCode": "00",
                "respMsg": MESSAGES["00"], "settleCurrencyCode": "156",
                "settleDate": f"{now.astimezone(BEIJING):%m%d}",
                "traceNo": f"{self._seq % 10**6:06d}",
                "traceTime": f"{now.astimezone(BEIJING):%m%d%H%M%S}"}
        if event is Event.REFUND and refund is not None:
            if refund.state is not RefundState.SUCCESS or refund.out_refund_no.startswith(
                    "reverse-"):
                return None
            base.update(txnType=tf.TXN_REFUND, txnSubType="00", orderId=refund.out_refund_no,
                        txnTime=trade.extra.get(f"t:{refund.out_refund_no}", ""),
                        txnAmt=str(refund.amount), settleAmt=str(refund.amount),
                        queryId=self.query_id_of(trade, refund),
                        origQryId=self.query_id_of(trade), reqReserved=trade.out_trade_no)
        elif event is Event.PAID:
            base.update(txnType=tf.TXN_CONSUME, txnSubType="01", orderId=trade.out_trade_no,
                        txnTime=trade.extra.get("txnTime", ""), txnAmt=str(trade.total_amount),
                        settleAmt=str(trade.total_amount), queryId=self.query_id_of(trade))
        else:
            return None
        key = keyring.attacker_key() if forged else self.sign_key
        form = signing.sign_answer(base, key, self.sign_cert)
        url = refund.notify_url if refund is not None and refund.notify_url else trade.notify_url
        return Delivery(trade.out_trade_no, url, urlencode(form).encode(),
                        {"Content-Type": FORM_CONTENT_TYPE}, unionpay_ack, event.value)


# ---- request checks -------------------------------------------------------------------------

async def read_form(request: web.Request) -> dict[str, str] | None:
    form = await request.post()
    out: dict[str, str] = {}
    for key, value in form.items():
        if key in out or not isinstance(value, str):
            return None
        out[key] = value
    return out


def refusal(sb: UnionPaySandbox, form: dict[str, str] | None) -> str:
    """The respCode UnionPay refuses a malformed or badly signed request with, or ""."""
    if form is None:
        return "10"
    if any(not form.get(k) for k in REQUIRED):
        return "13"
    if form["version"] != tf.VERSION or form["signMethod"] != signing.SIGN_METHOD_RSA:
        return "10"
    if form["merId"] != MER_ID or form["accessType"] != tf.ACCESS_TYPE:
        return "10"
    if form["certId"] != sb.merchant_cert_id or not signing.verify(sb.merchant_key, form):
        return "11"
    if parse_txn_time(form["txnTime"]) is None:
        return "10"
    if "orderId" in form and not ORDER_ID_RE.match(form["orderId"]):
        return "10"
    return ""


async def _checked(request: web.Request) -> tuple[UnionPaySandbox, dict[str, str],
                                                   web.Response | None]:
    sb = request.app[SANDBOX]
    assert isinstance(sb, UnionPaySandbox)
    await sb.delay()
    form = await read_form(request)
    code = refusal(sb, form)
    if code:
        return sb, form or {}, sb.answer(form or {}, code)
    assert form is not None
    return sb, form, None


# ---- backTransReq.do ------------------------------------------------------------------------

async def back_trans(request: web.Request) -> web.StreamResponse:
    sb, form, refused = await _checked(request)
    if refused is not None:
        return refused
    txn_type = form["txnType"]
    if txn_type == tf.TXN_CONSUME:
        return await consume(request, sb, form)
    if txn_type in (tf.TXN_REFUND, tf.TXN_CANCEL, tf.TXN_REVERSAL) and sb.error_now(
            followup=txn_type != tf.TXN_REFUND):
        return sb.answer(form, "03")
    if txn_type == tf.TXN_REFUND:
        return refund(sb, form)
    if txn_type == tf.TXN_CANCEL:
        return cancel(sb, form)
    if txn_type == tf.TXN_REVERSAL:
        return reversal(sb, form)
    return sb.answer(form, "32")


async def consume(request: web.Request, sb: UnionPaySandbox,
                  form: dict[str, str]) -> web.StreamResponse:
    token = TOKEN_RE.match(form.get("tokenPayData", ""))
    currency = tf.CURRENCY_BY_CODE.get(form.get("currencyCode", ""))
    if (form["bizType"] != tf.BIZ_TOKEN or form["txnSubType"] != "01" or token is None
            or currency is None or not AMOUNT_RE.match(form.get("txnAmt", ""))
            or not form.get("orderId") or not form.get("backUrl")):
        return sb.answer(form, "13")
    amount = int(form["txnAmt"])
    trade = sb.trade_for_charge(form["orderId"], amount, currency)
    if trade is not None and trade.status is None:
        trade.extra["txnTime"] = form["txnTime"]
    outcome = await sb.charge(request, trade, amount, currency, subject="",
                              notify_url=form["backUrl"], payer=token.group(1),
                              payment_type="card")
    if outcome is Outcome.DROPPED:
        return dropped_response()
    if outcome is Outcome.DECLINED and trade is not None:
        trade.extra["origRespCode"] = DECLINED_CODE
        return sb.answer(form, DECLINED_CODE)
    codes = {Outcome.PAID: "00", Outcome.WAITING: "00", Outcome.ERROR: "03", Outcome.FULL: "03",
             Outcome.ALREADY_PAID: "12", Outcome.ALREADY_CLOSED: "12", Outcome.MISMATCH: "12"}
    code = codes[outcome]
    extra = {"queryId": sb.query_id_of(trade)} if trade is not None and code == "00" else {}
    return sb.answer(form, code, extra)


def _orig_trade(sb: UnionPaySandbox, form: Mapping[str, str]) -> Trade | None:
    found = sb.by_query_id.get(form.get("origQryId", ""))
    if found is None or found[1]:
        return None
    return sb.ledger.get(found[0])


def refund(sb: UnionPaySandbox, form: dict[str, str]) -> web.Response:
    trade = _orig_trade(sb, form)
    if trade is None:
        return sb.answer(form, "35")
    if not AMOUNT_RE.match(form.get("txnAmt", "")) or not form.get("orderId"):
        return sb.answer(form, "13")
    out_refund_no = form["orderId"]
    known = out_refund_no in trade.refund_list
    try:
        done = sb.refund(trade, out_refund_no, int(form["txnAmt"]), form.get("backUrl", ""))
    except RefundRefused as e:
        return sb.answer(form, REFUSAL_CODES.get(e.reason, "30"))
    if known:
        return sb.answer(form, "12")
    trade.extra[f"t:{out_refund_no}"] = form["txnTime"]
    if len(sb.by_refund_order) >= sb.ledger.trades_max:
        sb.by_refund_order.clear()             # bounded: refunds of reset ledgers go first
    sb.by_refund_order[out_refund_no] = (trade.out_trade_no, out_refund_no)
    return sb.answer(form, "00", {"queryId": sb.query_id_of(trade, done),
                                  "origQryId": sb.query_id_of(trade)})


def cancel(sb: UnionPaySandbox, form: dict[str, str]) -> web.Response:
    """消费撤销: the whole of a paid consume back (the engine's reverse)."""
    trade = _orig_trade(sb, form)
    if trade is None or trade.status is None:
        return sb.answer(form, "35")
    if trade.status is TradeStatus.CLOSED and trade.paid is not None:
        return sb.answer(form, "45")
    if trade.status is not TradeStatus.PAID or form.get("txnAmt") != str(trade.total_amount):
        return sb.answer(form, "35")
    sb.close_trade(trade, reverse_paid=True)
    reverse = trade.refund_list.get(f"reverse-{trade.out_trade_no}")
    trade.extra["cancelOrderId"] = form["orderId"]
    extra = {"origQryId": sb.query_id_of(trade)}
    if reverse is not None:
        extra["queryId"] = sb.query_id_of(trade, reverse)
    return sb.answer(form, "00", extra)


def reversal(sb: UnionPaySandbox, form: dict[str, str]) -> web.Response:
    """冲正 of orderId + txnTime: voids the consume (reverses it if it was paid)."""
    try:
        trade = sb.ledger.ensure(form["orderId"], 0)
    except LedgerFull:
        return sb.answer(form, "03")
    if trade.status is None:
        trade.extra["txnTime"] = form["txnTime"]
    elif trade.extra.get("txnTime") != form["txnTime"]:
        return sb.answer(form, "35")
    sb.close_trade(trade, reverse_paid=True)
    if trade.paid is None:
        trade.extra["origRespCode"] = trade.extra.get("origRespCode", REVERSED_CODE)
    return sb.answer(form, "00")


# ---- queryTrans.do --------------------------------------------------------------------------

async def query_trans(request: web.Request) -> web.StreamResponse:
    sb, form, refused = await _checked(request)
    if refused is not None:
        return refused
    if form["txnType"] != tf.TXN_QUERY or not form.get("orderId"):
        return sb.answer(form, "13")
    if sb.error_now(followup=True):
        return sb.answer(form, "03")
    order_id, at = form["orderId"], form["txnTime"]
    refund_of = sb.by_refund_order.get(order_id)
    if refund_of is not None:
        return _query_refund(sb, form, *refund_of)
    trade = sb.ledger.get(order_id)
    if trade is not None:
        trade.query_calls += 1
    if trade is None or not trade.exists or trade.extra.get("txnTime") != at:
        return sb.answer(form, "34")
    if trade.paid is not None:
        orig = "00"
    elif trade.status is TradeStatus.WAITING:
        orig = "05"
    else:
        orig = trade.extra.get("origRespCode", REVERSED_CODE)
    extra = {"origRespCode": orig, "origRespMsg": MESSAGES.get(orig, "交易失败"),
             "queryId": sb.query_id_of(trade), "txnAmt": str(trade.total_amount),
             "currencyCode": tf.CURRENCY_CODES.get(trade.currency, "156"),
             "txnType": tf.TXN_CONSUME}
    return sb.answer(form, "00", extra)


def _query_refund(sb: UnionPaySandbox, form: dict[str, str], order_id: str,
                  out_refund_no: str) -> web.Response:
    trade = sb.ledger.get(order_id)
    found = trade.refund_list.get(out_refund_no) if trade is not None else None
    if (trade is None or found is None
            or trade.extra.get(f"t:{out_refund_no}") != form["txnTime"]):
        return sb.answer(form, "34")
    orig = REFUND_STATE_CODES[found.state]
    return sb.answer(form, "00", {
        "origRespCode": orig, "origRespMsg": MESSAGES.get(orig, "交易失败"),
        "txnType": tf.TXN_REFUND, "queryId": sb.query_id_of(trade, found),
        "origQryId": sb.query_id_of(trade), "txnAmt": str(found.amount),
        "currencyCode": tf.CURRENCY_CODES.get(trade.currency, "156")})


# ---- fileTransRequest.do --------------------------------------------------------------------

def settle_day(mmdd: str, today: date) -> date | None:
    """The latest day not after `today` whose month and day are `mmdd`."""
    for year in (today.year, today.year - 1):
        try:
            day = datetime.strptime(f"{year}{mmdd}", "%Y%m%d").date()
        except ValueError:
            continue
        if day <= today:
            return day
    return None


async def file_trans(request: web.Request) -> web.StreamResponse:
    sb, form, refused = await _checked(request)
    if refused is not None:
        return refused
    day = settle_day(form.get("settleDate", ""), sb.now().date())
    if form["txnType"] != tf.TXN_FILE or form.get("fileType") != tf.FILE_TYPE_ZM or day is None:
        return sb.answer(form, "13")
    zm = zm_file(sb, day)
    name = f"{MER_ID}_{day:%Y%m%d}.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"INN{day:%y%m%d}88ZM_{MER_ID}", zm)
        zf.writestr(f"INN{day:%y%m%d}88ZME_{MER_ID}", b"")
    content = base64.b64encode(zlib.compress(buf.getvalue())).decode("ascii")
    return sb.answer(form, "00", {"fileName": name, "fileContent": content})


def zm_record(values: Mapping[int, str]) -> bytes:
    """One ZM record: every field padded to its width (GBK), one space after each."""
    parts = []
    for i, width in enumerate(tf.ZM_WIDTHS):
        raw = values.get(i, "").encode("gbk")
        assert len(raw) <= width, (i, values.get(i))
        parts.append(raw.ljust(width, b" "))
    return b" ".join(parts) + b" "


def zm_file(sb: UnionPaySandbox, day: date) -> bytes:
    lines = []
    for n, row in enumerate(sb.ledger.statement(day), 1):
        trade, refund = row.trade, row.refund
        amount = trade.total_amount if refund is None else refund.amount
        fee = amount * FEE_RATE_BP // 10_000
        values = {0: "S22" if refund is None else "S33", 1: "00000000", 2: "00000000",
                  3: f"{n % 10**6:06d}",
                  4: f"{row.at.astimezone(BEIJING):%m%d%H%M%S}", 5: "6226********0048",
                  6: f"{amount:012d}", 7: "5999", 8: "07", 11: trade.out_trade_no,
                  15: ("D" if refund is None else "C") + f"{fee:012d}",
                  16: ("C" if refund is None else "D") + f"{amount - fee:012d}",
                  21: tf.BIZ_TOKEN, 22: "01", 27: MER_ID}
        if refund is None:
            values.update({9: sb.query_id_of(trade), 19: tf.TXN_CONSUME, 20: "01"})
        else:
            reverse = refund.out_refund_no.startswith("reverse-")
            values.update({
                9: sb.query_id_of(trade, refund), 26: sb.query_id_of(trade),
                11: trade.extra.get("cancelOrderId", "") if reverse else refund.out_refund_no,
                19: tf.TXN_CANCEL if reverse else tf.TXN_REFUND, 20: "00",
                34: trade.out_trade_no})
        lines.append(zm_record(values))
    return b"".join(line + b"\r\n" for line in lines)
