"""The Alipay sandbox's trade methods over the shared engine: alipay.trade.pay, .query and .cancel.

The pay outcome table (amount in fen, last two digits) is documented in channels.sandbox.engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from channels.alipay import transformers as tf
from channels.sandbox import replies as r
from channels.sandbox.engine import Outcome, dropped_response
from channels.sandbox.ledger import LedgerFull
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


Handler = Callable[[web.Request, "AlipaySandbox", dict[str, str], dict[str, Any]],
                   Awaitable[web.StreamResponse]]
HANDLERS: dict[str, Handler] = {
    tf.METHOD_PAY: pay,
    tf.METHOD_QUERY: query,
    tf.METHOD_CANCEL: cancel,
}
# Methods whose biz_content must name an out_trade_no.
NEEDS_TRADE_NO = frozenset({tf.METHOD_PAY, tf.METHOD_QUERY, tf.METHOD_CANCEL})
