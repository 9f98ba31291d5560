"""The Stripe sandbox's endpoints (see channels.sandbox.stripe for what they check and where
they deviate from Stripe on purpose): the API layer (auth, version, parameters, idempotency), then
PaymentIntents, refunds and balance transactions over the sandbox's state."""
from __future__ import annotations

import hmac
import re
import secrets
import urllib.parse
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from channels.sandbox import stripe_objects as so
from channels.sandbox.engine import SANDBOX, Outcome, dropped_response
from channels.sandbox.ledger import (REFUSE_AMOUNT, REFUSE_NOT_PAID, LedgerFull, RefundRefused,
                                     TradeStatus)
from channels.sandbox.stripe import WEBHOOK_HEADER, StripeSandbox
from channels.stripe import forms, signing, transformers as tf

ORDER_ID_MAX_CHARS = 255
LIST_LIMIT_DEFAULT = 10
_SEARCH_CLAUSE = re.compile(r"""^metadata\[(['"])([^'"]+)\1\]:(['"])((?:\\.|(?!\3).)*)\3$""")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/payment_intents", api(create_intent))
    r.add_get("/v1/payment_intents", api(list_intents))
    r.add_get("/v1/payment_intents/search", api(search_intents))
    r.add_get("/v1/payment_intents/{id}", api(retrieve_intent))
    r.add_post("/v1/payment_intents/{id}/cancel", api(cancel_intent))
    r.add_post("/v1/refunds", api(create_refund))
    r.add_get("/v1/refunds", api(list_refunds))
    r.add_get("/v1/refunds/{id}", api(retrieve_refund))
    r.add_get("/v1/balance_transactions", api(list_balance))


# the calls a query or a cancel makes (the followup_error_rate knob fails them too)
FOLLOWUP_HANDLERS = frozenset({"list_intents", "search_intents", "retrieve_intent",
                               "cancel_intent"})


class Invalid(Exception):
    """A request refused before the endpoint runs: answered, never saved under its key."""

    def __init__(self, payload: dict[str, Any], status: int = 400) -> None:
        super().__init__(payload.get("error", {}).get("message", ""))
        self.payload, self.status = payload, status



# ---- the API layer: auth, version, parameters, idempotency ------------------------------------

Handler = Callable[[web.Request, StripeSandbox, dict[str, Any]], Awaitable[Any]]


def _json(status: int, payload: dict[str, Any], headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload),
                        content_type="application/json", headers=headers)


