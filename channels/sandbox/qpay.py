"""A local QQ Wallet (QPay) merchant API that speaks the real wire protocol, mounted at /qpay/.

Followed: QPay's merchant API pages (mp.qpay.tenpay.cn/buss/wiki: 提交付款码支付 43/1157, 申请退款
1/1126, 退款查询 43/1162) for paths, fields and rules, and the public SDKs that implement the
signature and message shapes (go-pay/gopay `qq`, netcccyun/qqpay-sdk-php, essensoft/paylink QPay
models). Every endpoint takes a POSTed flat ``<xml>`` and answers one:

  /cgi-bin/pay/qpay_micro_pay.cgi        付款码支付 (sync deduction)
  /cgi-bin/pay/qpay_order_query.cgi      订单查询
  /cgi-bin/pay/qpay_close_order.cgi      关闭订单 (unpaid trades)
  /cgi-bin/pay/qpay_reverse.cgi          撤销订单 (closes, or gives a paid trade's money back)
  /cgi-bin/pay/qpay_refund.cgi           申请退款
  /cgi-bin/pay/qpay_refund_query.cgi     退款查询
  /cgi-bin/sp_download/qpay_mch_statement_down.cgi   交易账单 (the ALL bill, a text file)

What it checks, as QPay does: the XML parses, mch_id is the sandbox merchant, nonce_str is 1-32
characters, `sign` verifies (MD5, or HMAC-SHA256 when sign_type says so) with the API key; a
failure answers the unsigned ``return_code FAIL`` shape. Required fields are present (else
result FAIL LACK_PARAMS); the auth code looks like a QQ Wallet code (18 digits starting 91, else
AUTH_CODE_INVALID); fee_type is CNY; refund and reverse name the operator (op_user_id = mch_id)
and op_user_passwd = the MD5 of the operator password (else NOAUTH). Answers with return_code
SUCCESS are signed with the sign type the request used.

Charges follow the engine's amount table; in QPay's words: 00 SUCCESS; 01 err_code NOTENOUGH;
02/03 USERPAYING; 04 held answer; 05/06 connection closed after commit; 07/08 SYSTEMERROR. A
repeat: paid -> ORDERPAID, closed -> ORDERCLOSED (ORDERREVERSED after a reverse), another amount ->
OUT_TRADE_NO_USED. Query answers trade_state SUCCESS / REFUND / USERPAYING / CLOSED / REVOKED /
PAYERROR, or err_code ORDERNOTEXIST. Close answers ORDERPAID for a paid trade and ORDERNOTEXIST
for an unknown one; reverse closes any trade (a paid one is refunded in full) and records an
unknown out_trade_no as reversed, so a later pay is refused: the fence.

Deviations, and why:
  * No HTTPS and no client certificate: refund and reverse need a merchant certificate (mTLS) at
    api.qpay.qq.com; loopback HTTP cannot check one, so the operator password is the only
    credential checked there. The connector does present a configured certificate.
  * Payment notifications only (POST of the signed micropay result to notify_url; the ack is
    ``<xml><return_code>SUCCESS</return_code></xml>``): no QPay refund notification was found in
    its documentation, so none is sent.
  * Error-code tables were not retrievable from the stored QPay pages: the err_codes used are the
    WeChat Pay v2 codes QPay's merchant API mirrors (SYSTEMERROR, USERPAYING, NOTENOUGH, ORDERPAID,
    ORDERCLOSED, ORDERREVERSED, ORDERNOTEXIST, REFUNDNOTEXIST, INVALID_REQUEST for a refund over
    the refundable amount, INVALID_REQ_TOO_MUCH for too many refunds). Bill-download errors answer
    ``<xml><return_code>FAIL</return_code><retcode>-1</retcode><retmsg>..</retmsg></xml>``; the
    retcode numbers are the sandbox's.
  * The bill follows the column layout of a published QPay bill sample (30 detail columns,
    a 9-column summary, amounts in yuan, ids prefixed with a backtick; here every detail cell is).
    Its day is the ledger's UTC day, while its times are written in Beijing time.
  * Query, refund and refund query find the trade by out_trade_no (transaction_id alone is not
    looked up).
"""
from __future__ import annotations

