"""The WeChat Pay v3 sandbox's endpoints over the shared engine (see channels.sandbox.wechatpay
for what they check and how each engine Outcome is worded)."""
from __future__ import annotations

import gzip
import hashlib
import re
import secrets
import time
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from channels.sandbox.engine import SANDBOX, Outcome, dropped_response, parse_day
from channels.sandbox.ledger import (REFUSE_AMOUNT, REFUSE_CONFLICT, REFUSE_NOT_PAID,
                                     REFUSE_TOO_MANY, LedgerFull, RefundRefused, StatementRow)
from channels.sandbox.wechatpay import (BILL_URL_VALID_S, BILLS_KEPT_MAX, OPENID, TRADE_TYPES,
                                        BillFile, WechatPaySandbox)
from channels.wechatpay import bill, transformers as tf

AMOUNT_FEN_MAX = 10_000_000_000
OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-*|]{1,32}")
OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-*|@]{1,64}")
AUTH_CODE = re.compile(r"1[0-5][0-9]{16}")       # 18 digits starting 10..15 (付款码规则)
FEE_PER_MILLE = 6                                # 0.60 %
REFUSALS = {
    REFUSE_AMOUNT: "申请退款金额超过订单可退金额",
    REFUSE_TOO_MANY: "订单退款次数超过限制",
    REFUSE_CONFLICT: "订单金额或退款金额与之前请求不一致，请核实后再试",
    REFUSE_NOT_PAID: "订单状态不正确，不能退款",
}

Handler = Callable[[web.Request, WechatPaySandbox, dict[str, Any]],
                   Awaitable[web.StreamResponse]]


def _sandbox(request: web.Request) -> WechatPaySandbox:
    sb = request.app[SANDBOX]
    assert isinstance(sb, WechatPaySandbox)
    return sb


