"""The Alipay sandbox's methods over the shared engine: alipay.trade.pay, .query, .cancel,
.refund, alipay.trade.fastpay.refund.query and alipay.data.dataservice.bill.downloadurl.query.

The pay outcome table (amount in fen, last two digits) is documented in channels.sandbox.engine.
Refund refusals in Alipay's words (40004 sub_codes): the trade is unknown -> ACQ.TRADE_NOT_EXIST;
not paid (closed, waiting, reversed) -> ACQ.TRADE_STATUS_ERROR; more than what is left ->
ACQ.REASON_TRADE_REFUND_FEE_ERR; a partial refund without out_request_no ->
ACQ.REFUND_AMT_NOT_EQUAL_TOTAL; past the sandbox's refund count -> ACQ.TRADE_NOT_ALLOW_REFUND;
an out_request_no reused with another amount -> ACQ.DISCORDANT_REPEAT_REQUEST. A repeat of a
refund answers 10000 with fund_change "N" (nothing moved again).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from channels.alipay import transformers as tf
from channels.sandbox import replies as r
from channels.sandbox import alipay_bill
from channels.sandbox.engine import Outcome, dropped_response, parse_day
from channels.sandbox.ledger import (REFUSE_AMOUNT, REFUSE_CONFLICT, REFUSE_NOT_PAID,
                                     REFUSE_TOO_MANY, LedgerFull, RefundRefused, RefundState)
from core.money import decimal_str_to_minor

if TYPE_CHECKING:
    from channels.sandbox.alipay import AlipaySandbox

AMOUNT_FEN_MAX = 10_000_000_000          # 100 million yuan, Alipay's single-trade ceiling


def _pay_biz(biz: dict[str, Any]) -> tuple[int, str] | None:
    """(amount in fen, subject) of a valid barcode pay, or None."""
    if biz.get("scene") != "bar_code" or not biz.get("auth_code"):
        return None
    try:
        amount = decimal_str_to_minor(biz.get("total_amount"), tf.CURRENCY)  # type: ignore[arg-type]
    except ValueError:
        return None
    if not 0 < amount <= AMOUNT_FEN_MAX:
        return None
    return amount, str(biz.get("subject") or "")


async def pay(request: web.Request, sb: AlipaySandbox, params: dict[str, str],
              biz: dict[str, Any]) -> web.StreamResponse:
    method = tf.METHOD_PAY
    parsed = _pay_biz(biz)
    if parsed is None:
        return sb.answer(method, r.business("ACQ.INVALID_PARAMETER", "参数无效"))
    amount, subject = parsed
    trade = sb.trade_for_charge(biz["out_trade_no"], amount, tf.CURRENCY)
    outcome = await sb.charge(request, trade, amount, tf.CURRENCY, subject=subject,
                              notify_url=params.get("notify_url", ""), payment_type="barcode")
    if outcome is Outcome.DROPPED:
        return dropped_response()
    assert trade is not None or outcome is Outcome.FULL
    answers: dict[Outcome, Callable[[], dict[str, Any]]] = {
        Outcome.PAID: lambda: r.paid(trade),                    # type: ignore[arg-type]
        Outcome.WAITING: lambda: r.waiting(trade),              # type: ignore[arg-type]
        Outcome.DECLINED: lambda: r.business("ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"),
        Outcome.ERROR: r.unknown_error,
        Outcome.FULL: r.unknown_error,
        Outcome.ALREADY_PAID: lambda: r.business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"),
        Outcome.ALREADY_CLOSED: lambda: r.business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
        Outcome.MISMATCH: lambda: r.business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"),
    }
    return sb.answer(method, answers[outcome]())


async def query(request: web.Request, sb: AlipaySandbox, params: dict[str, str],
                biz: dict[str, Any]) -> web.StreamResponse:
    trade = sb.ledger.get(biz["out_trade_no"])
    if trade is not None:
        trade.query_calls += 1
    if trade is None or not trade.exists:
        return sb.answer(tf.METHOD_QUERY, r.business(tf.SUB_CODE_TRADE_NOT_EXIST, "交易不存在"))
    return sb.answer(tf.METHOD_QUERY, r.queried(trade))


async def cancel(request: web.Request, sb: AlipaySandbox, params: dict[str, str],
                 biz: dict[str, Any]) -> web.StreamResponse:
    try:
        trade = sb.ledger.ensure(biz["out_trade_no"], 0)
    except LedgerFull:
        return sb.answer(tf.METHOD_CANCEL, r.unknown_error())
    action = sb.close_trade(trade, reverse_paid=True)
    return sb.answer(tf.METHOD_CANCEL, r.cancelled(trade, action, sb.now()))


REFUSALS: dict[str, tuple[str, str]] = {
    REFUSE_NOT_PAID: ("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"),
    REFUSE_AMOUNT: ("ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额无效"),
    REFUSE_TOO_MANY: ("ACQ.TRADE_NOT_ALLOW_REFUND", "当前交易不允许退款"),
    REFUSE_CONFLICT: ("ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求"),
}


def _yuan(value: object) -> int | None:
    try:
        amount = decimal_str_to_minor(value, tf.CURRENCY)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None
    return amount if 0 < amount <= AMOUNT_FEN_MAX else None


async def refund(request: web.Request, sb: AlipaySandbox, params: dict[str, str],
                 biz: dict[str, Any]) -> web.StreamResponse:
    method = tf.METHOD_REFUND
    amount = _yuan(biz.get("refund_amount"))
    request_no = biz.get("out_request_no") or biz["out_trade_no"]
    if amount is None or not isinstance(request_no, str) or len(request_no) > 64:
        return sb.answer(method, r.business("ACQ.INVALID_PARAMETER", "参数无效"))
    trade = sb.ledger.get(biz["out_trade_no"])
    if trade is None or not trade.exists:
        return sb.answer(method, r.business(tf.SUB_CODE_TRADE_NOT_EXIST, "交易不存在"))
    if not biz.get("out_request_no") and amount != trade.total_amount:
        return sb.answer(method, r.business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额与订单金额不一致"))
    known = request_no in trade.refund_list
    try:
        done = sb.refund(trade, request_no, amount)
    except RefundRefused as e:
        return sb.answer(method, r.business(*REFUSALS[e.reason]))
    moved = not known and done.state is RefundState.SUCCESS
    return sb.answer(method, r.refunded(trade, done, fund_change=moved))


async def refund_query(request: web.Request, sb: AlipaySandbox, params: dict[str, str],
                       biz: dict[str, Any]) -> web.StreamResponse:
    method = tf.METHOD_REFUND_QUERY
    request_no = biz.get("out_request_no")
    options = biz.get("query_options") or []
    if (not isinstance(request_no, str) or not request_no or not isinstance(options, list)
            or not all(isinstance(o, str) for o in options)):
        return sb.answer(method, r.business("ACQ.INVALID_PARAMETER", "参数无效"))
    trade = sb.ledger.get(biz["out_trade_no"])
    if trade is None or not trade.exists:
        return sb.answer(method, r.business(tf.SUB_CODE_TRADE_NOT_EXIST, "交易不存在"))
    trade.query_calls += 1
    found = trade.refund_list.get(request_no)
    return sb.answer(method, r.refund_queried(trade, request_no, found, frozenset(options)))


async def bill_url(request: web.Request, sb: AlipaySandbox, params: dict[str, str],
                   biz: dict[str, Any]) -> web.StreamResponse:
    """The trade bill's download URL, valid alipay_bill.BILL_URL_VALID_S seconds, served by the
    sandbox's own /downloadBillFile.resource next to the gateway.do that was called."""
    method = tf.METHOD_BILL_URL
    day = parse_day(str(biz.get("bill_date") or ""))
    if biz.get("bill_type") != "trade" or day is None:
        return sb.answer(method, r.invalid("isv.invalid-parameter", "参数无效"))
    if day > datetime.now(timezone.utc).date():
        return sb.answer(method, r.business(tf.SUB_CODE_BILL_NOT_EXIST, "账单不存在"))
    stem = alipay_bill.file_stem(sb.seller_id, day)
    query = urlencode({
        "bizType": "trade", "userId": alipay_bill.account(sb.seller_id), "fileType": "csv.zip",
        "bizDates": f"{day:%Y%m%d}", "downloadFileName": f"{stem}.csv.zip",
        "fileId": f"/trade/{stem}", "timestamp": str(int(sb.now().timestamp() * 1000)),
        "token": sb.bill_tokens.issue(day)})
    base = request.path.rsplit("/", 1)[0]
    url = f"{request.url.origin()}{base}{alipay_bill.DOWNLOAD_PATH}?{query}"
    return sb.answer(method, r.bill_url(url))


Handler = Callable[[web.Request, "AlipaySandbox", dict[str, str], dict[str, Any]],
                   Awaitable[web.StreamResponse]]
HANDLERS: dict[str, Handler] = {
    tf.METHOD_PAY: pay,
    tf.METHOD_QUERY: query,
    tf.METHOD_CANCEL: cancel,
    tf.METHOD_REFUND: refund,
    tf.METHOD_REFUND_QUERY: refund_query,
    tf.METHOD_BILL_URL: bill_url,
}
# Methods whose biz_content must name an out_trade_no.
NEEDS_TRADE_NO = frozenset({tf.METHOD_PAY, tf.METHOD_QUERY, tf.METHOD_CANCEL, tf.METHOD_REFUND,
                            tf.METHOD_REFUND_QUERY})