import re
from datetime import date, datetime
from typing import Awaitable, Callable, Mapping

from aiohttp import web

from channels.base import ProtocolError
from channels.qpay import signing, transformers as tf
from channels.sandbox.engine import (SANDBOX, ChannelSandbox, Event, Outcome, SandboxConfig,
                                     dropped_response, parse_day)
from channels.sandbox.ledger import (REFUSE_AMOUNT, REFUSE_CONFLICT, REFUSE_NOT_PAID,
                                     REFUSE_TOO_MANY, LedgerFull, Refund, RefundRefused,
                                     RefundState, Trade, TradeStatus)
from channels.sandbox.notifier import Delivery

MCH_ID = "1900000109"                                 # core.settings QPaySettings defaults
API_KEY = "paycellSandboxQPayKey0123456789ab"
OP_USER_PASSWD = "paycellSandboxOperator"
FORGER_KEY = "notTheMerchantKeyNotTheMerchantK"       # what a forged notification is signed with
OPENID = "B6D3B5D7E6A5F0A1C2D3E4F5A6B7C8D9"
AUTH_CODE = re.compile(r"91[0-9]{16}")
OUT_NO_MAX_CHARS = 32
AMOUNT_FEN_MAX = 10_000_000_000
FEE_PER_MILLE = 6                                     # the bill's 手续费: 0.60 %
XML_CONTENT_TYPE = "text/xml"
TRADE_STATE = "trade_state"                           # Trade.extra key: how a closed trade ended
BILL_TIME = "%Y-%m-%d %H:%M:%S"


def qpay_ack(status: int, body: bytes) -> bool:
    """QPay's rule for a notification's answer: HTTP 200 and return_code SUCCESS."""
    try:
        return status == 200 and signing.parse_xml(body).get("return_code") == tf.SUCCESS
    except ProtocolError:
        return False