def signed(handler: Handler, needs_body: bool = True) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler: latency knob, Authorization check, JSON object body (POST)."""
    async def run(request: web.Request) -> web.StreamResponse:
        sb = _sandbox(request)
        await sb.delay()
        body = await request.read()
        refusal = sb.check_auth(request, body)
        if refusal is not None:
            return refusal
        data: Any = {}
        if needs_body:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                return sb.error(400, "PARAM_ERROR", "请求体不是合法的JSON对象")
        return await handler(request, sb, data)
    return run


def _merchant_error(sb: WechatPaySandbox, data: dict[str, Any],
                    with_appid: bool = True) -> web.Response | None:
    if data.get("mchid") != sb.mchid:
        return sb.error(400, "MCH_NOT_EXISTS", "商户号不存在")
    if with_appid and data.get("appid") != sb.appid:
        return sb.error(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
    return None


def _order(sb: WechatPaySandbox, data: dict[str, Any]) -> tuple[str, int, str] | web.Response:
    """(out_trade_no, amount, description) of a valid order body, or the refusal."""
    refusal = _merchant_error(sb, data)
    if refusal is not None:
        return refusal
    otn, desc, amount = data.get("out_trade_no"), data.get("description"), data.get("amount")
    if not isinstance(otn, str) or OUT_TRADE_NO.fullmatch(otn) is None:
        return sb.error(400, "PARAM_ERROR", "out_trade_no 格式错误")
    if not isinstance(desc, str) or not desc:
        return sb.error(400, "PARAM_ERROR", "description 不能为空")
    total = amount.get("total") if isinstance(amount, dict) else None
    if (not isinstance(total, int) or isinstance(total, bool) or not 0 < total <= AMOUNT_FEN_MAX
            or amount.get("currency", tf.CURRENCY) != tf.CURRENCY):  # type: ignore[union-attr]
        return sb.error(400, "PARAM_ERROR", "amount 格式错误")
    return otn, total, desc


# ---- payments -------------------------------------------------------------------------------

async def codepay(request: web.Request, sb: WechatPaySandbox,
                  data: dict[str, Any]) -> web.StreamResponse:
    order = _order(sb, data)
    if isinstance(order, web.Response):
        return order
    otn, amount, desc = order
    payer, scene = data.get("payer"), data.get("scene_info")
    code = payer.get("auth_code") if isinstance(payer, dict) else None
    if not isinstance(code, str) or AUTH_CODE.fullmatch(code) is None:
        return sb.error(400, "PARAM_ERROR", "付款码无效，请重新扫码")
    if not isinstance(scene, dict) or not isinstance(scene.get("store_info"), dict):
        return sb.error(400, "PARAM_ERROR", "scene_info.store_info 不能为空")
    trade = sb.trade_for_charge(otn, amount, tf.CURRENCY)
    outcome = await sb.charge(request, trade, amount, tf.CURRENCY, subject=desc,
                              notify_url=str(data.get("notify_url") or ""), payer=OPENID,
                              payment_type="barcode")
    if outcome is Outcome.DROPPED:
        return dropped_response()
    if outcome is Outcome.PAID:
        assert trade is not None
        return sb.answer(200, sb.transaction(trade))
    if outcome is Outcome.WAITING:
        return sb.error(202, "USERPAYING", "用户支付中，需要输入密码")
    if outcome is Outcome.DECLINED:
        assert trade is not None
        trade.extra["trade_state"] = "PAYERROR"
        return sb.error(403, "NOT_ENOUGH", "用户余额不足")
    return _charge_refusal(sb, outcome)


def _charge_refusal(sb: WechatPaySandbox, outcome: Outcome) -> web.Response:
    if outcome is Outcome.ALREADY_PAID:
        return sb.error(400, "ORDERPAID", "订单已支付")
    if outcome is Outcome.ALREADY_CLOSED:
        return sb.error(400, "ORDER_CLOSED", "订单已关闭")
    if outcome is Outcome.MISMATCH:
        return sb.error(403, "OUT_TRADE_NO_USED", "商户订单号重复")
    return sb.error(500, "SYSTEM_ERROR", "系统错误")


def prepay(kind: str) -> Handler:
    async def handle(request: web.Request, sb: WechatPaySandbox,
                     data: dict[str, Any]) -> web.StreamResponse:
        order = _order(sb, data)
        if isinstance(order, web.Response):
            return order
        otn, amount, desc = order
        notify_url = data.get("notify_url")
        if not isinstance(notify_url, str) or not notify_url.startswith(("http://", "https://")):
            return sb.error(400, "PARAM_ERROR", "notify_url 格式错误")
        trade = sb.trade_for_charge(otn, amount, tf.CURRENCY)
        outcome = await sb.charge(request, trade, amount, tf.CURRENCY, prepay=True, subject=desc,
                                  notify_url=notify_url, payment_type=kind)
        if outcome is not Outcome.WAITING or trade is None:
            return _charge_refusal(sb, outcome)
        if kind == "app":
            prepay_id = trade.extra.setdefault(
                "prepay_id", f"wx{sb.now():%d%H%M%S}{sb.rng.getrandbits(88):022x}")
            return sb.answer(200, {"prepay_id": prepay_id})
        code_url = trade.extra.setdefault(
            "code_url", f"weixin://wxpay/bizpayurl?pr={sb.random_text(7)}")
        return sb.answer(200, {"code_url": code_url})
    return handle


async def query(request: web.Request, sb: WechatPaySandbox,
                data: dict[str, Any]) -> web.StreamResponse:
    if request.query.get("mchid") != sb.mchid:
        return sb.error(400, "PARAM_ERROR", "mchid 与请求方商户号不一致")
    if sb.error_now(followup=True):
        return sb.error(500, "SYSTEM_ERROR", "系统错误")
    trade = sb.ledger.get(request.match_info["out_trade_no"])
    if trade is None or not trade.exists:
        return sb.error(404, tf.CODE_ORDER_NOT_EXIST, "订单不存在")
    trade.query_calls += 1
    return sb.answer(200, sb.transaction(trade))


async def close(request: web.Request, sb: WechatPaySandbox,
                data: dict[str, Any]) -> web.StreamResponse:
    refusal = _merchant_error(sb, data, with_appid=False)
    if refusal is not None:
        return refusal
    if sb.error_now(followup=True):
        return sb.error(500, "SYSTEM_ERROR", "系统错误")
    try:
        trade = sb.ledger.ensure(request.match_info["out_trade_no"], 0)
    except LedgerFull:
        return sb.error(500, "SYSTEM_ERROR", "系统错误")
    if sb.close_trade(trade, reverse_paid=False) == "paid":
        return sb.error(400, tf.CODE_ORDER_PAID, "订单已支付")
    return sb.answer(204)


async def reverse(request: web.Request, sb: WechatPaySandbox,
                  data: dict[str, Any]) -> web.StreamResponse:
    refusal = _merchant_error(sb, data)
    if refusal is not None:
        return refusal
    if sb.error_now(followup=True):
        return sb.error(500, "SYSTEM_ERROR", "系统错误")
    otn = request.match_info["out_trade_no"]
    try:
        trade = sb.ledger.ensure(otn, 0)
    except LedgerFull:
        return sb.error(500, "SYSTEM_ERROR", "系统错误")
    if trade.exists and trade.payment_type not in ("", "barcode"):
        return sb.error(400, "INVALID_REQUEST", "非付款码支付订单不可撤销")
    sb.close_trade(trade, reverse_paid=True)
    trade.extra["trade_state"] = "REVOKED"
    return sb.answer(200, {"appid": sb.appid, "mchid": sb.mchid, "out_trade_no": otn})


# ---- refunds --------------------------------------------------------------------------------

async def refund(request: web.Request, sb: WechatPaySandbox,
                 data: dict[str, Any]) -> web.StreamResponse:
    out_refund_no, amount = data.get("out_refund_no"), data.get("amount")
    if not isinstance(out_refund_no, str) or OUT_REFUND_NO.fullmatch(out_refund_no) is None:
        return sb.error(400, "PARAM_ERROR", "out_refund_no 格式错误")
    if not isinstance(amount, dict) or amount.get("currency", tf.CURRENCY) != tf.CURRENCY:
        return sb.error(400, "PARAM_ERROR", "amount 格式错误")
    value, total = amount.get("refund"), amount.get("total")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (value, total)):
        return sb.error(400, "PARAM_ERROR", "amount.refund / amount.total 格式错误")
    trade = None
    if isinstance(data.get("out_trade_no"), str):
        trade = sb.ledger.get(data["out_trade_no"])
    elif isinstance(data.get("transaction_id"), str):
        trade = next((t for t in sb.ledger.trades.values()
                      if t.trade_no == data["transaction_id"]), None)
    if trade is None or not trade.exists:
        return sb.error(404, tf.CODE_RESOURCE_NOT_EXISTS, "订单不存在")
    if total != trade.total_amount:
        return sb.error(400, "INVALID_REQUEST", REFUSALS[REFUSE_CONFLICT])
    if sb.error_now():
        return sb.error(500, "SYSTEM_ERROR", "系统错误")
    try:
        made = sb.refund(trade, out_refund_no, value, str(data.get("notify_url") or ""))  # type: ignore[arg-type]
    except RefundRefused as e:
        return sb.error(400, "INVALID_REQUEST", REFUSALS.get(e.reason, "退款请求失败"))
    sb.refund_index[out_refund_no] = trade.out_trade_no
    return sb.answer(200, sb.refund_object(trade, made))


async def refund_query(request: web.Request, sb: WechatPaySandbox,
                       data: dict[str, Any]) -> web.StreamResponse:
    if sb.error_now():
        return sb.error(500, "SYSTEM_ERROR", "系统错误")
    found = sb.find_refund(request.match_info["out_refund_no"])
    if found is None:
        return sb.error(404, tf.CODE_RESOURCE_NOT_EXISTS, "退款单不存在")
    return sb.answer(200, sb.refund_object(*found))


# ---- trade bill -----------------------------------------------------------------------------

def _text(value: str) -> str:
    return value.replace(",", "，").replace("`", "'").replace("\n", " ").replace("\r", " ")


def _fee(amount: int) -> int:
    return (amount * FEE_PER_MILLE + 500) // 1000


def bill_row(sb: WechatPaySandbox, row: StatementRow) -> list[str]:
    t, r, y = row.trade, row.refund, tf.fen_to_yuan
    at = row.at.astimezone(tf.BEIJING).strftime(bill.BILL_TIME_FORMAT)
    is_refund = r is not None
    values = [at, sb.appid, sb.mchid, "0", "", t.trade_no, t.out_trade_no, OPENID,
              TRADE_TYPES.get(t.payment_type, "MICROPAY"), "REFUND" if is_refund else "SUCCESS",
              "OTHERS", t.currency, y(0 if is_refund else t.total_amount), "0.00",
              r.refund_no if r else "0", r.out_refund_no if r else "0",
              y(r.amount if r else 0), "0.00", "ORIGINAL" if r else "", "SUCCESS" if r else "",
              _text(t.subject), "", y(0 if is_refund else _fee(t.total_amount)), "0.60%",
              y(0 if is_refund else t.total_amount), y(r.amount if r else 0), ""]
    assert len(values) == len(bill.BILL_HEADER)
    return values


def render_bill(sb: WechatPaySandbox, rows: list[StatementRow]) -> bytes:
    """The ALL trade bill: header, backtick-prefixed rows, summary header and row (yuan)."""
    body = [bill_row(sb, row) for row in rows]
    sums = [sum(bill.yuan_to_fen(b[bill.COL[name]]) for b in body) for name in bill.SUMMED_COLUMNS]
    summary = [str(len(body))] + [tf.fen_to_yuan(s) for s in sums]
    lines = [",".join(bill.BILL_HEADER)] + [",".join("`" + v for v in b) for b in body]
    lines += [",".join(bill.SUMMARY_HEADER), ",".join("`" + v for v in summary)]
    return ("\n".join(lines) + "\n").encode("utf-8")


async def tradebill(request: web.Request, sb: WechatPaySandbox,
                    data: dict[str, Any]) -> web.StreamResponse:
    day = parse_day(request.query.get("bill_date", ""))
    tar_type = request.query.get("tar_type", "")
    if day is None or tar_type not in ("", "GZIP"):
        return sb.error(400, "PARAM_ERROR", "bill_date 或 tar_type 格式错误")
    if request.query.get("bill_type", "ALL") != "ALL":
        return sb.error(400, "PARAM_ERROR", "本沙箱仅提供 bill_type=ALL")
    if sb.error_now():
        return sb.error(500, "SYSTEM_ERROR", "系统错误")
    rows = sb.ledger.statement(day)
    if not rows:
        return sb.error(400, tf.CODE_NO_STATEMENT, "账单文件不存在")
    bill = render_bill(sb, rows)
    token = secrets.token_urlsafe(24)
    while len(sb.bills) >= BILLS_KEPT_MAX:
        del sb.bills[next(iter(sb.bills))]
    sb.bills[token] = BillFile(gzip.compress(bill) if tar_type else bill,
                               time.monotonic() + BILL_URL_VALID_S)
    raw_path = request.raw_path
    prefix = raw_path[:raw_path.find("/v3/")]
    url = f"{request.scheme}://{request.host}{prefix}/v3/billdownload/file?token={token}"
    return sb.answer(200, {"hash_type": "SHA1", "hash_value": hashlib.sha1(bill).hexdigest(),
                           "download_url": url})


async def billdownload(request: web.Request, sb: WechatPaySandbox,
                       data: dict[str, Any]) -> web.StreamResponse:
    bill = sb.bills.get(request.query.get("token", ""))
    if bill is None or time.monotonic() > bill.expires_s:
        return sb.error(400, "INVALID_REQUEST", "下载链接已失效，请重新申请")
    return web.Response(body=bill.body, content_type="application/octet-stream")   # unsigned


def add_routes(app: web.Application) -> None:
    base = "/v3/pay/transactions"
    app.router.add_post(f"{base}/codepay", signed(codepay))
    app.router.add_post(f"{base}/app", signed(prepay("app")))
    app.router.add_post(f"{base}/native", signed(prepay("native")))
    app.router.add_get(f"{base}/out-trade-no/{{out_trade_no}}", signed(query, False))
    app.router.add_post(f"{base}/out-trade-no/{{out_trade_no}}/close", signed(close))
    app.router.add_post(f"{base}/out-trade-no/{{out_trade_no}}/reverse", signed(reverse))
    app.router.add_post(tf.PATH_REFUNDS, signed(refund))
    app.router.add_get(f"{tf.PATH_REFUNDS}/{{out_refund_no}}", signed(refund_query, False))
    app.router.add_get(tf.PATH_TRADEBILL, signed(tradebill, False))
    app.router.add_get("/v3/billdownload/file", signed(billdownload, False))