def _authorize(sb: StripeSandbox, request: web.Request) -> dict[str, Any] | None:
    header = request.headers.get("Authorization", "")
    if not header:
        return so.error("You did not provide an API key. You need to provide your API key in the "
                        "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                        "YOUR_SECRET_KEY').")
    key = signing.api_key_of(header) or ""
    if not hmac.compare_digest(key.encode(), sb.secret_key.encode()):
        shown = f"{key[:8]}{'*' * 8}{key[-4:]}" if len(key) > 12 else "***"
        return so.error(f"Invalid API Key provided: {shown}")
    return None


async def _params(request: web.Request) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    if request.method == "POST":
        text = (await request.read()).decode("utf-8", errors="strict")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
    else:
        pairs = list(request.query.items())
    return forms.decode_params(pairs), tuple(sorted(pairs))


def api(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    followup = handler.__name__ in FOLLOWUP_HANDLERS

    async def run(request: web.Request) -> web.StreamResponse:
        sb = request.app[SANDBOX]
        assert isinstance(sb, StripeSandbox)
        await sb.delay()
        headers = {"Request-Id": "req_" + secrets.token_hex(7),
                   "Stripe-Version": request.headers.get("Stripe-Version", tf.API_VERSION)}
        refusal = _authorize(sb, request)
        if refusal is not None:
            return _json(401, refusal, headers)
        version = request.headers.get("Stripe-Version", "")
        if version and not tf.valid_api_version(version):
            return _json(400, so.error(f"Invalid Stripe API version: {version}"), headers)
        try:
            params, fingerprint = await _params(request)
        except (ValueError, UnicodeDecodeError) as e:
            return _json(400, so.error(f"Invalid request: {e}"), headers)
        if sb.error_now(followup=followup):
            return _json(500, so.api_error(), headers)
        key = request.headers.get("Idempotency-Key", "")
        if request.method != "POST" or not key or (sb.knobs.naive_charge
                                                   and handler is create_intent):
            return await _execute(handler, request, sb, params, headers)
        if len(key) > tf.IDEMPOTENCY_KEY_MAX_CHARS:
            return _json(400, so.error("Idempotency keys can be at most 255 characters long."),
                         headers)
        headers["Idempotency-Key"] = key
        return await _idempotent(handler, request, sb, params, fingerprint, key, headers)
    return run


async def _execute(handler: Handler, request: web.Request, sb: StripeSandbox,
                   params: dict[str, Any], headers: dict[str, str]) -> web.StreamResponse:
    try:
        answer = await handler(request, sb, params)
    except Invalid as e:
        return _json(e.status, e.payload, headers)
    if answer is None:
        return dropped_response()
    return _json(answer[0], answer[1], headers)


async def _idempotent(handler: Handler, request: web.Request, sb: StripeSandbox,
                      params: dict[str, Any], fingerprint: tuple[tuple[str, str], ...], key: str,
                      headers: dict[str, str]) -> web.StreamResponse:
    endpoint = f"{request.method} {request.path}"
    saved = sb.idempotency.get(key)
    if saved is not None:
        if saved.status == 0:
            return _json(409, so.error(
                "There is currently another in-progress request using this Idempotent Key (that "
                "probably means you submitted twice, and the other request is still going "
                f"through): {key}. Please try again later.", "idempotency_error"), headers)
        if saved.endpoint != endpoint or saved.params != fingerprint:
            return _json(400, so.error(
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.", "idempotency_error"), headers)
        headers.update({"Idempotent-Replayed": "true", "Original-Request": saved.request_id})
        return web.Response(status=saved.status, body=saved.body,
                            content_type="application/json", headers=headers)
    saved = sb.idempotency.begin(key, endpoint, fingerprint)
    saved.request_id = headers["Request-Id"]
    try:
        answer = await handler(request, sb, params)
    except Invalid as e:
        sb.idempotency.forget(key)
        return _json(e.status, e.payload, headers)
    except BaseException:
        sb.idempotency.forget(key)
        raise
    if answer is None:                      # dropped after the endpoint ran: Stripe saved it
        saved.status, saved.body = 500, orjson.dumps(so.api_error())
        intent = sb.intent_of(str((params.get("metadata") or {}).get(tf.ORDER_KEY, "")))
        if intent is not None:
            saved.status, saved.body = 200, orjson.dumps(intent.to_json())
        return dropped_response()
    saved.status, saved.body = answer[0], orjson.dumps(answer[1])
    return _json(answer[0], answer[1], headers)


# ---- parameters ---------------------------------------------------------------------------

def _int_param(params: dict[str, Any], name: str, required: bool = True) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise Invalid(so.missing(name))
        return None
    if not isinstance(raw, str) or not raw.isdigit() or len(raw) > 12:
        raise Invalid(so.invalid(name, f"Invalid integer: {raw}"))
    return int(raw)


def _bool_param(params: dict[str, Any], name: str) -> bool:
    raw = params.get(name, "false")
    if raw not in ("true", "false"):
        raise Invalid(so.error(f"Invalid boolean: {raw}", code="parameter_invalid_boolean",
                               param=name))
    return raw == "true"


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    meta = params.get("metadata") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()) \
            or any(len(v) > tf.METADATA_VALUE_MAX_CHARS for v in meta.values()):
        raise Invalid(so.error("Invalid metadata", param="metadata"))
    return meta


def _amount_and_currency(params: dict[str, Any]) -> tuple[int, str]:
    amount = _int_param(params, "amount")
    assert amount is not None
    currency = params.get("currency")
    if not currency:
        raise Invalid(so.missing("currency"))
    if not isinstance(currency, str) or currency not in so.MINIMUM_AMOUNT:
        raise Invalid(so.error(f"Invalid currency: {currency}.", param="currency"))
    if amount < so.MINIMUM_AMOUNT[currency]:
        raise Invalid(so.error(f"Amount must be at least {so.MINIMUM_AMOUNT[currency]} "
                               f"{currency} minor units", code="amount_too_small",
                               param="amount"))
    if amount > so.AMOUNT_MAX:
        raise Invalid(so.error("Amount must be no more than 99999999", code="amount_too_large",
                               param="amount"))
    return amount, currency.upper()


def _limit(params: dict[str, Any]) -> int:
    limit = _int_param(params, "limit", required=False) or LIST_LIMIT_DEFAULT
    if not 1 <= limit <= tf.LIST_LIMIT:
        raise Invalid(so.error("This value must be between 1 and 100", param="limit"))
    return limit


def _page(url: str, items: list[Any], params: dict[str, Any],
          render: Callable[[Any], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """One page of a newest-first list, after the starting_after id."""
    after = params.get("starting_after")
    if after:
        ids = [getattr(i, "id", None) or i.get("id") for i in items]
        if after not in ids:
            raise Invalid(so.no_such("object", str(after), "starting_after"), 400)
        items = items[ids.index(after) + 1:]
    limit = _limit(params)
    return 200, so.list_json(url, [render(i) for i in items[:limit]], len(items) > limit)


def _created_ok(created: int | None, params: dict[str, Any]) -> bool:
    bounds = params.get("created")
    if bounds is None:
        return True
    if created is None:
        return False
    if isinstance(bounds, str):
        return created == int(bounds) if bounds.isdigit() else False
    checks = {"gt": created.__gt__, "gte": created.__ge__, "lt": created.__lt__,
              "lte": created.__le__}
    for op, value in bounds.items():
        if op not in checks or not str(value).isdigit():
            raise Invalid(so.error(f"Invalid created[{op}]", param="created"))
        if not checks[op](int(value)):
            return False
    return True


# ---- PaymentIntents ---------------------------------------------------------------------------

async def create_intent(request: web.Request, sb: StripeSandbox,
                        params: dict[str, Any]) -> Any:
    amount, currency = _amount_and_currency(params)
    meta = _metadata(params)
    order_id = meta.get(tf.ORDER_KEY, "")
    if not order_id or len(order_id) > ORDER_ID_MAX_CHARS:
        raise Invalid(so.error("The sandbox needs metadata[paycell_order_id] (1..255 chars).",
                               code="parameter_missing", param=f"metadata[{tf.ORDER_KEY}]"))
    confirm, off_session = _bool_param(params, "confirm"), _bool_param(params, "off_session")
    pm = str(params.get("payment_method") or "")
    if off_session and not confirm:
        raise Invalid(so.error("off_session can only be set when confirm=true.",
                               param="off_session"))
    if confirm and not pm:
        raise Invalid(so.error("You must provide a payment_method to confirm a PaymentIntent.",
                               code="parameter_missing", param="payment_method"))
    if pm and not pm.startswith("pm_"):
        raise Invalid(so.no_such("PaymentMethod", pm, "payment_method"))
    webhook = request.headers.get(WEBHOOK_HEADER, "")
    if not confirm:
        return _open_intent(sb, params, order_id, amount, currency, webhook)
    trade = sb.trade_for_charge(order_id, amount, currency)
    intent = sb.intent_of(order_id)
    if trade is not None and trade.status is None and intent is None:
        intent = sb.add_intent(trade, params, confirmed=True)
    outcome = await sb.charge(request, trade, amount, currency, subject=str(
        params.get("description") or ""), notify_url=webhook, payer=str(
        params.get("customer") or ""), payment_type="card")
    if intent is not None and trade is not None and trade.status is None:
        sb.drop_intent(intent)             # 07: nothing was created
        intent = None
    if outcome is Outcome.DROPPED:
        return None
    if outcome in (Outcome.ERROR, Outcome.FULL) or intent is None:
        return 500, so.api_error()
    if outcome is Outcome.DECLINED:
        intent.last_error = so.decline_error()
        return 402, so.declined(intent)
    if outcome is Outcome.MISMATCH:
        return 400, so.error("metadata[paycell_order_id] already names a PaymentIntent with "
                             "another amount or currency (sandbox rule).",
                             code="parameter_invalid_integer", param="amount")
    return 200, intent.to_json()          # PAID, WAITING, ALREADY_PAID, ALREADY_CLOSED


def _open_intent(sb: StripeSandbox, params: dict[str, Any], order_id: str, amount: int,
                 currency: str, webhook: str) -> tuple[int, dict[str, Any]]:
    try:
        trade = sb.ledger.ensure(order_id, amount, currency)
    except LedgerFull:
        return 500, so.api_error()
    if trade.exists:
        raise Invalid(so.error("metadata[paycell_order_id] already names a PaymentIntent "
                               "(sandbox rule).", param=f"metadata[{tf.ORDER_KEY}]"))
    trade.total_amount, trade.currency, trade.notify_url = amount, currency, webhook
    trade.subject = str(params.get("description") or "")
    sb.ledger.open(trade, sb.now(), TradeStatus.WAITING)
    return 200, sb.add_intent(trade, params, confirmed=False).to_json()


def _intent_by_id(sb: StripeSandbox, request: web.Request) -> so.Intent:
    pi_id = request.match_info["id"]
    intent = sb.live(sb.intents.get(pi_id))
    if intent is None:
        raise Invalid(so.no_such("payment_intent", pi_id, "intent"), 404)
    return intent


async def retrieve_intent(request: web.Request, sb: StripeSandbox,
                          params: dict[str, Any]) -> Any:
    intent = _intent_by_id(sb, request)
    intent.trade.query_calls += 1
    return 200, intent.to_json()


async def cancel_intent(request: web.Request, sb: StripeSandbox,
                        params: dict[str, Any]) -> Any:
    intent = _intent_by_id(sb, request)
    reason = params.get("cancellation_reason")
    if reason not in (None, "duplicate", "fraudulent", "requested_by_customer", "abandoned"):
        raise Invalid(so.error(f"Invalid cancellation_reason: {reason}",
                               param="cancellation_reason"))
    if intent.status() in ("succeeded", "canceled"):
        intent.trade.cancel_calls += 1
        return 400, so.cannot_cancel(intent)
    intent.canceled_at = int(sb.now().timestamp())
    intent.cancellation_reason = reason
    sb.close_trade(intent.trade, reverse_paid=False)   # notifies payment_intent.canceled
    return 200, intent.to_json()


async def list_intents(request: web.Request, sb: StripeSandbox, params: dict[str, Any]) -> Any:
    customer = params.get("customer")
    items = sorted((i for i in sb.intents.values() if sb.live(i)
                    and (customer is None or i.customer == customer)
                    and _created_ok(i.created, params)), key=lambda i: (-i.created, i.id))
    return _page("/v1/payment_intents", items, params, lambda i: i.to_json())


async def search_intents(request: web.Request, sb: StripeSandbox,
                         params: dict[str, Any]) -> Any:
    query = str(params.get("query") or "")
    wanted: dict[str, str] = {}
    for clause in query.split(" AND "):
        m = _SEARCH_CLAUSE.match(clause.strip())
        if m is None:
            raise Invalid(so.error(f"Invalid search query: {query}", param="query"))
        wanted[m.group(2)] = re.sub(r"\\(.)", r"\1", m.group(4))
    if tf.ORDER_KEY in wanted:
        one = sb.intent_of(wanted[tf.ORDER_KEY])
        pool = [one] if one is not None else []
    else:
        pool = [i for i in sb.intents.values() if sb.live(i)]
    hits = [i for i in pool if all(i.metadata.get(k) == v for k, v in wanted.items())]
    for hit in hits:
        hit.trade.query_calls += 1
    limit = _limit(params)
    return 200, {"object": "search_result", "data": [i.to_json() for i in hits[:limit]],
                 "has_more": len(hits) > limit, "next_page": None, "total_count": len(hits),
                 "url": "/v1/payment_intents/search"}


# ---- refunds ----------------------------------------------------------------------------------

async def create_refund(request: web.Request, sb: StripeSandbox, params: dict[str, Any]) -> Any:
    pi_id = params.get("payment_intent")
    if not pi_id:
        raise Invalid(so.missing("payment_intent"))
    meta = _metadata(params)
    amount = _int_param(params, "amount", required=False)
    if amount == 0:
        raise Invalid(so.invalid("amount", "Invalid positive integer"))
    intent = sb.live(sb.intents.get(str(pi_id)))
    if intent is None:
        return 404, so.no_such("payment_intent", str(pi_id), "payment_intent")
    trade = intent.trade
    if amount is None:
        amount = trade.total_amount - trade.committed_refund_amount
    out_refund_no = meta.get(tf.REFUND_KEY) or sb.new_id("rfn")
    key = (trade.out_trade_no, out_refund_no)
    sb.refund_meta[key] = meta
    try:
        refund = sb.refund(trade, out_refund_no, amount,
                           notify_url=request.headers.get(WEBHOOK_HEADER, ""))
    except RefundRefused as e:
        sb.refund_meta.pop(key, None)
        return 400, _refusal(e.reason, intent, amount)
    return 200, sb.record_for(intent, refund).to_json()


def _refusal(reason: str, intent: so.Intent, amount: int) -> dict[str, Any]:
    trade = intent.trade
    if reason == REFUSE_NOT_PAID:
        return so.error("This PaymentIntent does not have a successful charge to refund.",
                        code="payment_intent_unexpected_state", param="payment_intent")
    if reason == REFUSE_AMOUNT and trade.committed_refund_amount >= trade.total_amount:
        return so.error(f"Charge {intent.charge_id} has already been refunded.",
                        code="charge_already_refunded", charge=intent.charge_id)
    if reason == REFUSE_AMOUNT:
        rest = trade.total_amount - trade.committed_refund_amount
        return so.error(f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                        f"({rest})", code="amount_too_large", param="amount")
    return so.error(f"The refund cannot be made ({reason}, sandbox rule).",
                    code="charge_not_refundable")


async def retrieve_refund(request: web.Request, sb: StripeSandbox, params: dict[str, Any]) -> Any:
    record = sb.refund_records.get(request.match_info["id"])
    if record is None or sb.live(record.intent) is None:
        raise Invalid(so.no_such("refund", request.match_info["id"], "id"), 404)
    return 200, record.to_json()


async def list_refunds(request: web.Request, sb: StripeSandbox, params: dict[str, Any]) -> Any:
    pi_id = params.get("payment_intent")
    if pi_id is not None:
        intent = sb.live(sb.intents.get(str(pi_id)))
        if intent is None:
            raise Invalid(so.no_such("payment_intent", str(pi_id), "payment_intent"), 404)
        records = [sb.refund_records[r] for r in intent.refund_ids]
    else:
        records = [r for r in sb.refund_records.values() if sb.live(r.intent)]
    records = [r for r in records if _created_ok(so.unix(r.refund.created), params)]
    records.sort(key=lambda r: (-(so.unix(r.refund.created) or 0), r.id))
    return _page("/v1/refunds", records, params, lambda r: r.to_json())


# ---- balance transactions -----------------------------------------------------------------------

async def list_balance(request: web.Request, sb: StripeSandbox, params: dict[str, Any]) -> Any:
    expand = params.get("expand") or []
    if not isinstance(expand, list):
        raise Invalid(so.error("Invalid array", param="expand"))
    wanted = frozenset(str(e) for e in expand)
    txns: list[dict[str, Any]] = []
    for intent in list(sb.intents.values()):
        if sb.live(intent) is None:
            continue
        txns.extend(so.payment_txns(intent, wanted))
        for rid in intent.refund_ids:
            txn = so.refund_txn(sb.refund_records[rid], wanted)
            if txn is not None:
                txns.append(txn)
    txns = [t for t in txns if _created_ok(t["created"], params)]
    txns.sort(key=lambda t: (-t["created"], t["id"]))
    return _page("/v1/balance_transactions", txns, params, lambda t: t)
