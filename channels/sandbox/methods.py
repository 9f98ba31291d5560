"""The sandbox's trade methods: alipay.trade.pay, .query and .cancel over the ledger.

The pay outcome table (amount in fen, last two digits) is documented in channels.sandbox.alipay.
"""
from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from channels.alipay import transformers as tf
from channels.sandbox import replies as r
from channels.sandbox.ledger import LedgerFull, Trade, TradeStatus
from core.money import decimal_str_to_minor

if TYPE_CHECKING:
    from channels.sandbox.alipay import Sandbox

AMOUNT_FEN_MAX = 10_000_000_000          # 100 million yuan, Alipay's single-trade ceiling


class Scenario(enum.Enum):
    PAID = 0
    DECLINED = 1
    CONFIRM_LATER = 2
    NEVER_CONFIRM = 3
    HANG = 4
    COMMIT_THEN_DROP = 5
    COMMIT_DROP_SILENT = 6
    ERROR = 7
    ERROR_AFTER_COMMIT = 8


def scenario_for(amount_fen: int) -> Scenario:
    ending = amount_fen % 100
    return Scenario(ending) if ending <= 8 else Scenario.PAID


def _random_fault(sb: Sandbox) -> Scenario:
    """One draw decides whether a plain paid-at-once trade suffers a random fault."""
    k, x = sb.knobs, sb.rng.random()
    if x < k.error_rate:
        return Scenario.ERROR
    if x < k.error_rate + k.commit_then_drop_rate:
        return Scenario.COMMIT_THEN_DROP
    if x < k.error_rate + k.commit_then_drop_rate + k.hang_rate:
        return Scenario.HANG
    return Scenario.PAID


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


def _repeat(sb: Sandbox, trade: Trade, amount: int) -> dict[str, Any] | None:
    """The answer to a pay for a trade that already exists, or None to run the scenario."""
    if trade.status is None:
        trade.total_amount = amount      # nothing was committed: this request defines the trade
        return None
    if trade.status is TradeStatus.TRADE_CLOSED:
        return r.business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
    if amount != trade.total_amount:
        return r.business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
    if sb.knobs.naive_charge:
        return None
    if trade.status is TradeStatus.TRADE_SUCCESS:
        return r.business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
    return r.waiting(trade)


async def pay(request: web.Request, sb: Sandbox, params: dict[str, str],
              biz: dict[str, Any]) -> web.StreamResponse:
    method = tf.METHOD_PAY
    parsed = _pay_biz(biz)
    if parsed is None:
        return sb.answer(method, r.business("ACQ.INVALID_PARAMETER", "参数无效"))
    amount, subject = parsed
    try:
        trade = sb.ledger.ensure(biz["out_trade_no"], amount)
    except LedgerFull:
        return sb.answer(method, r.unknown_error())
    trade.pay_calls += 1
    repeated = _repeat(sb, trade, amount)
    if repeated is not None:
        return sb.answer(method, repeated)
    trade.subject, trade.notify_url = subject, params.get("notify_url", "")
    scenario = scenario_for(amount)
    if scenario is Scenario.PAID:
        scenario = _random_fault(sb)
    return await _run(request, sb, trade, scenario)


async def _run(request: web.Request, sb: Sandbox, trade: Trade,
               scenario: Scenario) -> web.StreamResponse:
    method, now = tf.METHOD_PAY, sb.now()
    if scenario is Scenario.ERROR:
        return sb.answer(method, r.unknown_error())
    if scenario is Scenario.DECLINED:
        sb.ledger.close(trade, now)
        return sb.answer(method, r.business("ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"))
    if scenario in (Scenario.CONFIRM_LATER, Scenario.NEVER_CONFIRM):
        sb.ledger.open(trade, now, TradeStatus.WAIT_BUYER_PAY)
        if scenario is Scenario.CONFIRM_LATER:
            sb.schedule_confirm(trade)
        return sb.answer(method, r.waiting(trade))
    sb.ledger.pay(trade, now)
    if scenario is not Scenario.COMMIT_DROP_SILENT:
        sb.notify(trade)
    if scenario is Scenario.HANG:
        await asyncio.sleep(sb.knobs.hang_ms / 1000)
    if scenario in (Scenario.COMMIT_THEN_DROP, Scenario.COMMIT_DROP_SILENT):
        return _drop(request)
    if scenario is Scenario.ERROR_AFTER_COMMIT:
        return sb.answer(method, r.unknown_error())
    return sb.answer(method, r.paid(trade))


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without answering: the client sees a disconnect."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=200)


async def query(request: web.Request, sb: Sandbox, params: dict[str, str],
                biz: dict[str, Any]) -> web.StreamResponse:
    trade = sb.ledger.get(biz["out_trade_no"])
    if trade is not None:
        trade.query_calls += 1
    if trade is None or not trade.exists:
        return sb.answer(tf.METHOD_QUERY, r.business(tf.SUB_CODE_TRADE_NOT_EXIST, "交易不存在"))
    return sb.answer(tf.METHOD_QUERY, r.queried(trade))


async def cancel(request: web.Request, sb: Sandbox, params: dict[str, str],
                 biz: dict[str, Any]) -> web.StreamResponse:
    now = sb.now()
    try:
        trade = sb.ledger.ensure(biz["out_trade_no"], 0)
    except LedgerFull:
        return sb.answer(tf.METHOD_CANCEL, r.unknown_error())
    trade.cancel_calls += 1
    action = "close"
    if trade.status is TradeStatus.TRADE_SUCCESS:
        sb.ledger.refund(trade, now)
        action = "refund"
    elif trade.status is TradeStatus.WAIT_BUYER_PAY:
        sb.ledger.close(trade, now)
        sb.notify(trade)
    elif trade.status is None:
        sb.ledger.close(trade, now)      # the fence: a later pay for it is refused
    return sb.answer(tf.METHOD_CANCEL, r.cancelled(trade, action, now))


Handler = Callable[[web.Request, "Sandbox", dict[str, str], dict[str, Any]],
                   Awaitable[web.StreamResponse]]
HANDLERS: dict[str, Handler] = {
    tf.METHOD_PAY: pay,
    tf.METHOD_QUERY: query,
    tf.METHOD_CANCEL: cancel,
}
