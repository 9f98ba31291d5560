"""The PayPal sandbox's endpoints (see channels.sandbox.paypal for what they check and where they
deviate from PayPal on purpose): OAuth2, Orders v2, Payments v2 captures and refunds,
Transaction Search, Webhooks, and the sandbox's own token control."""
from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from channels.base import ProtocolError
from channels.paypal import signing, transformers as tf
from channels.sandbox import paypal_views as v
from channels.sandbox.engine import SANDBOX, Outcome, dropped_response
from channels.sandbox.ledger import (REFUSE_AMOUNT, REFUSE_CONFLICT, REFUSE_NOT_PAID, LedgerFull,
                                     RefundRefused, Trade, TradeStatus)
from channels.sandbox.paypal import (APP_ID, CERT_NAME, CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID,
                                     PayPalSandbox)
from channels.transport import read_upto

BODY_MAX_BYTES = 65_536
SEARCH_DAYS_MAX = 31
# Charge outcomes for an invoice_id charged before under another request id.
REPEATS = frozenset({Outcome.ALREADY_PAID, Outcome.ALREADY_CLOSED, Outcome.MISMATCH})


def add_routes(app: web.Application) -> None:
    app.router.add_post(tf.TOKEN_PATH, issue_token)
    app.router.add_post(tf.ORDERS_PATH, create_order)
    app.router.add_get(tf.ORDERS_PATH + "/{id}", show_order)
    app.router.add_get(tf.CAPTURES_PATH + "/{id}", show_capture)
    app.router.add_post(tf.CAPTURES_PATH + "/{id}/refund", refund_capture)
    app.router.add_get(tf.REFUNDS_PATH + "/{id}", show_refund)
    app.router.add_get(tf.TRANSACTIONS_PATH, search_transactions)
    app.router.add_post("/v1/notifications/webhooks", create_webhook)
    app.router.add_get(signing.CERTS_PATH + "{name}", get_cert)
    app.router.add_post("/_sandbox/expire_tokens", expire_tokens)   # a control, not PayPal's


def _sb(request: web.Request) -> PayPalSandbox:
    sb = request.app[SANDBOX]
    assert isinstance(sb, PayPalSandbox)
    return sb


def answer(status: int, doc: dict[str, Any], sb: PayPalSandbox) -> web.Response:
    headers = {"Paypal-Debug-Id": "%013x" % sb.rng.getrandbits(52)}
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json",
                        headers=headers)


def fail(status: int, name: str, sb: PayPalSandbox, issue: str = "",
         description: str = "") -> web.Response:
    return answer(status, v.error(name, issue, description, "%013x" % sb.rng.getrandbits(52)), sb)


async def authorized(request: web.Request) -> tuple[PayPalSandbox, web.Response | None]:
    """The sandbox and, when the bearer token is missing, unknown or expired, PayPal's 401."""
    sb = _sb(request)
    await sb.delay()
    sb.learn_base(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expiry = sb.tokens.get(token) if scheme == "Bearer" else None
    if expiry is None or expiry <= time.time():
        body = {"error": "invalid_token", "error_description": "Access Token not found in cache"}
        return sb, web.Response(status=401, body=orjson.dumps(body),
                                content_type="application/json")
    return sb, None


async def authorized_json(request: web.Request,
                          ) -> tuple[PayPalSandbox, dict[str, Any], web.Response | None]:
    """As `authorized`, then the JSON object body (400 MALFORMED_REQUEST_JSON when it is not)."""
    sb, refusal = await authorized(request)
    if refusal is not None:
        return sb, {}, refusal
    body = await read_json(request)
    if body is None:
        return sb, {}, fail(400, "INVALID_REQUEST", sb, "MALFORMED_REQUEST_JSON")
    return sb, body, None


async def read_json(request: web.Request) -> dict[str, Any] | None:
    raw = await read_upto(request.content, BODY_MAX_BYTES)
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) and len(raw) <= BODY_MAX_BYTES else None


def parse_money(doc: Any) -> tuple[int, str] | None:
    try:
        amount, currency = tf.from_money(doc)
    except ProtocolError:
        return None
    return (amount, currency) if amount > 0 else None


# ---- OAuth2 -------------------------------------------------------------------------------------