class QPaySandbox(ChannelSandbox):
    name = "qpay"
    trade_no_prefix = "10001"

    def __init__(self, config: SandboxConfig, mch_id: str = MCH_ID, api_key: str = API_KEY,
                 op_user_passwd: str = OP_USER_PASSWD) -> None:
        super().__init__(config)
        self.mch_id, self.api_key = mch_id, api_key
        self.op_passwd_md5 = signing.operator_password(op_user_passwd)
        self.refund_index: dict[str, str] = {}        # out_refund_no -> out_trade_no

    def add_routes(self, app: web.Application) -> None:
        for path, (handler, required, operator) in ROUTES.items():
            app.router.add_post(path, endpoint(handler, required, operator))

    # ---- answers ------------------------------------------------------------------------------

    def _nonce(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def refuse(self, msg: str) -> web.Response:
        """The gateway's unsigned refusal (bad XML, merchant or signature)."""
        body = signing.to_xml({"return_code": tf.FAIL, "return_msg": msg})
        return web.Response(body=body, content_type=XML_CONTENT_TYPE, charset="utf-8")

    def answer(self, req: Mapping[str, str], result: Mapping[str, str]) -> web.Response:
        fields = {"return_code": tf.SUCCESS, "return_msg": "OK", "retcode": "0", "retmsg": "ok",
                  "mch_id": self.mch_id, "nonce_str": self._nonce(), **result}
        signed = signing.sign_params(fields, self.api_key,
                                     req.get("sign_type") or signing.SIGN_MD5)
        return web.Response(body=signing.to_xml(signed), content_type=XML_CONTENT_TYPE,
                            charset="utf-8")

    def ok(self, req: Mapping[str, str], payload: Mapping[str, str]) -> web.Response:
        return self.answer(req, {"result_code": tf.SUCCESS, **payload})

    def err(self, req: Mapping[str, str], code: str, des: str,
            payload: Mapping[str, str] | None = None) -> web.Response:
        return self.answer(req, {"result_code": tf.FAIL, "err_code": code, "err_code_des": des,
                                 **(payload or {})})

    def check(self, fields: Mapping[str, str], required: tuple[str, ...],
              operator: bool) -> web.Response | None:
        """QPay's refusal of a malformed, foreign or badly signed request, or None."""
        if fields.get("mch_id") != self.mch_id:
            return self.refuse("商户号不存在")
        if not 0 < len(fields.get("nonce_str", "")) <= 32:
            return self.refuse("nonce_str 错误")
        if (fields.get("sign_type") or signing.SIGN_MD5) not in signing.SIGN_TYPES:
            return self.refuse("签名类型错误")
        if not signing.verify(fields, self.api_key):
            return self.refuse("签名错误")
        missing = [name for name in required if not fields.get(name)]
        if missing:
            return self.err(fields, "LACK_PARAMS", f"缺少参数 {missing[0]}")
        if any(len(fields.get(k, "")) > OUT_NO_MAX_CHARS for k in ("out_trade_no", "out_refund_no")):
            return self.err(fields, "PARAM_ERROR", "商户单号超长")
        if operator and (fields.get("op_user_id") != self.mch_id
                         or fields.get("op_user_passwd") != self.op_passwd_md5):
            return self.err(fields, "NOAUTH", "操作员帐号或密码错误")
        return None

    # ---- notifications ------------------------------------------------------------------------

    def build_notification(self, trade: Trade, event: Event, refund: Refund | None,
                           notify_id: str, *, forged: bool = False) -> Delivery | None:
        if event is not Event.PAID or trade.status is not TradeStatus.PAID:
            return None                  # QPay notifies payment results only
        fields = {"mch_id": self.mch_id, "nonce_str": notify_id, **paid_fields(trade)}
        signed = signing.sign_params(fields, FORGER_KEY if forged else self.api_key)
        return Delivery(trade.out_trade_no, trade.notify_url, signing.to_xml(signed),
                        {"Content-Type": "text/xml; charset=utf-8"}, qpay_ack, event.value)


# ---- shared renderings -----------------------------------------------------------------------

def paid_fields(trade: Trade) -> dict[str, str]:
    assert trade.paid is not None
    amount = str(trade.total_amount)
    return {"trade_type": tf.TRADE_TYPE_MICROPAY, "trade_state": trade_state(trade),
            "bank_type": "BALANCE", "fee_type": tf.CURRENCY, "total_fee": amount,
            "cash_fee": amount, "coupon_fee": "0", "transaction_id": trade.trade_no,
            "out_trade_no": trade.out_trade_no, "time_end": tf.qpay_time(trade.paid),
            "openid": OPENID}


def trade_state(trade: Trade) -> str:
    assert trade.status is not None
    if trade.status is TradeStatus.PAID:
        refunded = any(r.state is not RefundState.FAILED for r in trade.refund_list.values())
        return "REFUND" if refunded else "SUCCESS"
    if trade.status is TradeStatus.WAITING:
        return "USERPAYING"
    return trade.extra.get(TRADE_STATE, "CLOSED")


def _amount(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        return None
    value = int(text)
    return value if 0 < value <= AMOUNT_FEN_MAX else None


# ---- handlers --------------------------------------------------------------------------------

Fields = dict[str, str]
Handler = Callable[[web.Request, QPaySandbox, Fields], Awaitable[web.StreamResponse]]


def endpoint(handler: Handler, required: tuple[str, ...], operator: bool) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    async def run(request: web.Request) -> web.StreamResponse:
        sb = request.app[SANDBOX]
        assert isinstance(sb, QPaySandbox)
        await sb.delay()
        try:
            fields = signing.parse_xml(await request.read())
        except ProtocolError:
            return sb.refuse("XML格式错误")
        refusal = sb.check(fields, required, operator)
        if refusal is not None:
            return refusal
        if handler is not micropay and sb.error_now(followup=handler in FOLLOWUPS):
            return sb.err(fields, tf.ERR_SYSTEMERROR, "系统错误")
        return await handler(request, sb, fields)
    return run


async def micropay(request: web.Request, sb: QPaySandbox, f: Fields) -> web.StreamResponse:
    amount = _amount(f["total_fee"])
    if amount is None or f.get("fee_type", tf.CURRENCY) != tf.CURRENCY:
        return sb.err(f, "PARAM_ERROR", "total_fee 或 fee_type 错误")
    if not AUTH_CODE.fullmatch(f["auth_code"]):
        return sb.err(f, "AUTH_CODE_INVALID", "付款码无效")
    trade = sb.trade_for_charge(f["out_trade_no"], amount, tf.CURRENCY)
    outcome = await sb.charge(request, trade, amount, tf.CURRENCY, subject=f["body"],
                              notify_url=f.get("notify_url", ""), payer=OPENID,
                              payment_type="barcode")
    if outcome is Outcome.DROPPED:
        return dropped_response()
    if trade is None or outcome in (Outcome.ERROR, Outcome.FULL):
        return sb.err(f, tf.ERR_SYSTEMERROR, "系统超时，请查询订单")
    if outcome is Outcome.PAID:
        return sb.ok(f, {"device_info": f.get("device_info", ""), **paid_fields(trade)})
    if outcome is Outcome.WAITING:
        return sb.err(f, tf.ERR_USERPAYING, "需要用户输入支付密码",
                      {"out_trade_no": trade.out_trade_no})
    if outcome is Outcome.DECLINED:
        trade.extra[TRADE_STATE] = "PAYERROR"
        return sb.err(f, "NOTENOUGH", "余额不足")
    if outcome is Outcome.ALREADY_PAID:
        return sb.err(f, tf.ERR_ORDERPAID, "订单已支付")
    if outcome is Outcome.ALREADY_CLOSED:
        if trade.extra.get(TRADE_STATE) == "REVOKED":
            return sb.err(f, tf.ERR_ORDERREVERSED, "订单已撤销")
        return sb.err(f, tf.ERR_ORDERCLOSED, "订单已关闭")
    assert outcome is Outcome.MISMATCH, outcome
    return sb.err(f, "OUT_TRADE_NO_USED", "商户订单号重复")


def _known(sb: QPaySandbox, out_trade_no: str) -> Trade | None:
    trade = sb.ledger.get(out_trade_no)
    return trade if trade is not None and trade.exists else None


async def query(request: web.Request, sb: QPaySandbox, f: Fields) -> web.StreamResponse:
    trade = _known(sb, f["out_trade_no"])
    if trade is None:
        return sb.err(f, tf.ERR_ORDERNOTEXIST, "订单不存在")
    trade.query_calls += 1
    if trade.paid is not None and trade.status is TradeStatus.PAID:
        return sb.ok(f, paid_fields(trade))
    out = {"trade_state": trade_state(trade), "out_trade_no": trade.out_trade_no,
           "transaction_id": trade.trade_no, "fee_type": tf.CURRENCY,
           "total_fee": str(trade.total_amount), "trade_type": tf.TRADE_TYPE_MICROPAY}
    return sb.ok(f, out)


async def close_order(request: web.Request, sb: QPaySandbox, f: Fields) -> web.StreamResponse:
    trade = _known(sb, f["out_trade_no"])
    if trade is None:
        return sb.err(f, tf.ERR_ORDERNOTEXIST, "订单不存在")
    if trade.status is TradeStatus.CLOSED:
        if trade.extra.get(TRADE_STATE) == "REVOKED":
            return sb.err(f, tf.ERR_ORDERREVERSED, "订单已撤销")
        return sb.err(f, tf.ERR_ORDERCLOSED, "订单已关闭")
    if sb.close_trade(trade, reverse_paid=False) == "paid":
        return sb.err(f, tf.ERR_ORDERPAID, "订单已支付，不能关闭")
    return sb.ok(f, {"out_trade_no": trade.out_trade_no})


async def reverse(request: web.Request, sb: QPaySandbox, f: Fields) -> web.StreamResponse:
    try:
        trade = sb.ledger.ensure(f["out_trade_no"], 0)
    except LedgerFull:
        return sb.err(f, tf.ERR_SYSTEMERROR, "系统错误", {"recall": "Y"})
    if trade.status is not TradeStatus.CLOSED:
        sb.close_trade(trade, reverse_paid=True)
        trade.extra[TRADE_STATE] = "REVOKED"
    else:
        trade.cancel_calls += 1
    return sb.ok(f, {"recall": "N"})


_REFUSALS = {
    REFUSE_NOT_PAID: ("INVALID_REQUEST", "订单未支付，不能退款"),
    REFUSE_AMOUNT: ("INVALID_REQUEST", "退款金额大于可退金额"),
    REFUSE_TOO_MANY: ("INVALID_REQ_TOO_MUCH", "退款次数超过限制"),
    REFUSE_CONFLICT: ("INVALID_REQUEST", "退款单号已使用，退款金额不一致"),
}


async def refund(request: web.Request, sb: QPaySandbox, f: Fields) -> web.StreamResponse:
    amount = _amount(f["refund_fee"])
    if amount is None:
        return sb.err(f, "PARAM_ERROR", "refund_fee 错误")
    trade = _known(sb, f["out_trade_no"])
    if trade is None:
        return sb.err(f, tf.ERR_ORDERNOTEXIST, "订单不存在")
    if f.get("transaction_id") and f["transaction_id"] != trade.trade_no:
        return sb.err(f, "INVALID_TRANSACTIONID", "QQ钱包订单号与商户订单号不符")
    try:
        done = sb.refund(trade, f["out_refund_no"], amount)
    except RefundRefused as e:
        return sb.err(f, *_REFUSALS[e.reason])
    sb.refund_index[done.out_refund_no] = trade.out_trade_no
    return sb.ok(f, {"transaction_id": trade.trade_no, "out_trade_no": trade.out_trade_no,
                     "total_fee": str(trade.total_amount), "out_refund_no": done.out_refund_no,
                     "refund_id": done.refund_no, "refund_channel": "ORIGINAL",
                     "refund_fee": str(done.amount)})


_REFUND_STATUS = {RefundState.SUCCESS: "SUCCESS", RefundState.PROCESSING: "PROCESSING",
                  RefundState.FAILED: "FAIL"}


async def refund_query(request: web.Request, sb: QPaySandbox, f: Fields) -> web.StreamResponse:
    out_refund_no = f.get("out_refund_no", "")
    trade = _known(sb, f.get("out_trade_no") or sb.refund_index.get(out_refund_no, ""))
    refunds = [] if trade is None else (
        [trade.refund_list[out_refund_no]] if out_refund_no in trade.refund_list
        else [] if out_refund_no else list(trade.refund_list.values()))
    if trade is None or not refunds:
        return sb.err(f, tf.ERR_REFUNDNOTEXIST, "退款单不存在")
    out = {"transaction_id": trade.trade_no, "out_trade_no": trade.out_trade_no,
           "total_fee": str(trade.total_amount), "cash_fee": str(trade.total_amount),
           "fee_type": tf.CURRENCY, "refund_count": str(len(refunds))}
    for n, r in enumerate(refunds):
        out |= {f"out_refund_no_{n}": r.out_refund_no, f"refund_id_{n}": r.refund_no,
                f"refund_channel_{n}": "ORIGINAL", f"refund_fee_{n}": str(r.amount),
                f"coupon_refund_fee_{n}": "0", f"cash_refund_fee_{n}": str(r.amount),
                f"refund_status_{n}": _REFUND_STATUS[r.state]}
    return sb.ok(f, out)


async def statement(request: web.Request, sb: QPaySandbox, f: Fields) -> web.StreamResponse:
    day = parse_day(f["bill_date"], tf.BILL_DATE_FORMAT)
    if day is None or f.get("bill_type", "ALL") != "ALL":
        body = signing.to_xml({"return_code": tf.FAIL, "retcode": "-1",
                               "retmsg": "bill_date 或 bill_type 错误"})
        return web.Response(body=body, content_type=XML_CONTENT_TYPE, charset="utf-8")
    return web.Response(body=bill(sb, day), content_type="text/plain", charset="utf-8")


def _bill_time(at: datetime) -> str:
    return at.astimezone(tf.BEIJING).strftime(BILL_TIME)


def bill(sb: QPaySandbox, day: date) -> bytes:
    """The day's ALL bill in QPay's layout (see transformers.BILL_COLUMNS)."""
    rows: list[dict[str, str]] = []
    paid_total = refunded_total = fees = 0
    for r in sb.ledger.statement(day):
        t = r.trade
        row = {"交易时间": _bill_time(r.at), "商户号": sb.mch_id, "用户标识": OPENID,
               "支付场景": tf.TRADE_TYPE_MICROPAY, "商户订单号": t.out_trade_no,
               "QQ钱包订单号": t.trade_no, "付款银行": "财付通余额", "货币种类": "RMB",
               "商户优惠金额(元)": "0.00", "QQ钱包优惠金额(元)": "0.00", "商品名称": t.subject,
               "费率": "0.60%"}
        if r.refund is None:
            fee = (t.total_amount * FEE_PER_MILLE + 500) // 1000
            paid_total, fees = paid_total + t.total_amount, fees + fee
            amount = tf.fen_to_yuan(t.total_amount)
            row |= {"订单金额(元)": amount, "商户应收金额(元)": amount, "用户支付金额(元)": amount,
                    "交易状态": "支付成功", "手续费金额(元)": tf.fen_to_yuan(fee)}
        else:
            refunded_total += r.refund.amount
            assert r.refund.finished is not None
            row |= {"订单金额(元)": "0.00", "商户应收金额(元)": "0.00", "用户支付金额(元)": "0.00",
                    "交易状态": "转入退款", "退款提交时间": _bill_time(r.refund.created),
                    "商户退款订单号": r.refund.out_refund_no,
                    "QQ钱包退款订单号": r.refund.refund_no,
                    "退款金额(元)": tf.fen_to_yuan(r.refund.amount),
                    "退还QQ钱包优惠金额(元)": "0.00", "退款状态": "退款成功",
                    "退款成功时间": _bill_time(r.refund.finished), "退款方式": "ORIGINAL",
                    "手续费金额(元)": "0.00"}
        rows.append(row)
    paid = tf.fen_to_yuan(paid_total)
    summary = {"交易总笔数": str(len(rows)), "订单总金额(元)": paid, "商户优惠总金额(元)": "0.00",
               "商户应收总金额(元)": paid, "QQ钱包优惠总金额(元)": "0.00", "用户支付总金额(元)": paid,
               "退款总金额(元)": tf.fen_to_yuan(refunded_total), "退还QQ钱包优惠总金额(元)": "0.00",
               "手续费总金额(元)": tf.fen_to_yuan(fees)}
    return tf.render_statement(rows, summary)


# path -> (handler, required fields, operator credentials needed)
FOLLOWUPS = frozenset({query, close_order, reverse})   # followup_error_rate fails these too
ROUTES: dict[str, tuple[Handler, tuple[str, ...], bool]] = {
    tf.PATH_MICROPAY: (micropay, ("out_trade_no", "body", "total_fee", "spbill_create_ip",
                                  "auth_code"), False),
    tf.PATH_QUERY: (query, ("out_trade_no",), False),
    tf.PATH_CLOSE: (close_order, ("out_trade_no",), False),
    tf.PATH_REVERSE: (reverse, ("out_trade_no", "op_user_id", "op_user_passwd"), True),
    tf.PATH_REFUND: (refund, ("out_trade_no", "out_refund_no", "refund_fee", "op_user_id",
                              "op_user_passwd"), True),
    tf.PATH_REFUND_QUERY: (refund_query, ("out_refund_no",), False),
    tf.PATH_STATEMENT: (statement, ("bill_date",), False),
}
