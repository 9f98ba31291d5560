"""The payloads of the sandbox's Alipay answers (the `*_response` objects), in Alipay's words."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from channels.alipay import transformers as tf
from channels.sandbox.ledger import Refund, RefundState, Trade, TradeStatus

BUYER_LOGON_ID = "159****5620"
BUYER_USER_ID = "2088102146225135"

# Alipay's trade_status for the ledger's neutral status.
TRADE_STATUS = {TradeStatus.WAITING: "WAIT_BUYER_PAY", TradeStatus.PAID: "TRADE_SUCCESS",
                TradeStatus.CLOSED: "TRADE_CLOSED"}


def trade_status(trade: Trade) -> str:
    assert trade.status is not None
    if trade.fully_refunded:
        return "TRADE_CLOSED"            # Alipay closes a wholly refunded trade
    return TRADE_STATUS[trade.status]


def missing(sub_code: str) -> dict[str, Any]:
    return {"code": tf.CODE_MISSING_PARAM, "msg": "Missing Required Arguments",
            "sub_code": sub_code, "sub_msg": "缺少必选参数"}


def invalid(sub_code: str, sub_msg: str) -> dict[str, Any]:
    return {"code": tf.CODE_INVALID_PARAM, "msg": "Invalid Arguments",
            "sub_code": sub_code, "sub_msg": sub_msg}


def business(sub_code: str, sub_msg: str) -> dict[str, Any]:
    return {"code": tf.CODE_BUSINESS_FAILED, "msg": "Business Failed",
            "sub_code": sub_code, "sub_msg": sub_msg}


def unknown_error() -> dict[str, Any]:
    return {"code": tf.CODE_UNKNOWN, "msg": "Service Currently Unavailable",
            "sub_code": "isp.unknow-error", "sub_msg": "系统繁忙"}


def _trade(trade: Trade) -> dict[str, Any]:
    return {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": BUYER_LOGON_ID,
            "total_amount": tf.fen_to_yuan(trade.total_amount)}


def _paid_fields(trade: Trade) -> dict[str, Any]:
    amount = tf.fen_to_yuan(trade.total_amount)
    return {"receipt_amount": amount, "buyer_pay_amount": amount, "invoice_amount": amount,
            "point_amount": "0.00", "buyer_user_id": BUYER_USER_ID,
            "fund_bill_list": [{"fund_channel": "ALIPAYACCOUNT", "amount": amount}]}


def paid(trade: Trade) -> dict[str, Any]:
    assert trade.paid is not None
    return {"code": tf.CODE_SUCCESS, "msg": "Success", **_trade(trade), **_paid_fields(trade),
            "gmt_payment": tf.alipay_timestamp(trade.paid)}


def waiting(trade: Trade) -> dict[str, Any]:
    return {"code": tf.CODE_WAITING, "msg": " order success pay inprocess", **_trade(trade)}


def queried(trade: Trade) -> dict[str, Any]:
    assert trade.status is not None
    out = {"code": tf.CODE_SUCCESS, "msg": "Success", **_trade(trade),
           "trade_status": trade_status(trade)}
    if trade.status is TradeStatus.PAID:
        assert trade.paid is not None
        out.update(_paid_fields(trade), send_pay_date=tf.alipay_timestamp(trade.paid))
    return out


def cancelled(trade: Trade, action: str, now: datetime) -> dict[str, Any]:
    out = {"code": tf.CODE_SUCCESS, "msg": "Success", "trade_no": trade.trade_no,
           "out_trade_no": trade.out_trade_no, "retry_flag": "N", "action": action}
    if action == "refund":
        out["gmt_refund_pay"] = tf.alipay_timestamp(now)
        out["refund_settlement_id"] = trade.trade_no
    return out


def refunded(trade: Trade, refund: Refund, fund_change: bool) -> dict[str, Any]:
    """alipay.trade.refund's success: fund_change "Y" only when this request moved the money;
    refund_fee is the trade's refunded total so far (Alipay's meaning)."""
    out = {"code": tf.CODE_SUCCESS, "msg": "Success", "trade_no": trade.trade_no,
           "out_trade_no": trade.out_trade_no, "buyer_logon_id": BUYER_LOGON_ID,
           "buyer_user_id": BUYER_USER_ID, "fund_change": "Y" if fund_change else "N",
           "refund_fee": tf.fen_to_yuan(trade.refunded_amount)}
    if fund_change:
        out["send_back_fee"] = tf.fen_to_yuan(refund.amount)
    if refund.finished is not None:
        out["gmt_refund_pay"] = tf.alipay_timestamp(refund.finished)
    return out


def refund_queried(trade: Trade, out_request_no: str, refund: Refund | None,
                   options: frozenset[str]) -> dict[str, Any]:
    """alipay.trade.fastpay.refund.query: the refund's data only when it succeeded; an unknown
    or unfinished refund answers 10000 without refund_amount / refund_status."""
    out: dict[str, Any] = {"code": tf.CODE_SUCCESS, "msg": "Success",
                           "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
                           "out_request_no": out_request_no}
    if refund is None or refund.state is not RefundState.SUCCESS:
        return out
    out.update(total_amount=tf.fen_to_yuan(trade.total_amount),
               refund_amount=tf.fen_to_yuan(refund.amount), refund_status=tf.REFUND_SUCCESS)
    if "gmt_refund_pay" in options and refund.finished is not None:
        out["gmt_refund_pay"] = tf.alipay_timestamp(refund.finished)
    return out


def bill_url(url: str) -> dict[str, Any]:
    return {"code": tf.CODE_SUCCESS, "msg": "Success", "bill_download_url": url}