async def issue_token(request: web.Request) -> web.Response:
    sb = _sb(request)
    await sb.delay()
    creds = signing.parse_basic_auth(request.headers.get("Authorization", ""))
    if creds != (CLIENT_ID, CLIENT_SECRET):
        body = {"error": "invalid_client", "error_description": "Client Authentication failed"}
        return web.Response(status=401, body=orjson.dumps(body), content_type="application/json")
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        body = {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"}
        return web.Response(status=400, body=orjson.dumps(body), content_type="application/json")
    doc = {"scope": "https://uri.paypal.com/services/payments/payment/authcapture "
                    "https://uri.paypal.com/services/payments/refund "
                    "https://uri.paypal.com/services/reporting/search/read",
           "access_token": sb.issue(), "token_type": "Bearer", "app_id": APP_ID,
           "expires_in": sb.token_ttl_s, "nonce": f"{tf.iso_utc(sb.now())}{sb.rng.getrandbits(64):x}"}
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


# ---- orders -------------------------------------------------------------------------------------

async def create_order(request: web.Request) -> web.StreamResponse:
    sb, body, refusal = await authorized_json(request)
    if refusal is not None:
        return refusal
    request_id = request.headers.get("PayPal-Request-Id", "")
    known = sb.order_requests.get(request_id) if request_id else None
    if known is not None and not (sb.knobs.naive_charge and body.get("payment_source")):
        trade = sb.ledger.get(known)
        if trade is not None and trade.exists:
            return replay_order(sb, trade)
    units = body.get("purchase_units")
    unit = units[0] if isinstance(units, list) and len(units) == 1 else None
    parsed = parse_money(unit.get("amount")) if isinstance(unit, dict) else None
    if body.get("intent") != "CAPTURE" or unit is None:
        return fail(400, "INVALID_REQUEST", sb, "INVALID_PARAMETER_VALUE", "intent/purchase_units")
    if parsed is None:
        return fail(422, "UNPROCESSABLE_ENTITY", sb, "AMOUNT_MISMATCH", "amount")
    source = body.get("payment_source")
    if not source:
        return fence(sb, request_id, unit, parsed[1])
    return await vaulted_charge(request, sb, request_id, unit, parsed, source)


def replay_order(sb: PayPalSandbox, trade: Trade) -> web.Response:
    if trade.extra.get("wallet_declined"):
        return fail(422, "UNPROCESSABLE_ENTITY", sb, "INSTRUMENT_DECLINED")
    return answer(200, v.order(trade, sb.public_base), sb)


def fence(sb: PayPalSandbox, request_id: str, unit: dict[str, Any], currency: str) -> web.Response:
    """An order awaiting the payer's approval. For an unknown reference the ledger records the
    trade closed: a later charge under the same request id replays this order."""
    reference = unit.get("reference_id")
    if not isinstance(reference, str) or not 0 < len(reference) <= 256:
        return fail(422, "UNPROCESSABLE_ENTITY", sb, "MISSING_REQUIRED_PARAMETER", "reference_id")
    try:
        trade = sb.ledger.ensure(reference, 0, currency)
    except LedgerFull:
        return fail(500, "INTERNAL_SERVER_ERROR", sb)
    if trade.exists:      # charged under another request id (PayPal would make an unrelated
        # order; refusing keeps a caller from reading "no charge" into it)
        return fail(422, "UNPROCESSABLE_ENTITY", sb, "DUPLICATE_INVOICE_ID")
    sb.close_trade(trade, reverse_paid=False)
    trade.extra.update(fence="1", custom_id=str(unit.get("custom_id") or ""),
                       fence_value=str(unit["amount"]["value"]))
    trade.subject = str(unit.get("description") or "")
    sb.new_id(trade, "order_id", "order")
    if request_id:
        sb.order_requests[request_id] = reference
    return answer(201, v.fence_order(trade, sb.public_base), sb)


async def vaulted_charge(request: web.Request, sb: PayPalSandbox, request_id: str,
                         unit: dict[str, Any], parsed: tuple[int, str],
                         source: Any) -> web.StreamResponse:
    if not request_id:
        return fail(400, "INVALID_REQUEST", sb, "PAYPAL_REQUEST_ID_REQUIRED")
    kind = next(iter(source), "") if isinstance(source, dict) and len(source) == 1 else ""
    vault_id = source[kind].get("vault_id") if kind in tf.VAULT_SOURCES and isinstance(
        source[kind], dict) else None
    invoice = unit.get("invoice_id")
    if not isinstance(vault_id, str) or not vault_id or not vault_id.replace("-", "").replace(
            "_", "").isalnum():
        return fail(422, "UNPROCESSABLE_ENTITY", sb, "INVALID_PARAMETER_VALUE", "vault_id")
    if not isinstance(invoice, str) or not 0 < len(invoice) <= 127:
        return fail(422, "UNPROCESSABLE_ENTITY", sb, "MISSING_REQUIRED_PARAMETER", "invoice_id")
    amount, currency = parsed
    trade = sb.trade_for_charge(invoice, amount, currency)
    fresh = trade is not None and not trade.exists
    if trade is not None and fresh:     # the id names this order from the moment it commits
        trade.extra["custom_id"] = str(unit.get("custom_id") or "")
        sb.order_requests[request_id] = invoice
        sb.charge_ids(trade)
    outcome = await sb.charge(request, trade, amount, currency,
                              subject=str(unit.get("description") or ""),
                              notify_url=sb.webhook_url, payer=vault_id, payment_type=kind)
    if fresh and trade is not None and not trade.exists:
        sb.order_requests.pop(request_id, None)     # nothing committed: the id stays unused
    if outcome is Outcome.DROPPED:
        return dropped_response()
    if outcome in (Outcome.ERROR, Outcome.FULL):
        return fail(500, "INTERNAL_SERVER_ERROR", sb)
    if outcome in REPEATS:
        return fail(422, "UNPROCESSABLE_ENTITY", sb, "DUPLICATE_INVOICE_ID")
    assert trade is not None
    sb.charge_ids(trade)
    if outcome is Outcome.DECLINED and kind == "paypal":
        trade.extra["wallet_declined"] = "1"
        return fail(422, "UNPROCESSABLE_ENTITY", sb, "INSTRUMENT_DECLINED")
    return answer(201, v.order(trade, sb.public_base), sb)


def _shown(sb: PayPalSandbox, request: web.Request, what: str) -> Trade | None:
    """The trade the path's {id} names as an `what` ("order", "capture"), unless PayPal would
    not show it (unknown, not made, or a declined wallet charge)."""
    trade = sb.by_id(request.match_info["id"], what)
    if trade is None or not trade.exists or trade.extra.get("wallet_declined"):
        return None
    return trade


async def show_order(request: web.Request) -> web.Response:
    sb, refusal = await authorized(request)
    if refusal is not None:
        return refusal
    if _followup_fails(sb):
        return fail(500, "INTERNAL_SERVER_ERROR", sb)
    trade = _shown(sb, request, "order")
    if trade is None:
        return fail(404, "RESOURCE_NOT_FOUND", sb, "INVALID_RESOURCE_ID")
    trade.query_calls += 1
    return answer(200, v.order(trade, sb.public_base), sb)


async def show_capture(request: web.Request) -> web.Response:
    sb, refusal = await authorized(request)
    if refusal is not None:
        return refusal
    if _followup_fails(sb):
        return fail(500, "INTERNAL_SERVER_ERROR", sb)
    trade = _shown(sb, request, "capture")
    if trade is None:
        return fail(404, "RESOURCE_NOT_FOUND", sb, "INVALID_RESOURCE_ID")
    return answer(200, v.capture(trade, sb.public_base), sb)


def _followup_fails(sb: PayPalSandbox) -> bool:
    """The followup_error_rate knob on a show call (a query; paycell's cancel starts with one).
    No draw while it is off: error_rate never applied to show calls, seeded runs stay the same."""
    return sb.knobs.followup_error_rate > 0 and sb.error_now(followup=True)


# ---- refunds ------------------------------------------------------------------------------------

REFUSALS = {REFUSE_AMOUNT: "REFUND_AMOUNT_EXCEEDED", REFUSE_CONFLICT: "DUPLICATE_INVOICE_ID"}


def refusal_issue(trade: Trade, reason: str) -> str:
    if reason == REFUSE_NOT_PAID and trade.status is TradeStatus.WAITING:
        return "PENDING_CAPTURE"
    if reason == REFUSE_AMOUNT and trade.fully_refunded:
        return "CAPTURE_FULLY_REFUNDED"
    return REFUSALS.get(reason, "REFUND_NOT_ALLOWED")


async def refund_capture(request: web.Request) -> web.Response:
    sb, body, refusal = await authorized_json(request)
    if refusal is not None:
        return refusal
    trade = _shown(sb, request, "capture")
    if trade is None:
        return fail(404, "RESOURCE_NOT_FOUND", sb, "INVALID_RESOURCE_ID")
    request_id = request.headers.get("PayPal-Request-Id", "")
    known = sb.refund_requests.get(request_id) if request_id else None
    if known is not None and known[0] == trade.out_trade_no and known[1] in trade.refund_list:
        return answer(200, v.refund(trade, trade.refund_list[known[1]], sb.public_base), sb)
    if sb.error_now():
        return fail(500, "INTERNAL_SERVER_ERROR", sb)
    if body.get("amount") is None:
        amount = trade.total_amount - trade.committed_refund_amount
    else:
        parsed = parse_money(body.get("amount"))
        if parsed is None or parsed[1] != trade.currency:
            return fail(422, "UNPROCESSABLE_ENTITY", sb, "REFUND_CAPTURE_CURRENCY_MISMATCH")
        amount = parsed[0]
    number = str(body.get("invoice_id") or request_id or f"auto-{sb.rng.getrandbits(64):x}")
    if number not in trade.refund_list:     # what the refund (and its webhook) will carry
        for key, name in (("custom_id", "refund_custom"), ("note_to_payer", "refund_note")):
            if body.get(key):
                trade.extra[f"{name}:{number}"] = str(body[key])[:255]
    try:
        r = sb.refund(trade, number, amount, notify_url=sb.webhook_url)
    except RefundRefused as e:
        return fail(422, "UNPROCESSABLE_ENTITY", sb, refusal_issue(trade, e.reason))
    sb.new_id(trade, f"refund:{number}", "refund")
    if request_id:
        sb.refund_requests[request_id] = (trade.out_trade_no, number)
    return answer(201, v.refund(trade, r, sb.public_base), sb)


async def show_refund(request: web.Request) -> web.Response:
    sb, refusal = await authorized(request)
    if refusal is not None:
        return refusal
    pid = request.match_info["id"]
    trade = sb.by_id(pid, "refund")
    found = None if trade is None else next(
        (r for r in trade.refund_list.values()
         if trade.extra.get(f"refund:{r.out_refund_no}") == pid), None)
    if trade is None or found is None:
        return fail(404, "RESOURCE_NOT_FOUND", sb, "INVALID_RESOURCE_ID")
    return answer(200, v.refund(trade, found, sb.public_base), sb)


# ---- Transaction Search -------------------------------------------------------------------------

def _bounds(request: web.Request) -> tuple[datetime, datetime, int, int] | None:
    q = request.query
    try:
        start, end = tf.parse_time(q.get("start_date")), tf.parse_time(q.get("end_date"))
        page_size, page = int(q.get("page_size", "100")), int(q.get("page", "1"))
    except (ValueError, ProtocolError):
        return None
    if (start.tzinfo is None or end < start or end - start > timedelta(days=SEARCH_DAYS_MAX)
            or not 1 <= page_size <= tf.PAGE_SIZE_MAX or page < 1):
        return None
    return start, end, page_size, page


async def search_transactions(request: web.Request) -> web.Response:
    sb, refusal = await authorized(request)
    if refusal is not None:
        return refusal
    bounds = _bounds(request)
    if bounds is None:
        return fail(400, "INVALID_REQUEST", sb, "INVALID_PARAMETER_VALUE", "date range or page")
    start, end, page_size, page = bounds
    rows: list[dict[str, Any]] = []
    day = start.date()
    while day <= end.date():
        for row in sb.ledger.statement(day):
            if not start <= row.at <= end or row.trade.extra.get("fence"):
                continue
            sb.charge_ids(row.trade)
            if row.refund is None:
                rows.append(v.payment_row(row.trade, row.at))
            else:
                sb.new_id(row.trade, f"refund:{row.refund.out_refund_no}", "refund")
                rows.append(v.refund_row(row.trade, row.refund, row.at))
        day += timedelta(days=1)
    pages = math.ceil(len(rows) / page_size)
    doc = {"transaction_details": rows[(page - 1) * page_size: page * page_size],
           "account_number": v.MERCHANT_ID, "start_date": tf.iso_utc(start),
           "end_date": tf.iso_utc(end), "last_refreshed_datetime": tf.iso_utc(sb.now()),
           "page": page, "total_items": len(rows), "total_pages": pages, "links": []}
    return answer(200, doc, sb)


# ---- webhooks -----------------------------------------------------------------------------------

async def create_webhook(request: web.Request) -> web.Response:
    sb, refusal = await authorized(request)
    if refusal is not None:
        return refusal
    body = await read_json(request)
    url = body.get("url") if body else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
        return fail(400, "INVALID_REQUEST", sb, "INVALID_PARAMETER_VALUE", "url")
    if url == sb.webhook_url:
        return fail(400, "WEBHOOK_URL_ALREADY_EXISTS", sb)
    sb.webhook_url = url
    doc = {"id": WEBHOOK_ID, "url": url, "event_types": (body or {}).get("event_types", []),
           "links": [v.link(sb.public_base, f"/v1/notifications/webhooks/{WEBHOOK_ID}", "self")]}
    return answer(201, doc, sb)


async def expire_tokens(request: web.Request) -> web.Response:
    sb = _sb(request)
    expired = len(sb.tokens)
    sb.expire_tokens()
    return web.json_response({"expired": expired})


async def get_cert(request: web.Request) -> web.Response:
    sb = _sb(request)
    if request.match_info["name"] != CERT_NAME:
        return fail(404, "RESOURCE_NOT_FOUND", sb, "INVALID_RESOURCE_ID")
    return web.Response(body=sb.cert_pem, content_type="application/x-pem-file")
