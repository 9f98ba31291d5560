"""The PayPal sandbox's JSON documents, in PayPal's words: orders, captures, refunds, Transaction
Search rows, webhook events and error bodies. Pure functions of a ledger trade and the ids the
sandbox gave it (kept in ``trade.extra``)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from channels.paypal import transformers as tf
from channels.sandbox.ledger import Refund, RefundState, Trade, TradeStatus

MERCHANT_ID = "PAYCELLSBX4MER"
PAYER_ACCOUNT_ID = "PAYCELLSBXPAYR"
PAYER_EMAIL = "payer@personal.example.com"
PENDING_REASON = "ECHECK"              # the payer's eCheck has not cleared yet
DECLINE_CODE = "5120"                  # processor response: insufficient funds
FEE_BASIS_POINTS = 349                 # the sandbox's fee: 3.49% of the gross, rounded
REFUND_STATE = {RefundState.PROCESSING: "PENDING", RefundState.SUCCESS: "COMPLETED",
                RefundState.FAILED: "FAILED"}

ERROR_MESSAGES = {
    "INVALID_REQUEST": "Request is not well-formed, syntactically incorrect, or violates schema.",
    "UNPROCESSABLE_ENTITY": "The requested action could not be performed, semantically "
                            "incorrect, or failed business validation.",
    "RESOURCE_NOT_FOUND": "The specified resource does not exist.",
    "INTERNAL_SERVER_ERROR": "An internal server error has occurred.",
    "NOT_AUTHORIZED": "Authorization failed due to insufficient permissions.",
}


def when(moment: datetime | None) -> str:
    assert moment is not None
    return tf.iso_utc(moment)


def money(amount: int, currency: str) -> dict[str, str]:
    return {"currency_code": currency, "value": tf.to_value(amount, currency)}


def fee_of(amount: int) -> int:
    return (amount * FEE_BASIS_POINTS + 5_000) // 10_000


def link(base: str, path: str, rel: str, method: str = "GET") -> dict[str, str]:
    return {"href": base + path, "rel": rel, "method": method}


def error(name: str, issue: str = "", description: str = "", debug_id: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "message": ERROR_MESSAGES.get(name, name),
                            "debug_id": debug_id}
    if issue:
        body["details"] = [{"issue": issue, "description": description or issue}]
        body["links"] = [{"href": f"https://developer.paypal.com/docs/api/orders/v2/#error-{issue}",
                          "rel": "information_link", "method": "GET"}]
    return body


# ---- captures and refunds -----------------------------------------------------------------------

def capture_status(trade: Trade) -> str:
    if trade.status is TradeStatus.WAITING:
        return "PENDING"
    if trade.status is TradeStatus.CLOSED:
        return "DECLINED"
    if trade.fully_refunded:
        return "REFUNDED"
    return "PARTIALLY_REFUNDED" if trade.refunded_amount else "COMPLETED"


def capture(trade: Trade, base: str) -> dict[str, Any]:
    cid, status = trade.extra["capture_id"], capture_status(trade)
    out: dict[str, Any] = {
        "id": cid, "status": status, "amount": money(trade.total_amount, trade.currency),
        "final_capture": True, "invoice_id": trade.out_trade_no,
        "custom_id": trade.extra.get("custom_id", ""),
        "seller_protection": {"status": "ELIGIBLE",
                              "dispute_categories": ["ITEM_NOT_RECEIVED",
                                                     "UNAUTHORIZED_TRANSACTION"]},
        "supplementary_data": {"related_ids": {"order_id": trade.extra["order_id"]}},
        "create_time": when(trade.created), "update_time": when(trade.paid or trade.created),
        "links": [link(base, f"{tf.CAPTURES_PATH}/{cid}", "self"),
                  link(base, f"{tf.CAPTURES_PATH}/{cid}/refund", "refund", "POST"),
                  link(base, f"{tf.ORDERS_PATH}/{trade.extra['order_id']}", "up")],
    }
    if status == "PENDING":
        out["status_details"] = {"reason": PENDING_REASON}
    elif status == "DECLINED":
        out["processor_response"] = {"avs_code": "Y", "cvv_code": "M",
                                     "response_code": DECLINE_CODE}
    else:
        fee = fee_of(trade.total_amount)
        out["seller_receivable_breakdown"] = {
            "gross_amount": money(trade.total_amount, trade.currency),
            "paypal_fee": money(fee, trade.currency),
            "net_amount": money(trade.total_amount - fee, trade.currency)}
    return out


def refund(trade: Trade, r: Refund, base: str) -> dict[str, Any]:
    rid = trade.extra[f"refund:{r.out_refund_no}"]
    out: dict[str, Any] = {
        "id": rid, "status": REFUND_STATE[r.state], "amount": money(r.amount, trade.currency),
        "invoice_id": r.out_refund_no, "create_time": when(r.created),
        "update_time": when(r.finished or r.created),
        "links": [link(base, f"{tf.REFUNDS_PATH}/{rid}", "self"),
                  link(base, f"{tf.CAPTURES_PATH}/{trade.extra['capture_id']}", "up")],
    }
    custom = trade.extra.get(f"refund_custom:{r.out_refund_no}")
    if custom:
        out["custom_id"] = custom
    note = trade.extra.get(f"refund_note:{r.out_refund_no}")
    if note:
        out["note_to_payer"] = note
    return out


# ---- orders -------------------------------------------------------------------------------------

def _order_links(base: str, oid: str, status: str) -> list[dict[str, str]]:
    links = [link(base, f"{tf.ORDERS_PATH}/{oid}", "self")]
    if status == "CREATED":
        links += [{"href": f"https://www.sandbox.paypal.com/checkoutnow?token={oid}",
                   "rel": "approve", "method": "GET"},
                  link(base, f"{tf.ORDERS_PATH}/{oid}", "update", "PATCH"),
                  link(base, f"{tf.ORDERS_PATH}/{oid}/capture", "capture", "POST")]
    return links


def fence_order(trade: Trade, base: str) -> dict[str, Any]:
    oid = trade.extra["order_id"]
    unit = {"reference_id": trade.out_trade_no, "custom_id": trade.extra.get("custom_id", ""),
            "description": trade.subject,
            "amount": {"currency_code": trade.currency, "value": trade.extra["fence_value"]},
            "payee": {"merchant_id": MERCHANT_ID}}
    return {"id": oid, "intent": "CAPTURE", "status": "CREATED", "purchase_units": [unit],
            "create_time": when(trade.created), "links": _order_links(base, oid, "CREATED")}


def payment_source(trade: Trade) -> dict[str, Any]:
    vault = {"vault": {"id": trade.payer, "status": "VAULTED"}}
    if trade.payment_type == "paypal":
        return {"paypal": {"email_address": PAYER_EMAIL, "account_id": PAYER_ACCOUNT_ID,
                           "attributes": vault}}
    return {"card": {"last_digits": "1111", "brand": "VISA", "type": "CREDIT",
                     "attributes": vault}}


def order(trade: Trade, base: str) -> dict[str, Any]:
    if trade.extra.get("fence"):
        return fence_order(trade, base)
    oid = trade.extra["order_id"]
    unit: dict[str, Any] = {
        "reference_id": trade.out_trade_no, "invoice_id": trade.out_trade_no,
        "custom_id": trade.extra.get("custom_id", ""), "description": trade.subject,
        "amount": money(trade.total_amount, trade.currency),
        "payee": {"merchant_id": MERCHANT_ID},
        "payments": {"captures": [capture(trade, base)],
                     "refunds": [refund(trade, r, base) for r in trade.refund_list.values()]},
    }
    if not trade.refund_list:
        del unit["payments"]["refunds"]
    return {"id": oid, "intent": "CAPTURE", "status": "COMPLETED",
            "payment_source": payment_source(trade), "purchase_units": [unit],
            "create_time": when(trade.created), "update_time": when(trade.paid or trade.created),
            "links": _order_links(base, oid, "COMPLETED")}


# ---- Transaction Search -------------------------------------------------------------------------

def _search_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S+0000")


def payment_row(trade: Trade, at: datetime) -> dict[str, Any]:
    fee = fee_of(trade.total_amount)
    info = {"paypal_account_id": PAYER_ACCOUNT_ID, "transaction_id": trade.extra["capture_id"],
            "transaction_event_code": "T0006", "transaction_initiation_date": _search_time(at),
            "transaction_updated_date": _search_time(at),
            "transaction_amount": money(trade.total_amount, trade.currency),
            "fee_amount": {"currency_code": trade.currency,
                           "value": "-" + tf.to_value(fee, trade.currency)},
            "transaction_status": "S", "invoice_id": trade.out_trade_no,
            "custom_field": trade.extra.get("custom_id", ""), "protection_eligibility": "01"}
    return {"transaction_info": info, "payer_info": {"account_id": PAYER_ACCOUNT_ID,
                                                     "email_address": PAYER_EMAIL}}


def refund_row(trade: Trade, r: Refund, at: datetime) -> dict[str, Any]:
    info = {"paypal_account_id": PAYER_ACCOUNT_ID,
            "transaction_id": trade.extra[f"refund:{r.out_refund_no}"],
            "paypal_reference_id": trade.extra["capture_id"], "paypal_reference_id_type": "TXN",
            "transaction_event_code": tf.REFUND_EVENT_CODE,
            "transaction_initiation_date": _search_time(at),
            "transaction_updated_date": _search_time(at),
            "transaction_amount": {"currency_code": trade.currency,
                                   "value": "-" + tf.to_value(r.amount, trade.currency)},
            "transaction_status": "S", "invoice_id": r.out_refund_no,
            "custom_field": trade.extra.get(f"refund_custom:{r.out_refund_no}", "")}
    return {"transaction_info": info, "payer_info": {"account_id": PAYER_ACCOUNT_ID,
                                                     "email_address": PAYER_EMAIL}}


# ---- webhook events -----------------------------------------------------------------------------

def event(event_id: str, event_type: str, resource_type: str, resource: dict[str, Any],
          summary: str, now: datetime, base: str) -> dict[str, Any]:
    return {"id": event_id, "event_version": "1.0", "create_time": when(now),
            "resource_type": resource_type, "resource_version": "2.0",
            "event_type": event_type, "summary": summary, "resource": resource,
            "links": [link(base, f"/v1/notifications/webhooks-events/{event_id}", "self"),
                      link(base, f"/v1/notifications/webhooks-events/{event_id}/resend",
                           "resend", "POST")]}
