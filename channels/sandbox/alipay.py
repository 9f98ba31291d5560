"""A local Alipay Open Platform gateway that speaks the real protocol, for local runs and tests.

`POST /gateway.do` takes the SDK's wire format (common params in the query string, biz_content in
the urlencoded body), checks the RSA2 request signature with the app's public key and answers
``{"<method>_response":{...},"sign":"..."}`` signed with the platform private key. It keeps an
in-memory ledger, the money truth (`GET /_sandbox/ledger`).

The outcome of alipay.trade.pay is fixed by the amount in fen, by its last two digits:

  ==  ========================================================================================
  00  paid at once: 10000, TRADE_SUCCESS, notification (also every ending not listed below)
  01  declined: 40004 ACQ.BUYER_BALANCE_NOT_ENOUGH, trade closed, nothing charged
  02  10003 WAIT_BUYER_PAY; the payer confirms after payer_confirm_ms -> TRADE_SUCCESS + notify
  03  10003 WAIT_BUYER_PAY; the payer never confirms
  04  paid at once, but the HTTP answer is held for hang_ms
  05  paid, then the connection is closed without an answer (commit-then-drop)
  06  as 05, and the notification is dropped too (only a query can tell)
  07  20000 isp.unknow-error, nothing committed (a query says ACQ.TRADE_NOT_EXIST)
  08  20000 isp.unknow-error, but the trade WAS committed as paid (with notification)
  ==  ========================================================================================

Random faults (seeded RNG) apply only to pay requests whose amount means "paid at once": one draw
r in [0, 1) picks error (r < error_rate, as 07), commit-then-drop (next commit_then_drop_rate,
as 05) or hang (next hang_rate, as 04). error_rate also applies to query and cancel (20000, nothing
done). latency_ms delays every gateway answer.

A repeated pay for an out_trade_no: paid -> 40004 ACQ.TRADE_HAS_SUCCESS, nothing charged (with the
naive_charge knob, a paid or waiting trade is charged again by every pay request); waiting ->
10003 again; closed -> 40004 ACQ.TRADE_HAS_CLOSE; another amount -> 40004 ACQ.CONTEXT_INCONSISTENT.
alipay.trade.cancel refunds a paid trade (action "refund"), closes a waiting one (action "close",
with a TRADE_CLOSED notification) and records an unknown out_trade_no as closed (action "close"),
so that a late pay for it is refused: cancel fences the trade number.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from channels.alipay import signing, transformers as tf
from channels.sandbox import replies as r
from channels.sandbox.knobs import Knobs
from channels.sandbox.ledger import Ledger, Trade, TradeStatus
from channels.sandbox.methods import HANDLERS
from channels.sandbox.notifier import NOTIFY_QUEUE_MAX, NOTIFY_WORKERS, Notifier, notify_form
from core.settings import KEYS_DIR, AlipaySettings

KNOBS_BODY_MAX_BYTES = 4096


@dataclass(frozen=True)
class SandboxConfig:
    app_id: str = AlipaySettings.app_id
    app_public_key_path: Path = KEYS_DIR / "alipay_app_public.pem"
    platform_private_key_path: Path = KEYS_DIR / "alipay_platform_private.pem"
    seed: int = 0
    knobs: Knobs = field(default_factory=Knobs)
    trades_max: int = 2_000_000
    notify_queue_max: int = NOTIFY_QUEUE_MAX
    notify_workers: int = NOTIFY_WORKERS


class Sandbox:
    """State and behaviour of one sandbox: keys (loaded once), knobs, RNG, ledger, notifier."""

    def __init__(self, config: SandboxConfig) -> None:
        self.app_id = config.app_id
        self.app_public_key: RSAPublicKey = signing.load_public_key(config.app_public_key_path)
        self.platform_key: RSAPrivateKey = signing.load_private_key(config.platform_private_key_path)
        self.knobs = config.knobs
        self.rng = random.Random(config.seed)
        self.ledger = Ledger(config.trades_max)
        self.notifier = Notifier(self.ledger, self.rng, lambda: self.knobs,
                                 config.notify_queue_max, config.notify_workers)
        self._notify_seq = 0
        self.closed = False

    @staticmethod
    def now() -> datetime:
        return datetime.now(timezone.utc)

    def answer(self, method: str, payload: dict[str, Any]) -> web.Response:
        body = signing.build_response(method, payload, self.platform_key)
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    def notify(self, trade: Trade) -> None:
        self._notify_seq += 1
        notify_id = f"{self._notify_seq:08d}{self.rng.getrandbits(64):016x}"
        trade.notify_ids.append(notify_id)
        self.notifier.send(trade, notify_form(trade, self.app_id, notify_id, self.now(),
                                              self.platform_key))

    def schedule_confirm(self, trade: Trade) -> None:
        delay_s = self.knobs.payer_confirm_ms / 1000
        asyncio.get_running_loop().call_later(delay_s, self._confirm, trade)

    def _confirm(self, trade: Trade) -> None:
        if (self.closed or trade.status is not TradeStatus.WAIT_BUYER_PAY
                or self.ledger.get(trade.out_trade_no) is not trade):
            return                       # cancelled meanwhile, or the ledger was reset
        self.ledger.pay(trade, self.now())
        self.notify(trade)


SANDBOX = web.AppKey("sandbox", Sandbox)


# ---- request checks -------------------------------------------------------------------------

# Required parameters and the sub_code Alipay answers when one is missing.
REQUIRED = {"app_id": "isv.missing-app-id", "method": "isv.missing-method",
            "sign_type": "isv.missing-signature-type", "sign": "isv.missing-signature",
            "timestamp": "isv.missing-timestamp", "version": "isv.missing-version",
            "biz_content": "isv.missing-biz-content"}


async def read_params(request: web.Request) -> dict[str, str] | None:
    """Query string and form body merged; None when a name appears twice."""
    params: dict[str, str] = {}
    form = await request.post()
    for source in (request.query, form):
        for key, value in source.items():
            if key in params or not isinstance(value, str):
                return None
            params[key] = value
    return params


def check_request(sb: Sandbox, params: dict[str, str] | None) -> dict[str, Any] | None:
    """The gateway's refusal of a malformed or badly signed request, or None when it is fine."""
    if params is None:
        return r.invalid("isv.invalid-parameter", "参数重复")
    for name, sub_code in REQUIRED.items():
        if not params.get(name):
            return r.missing(sub_code)
    if params["app_id"] != sb.app_id:
        return r.invalid("isv.invalid-app-id", "无效的AppID参数")
    if params["sign_type"] != signing.SIGN_TYPE:
        return r.invalid("isv.invalid-signature-type", "无效的签名类型")
    if params.get("charset", signing.CHARSET).lower() != signing.CHARSET:
        return r.invalid("isv.invalid-charset", "字符集错误")
    if params["method"] not in HANDLERS:
        return r.invalid("isv.invalid-method", "不存在的方法名")
    if not signing.verify_request(params, sb.app_public_key):
        return r.invalid("isv.invalid-signature", "验签出错")
    try:
        datetime.strptime(params["timestamp"], tf.TIMESTAMP_FORMAT)
    except ValueError:
        return r.invalid("isv.invalid-timestamp", "非法的时间戳参数")
    return None


def read_biz(params: dict[str, str]) -> dict[str, Any] | None:
    try:
        biz = orjson.loads(params["biz_content"])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(biz, dict) or not isinstance(biz.get("out_trade_no"), str):
        return None
    if not 0 < len(biz["out_trade_no"]) <= 64:
        return None
    return biz


# ---- HTTP handlers --------------------------------------------------------------------------

async def gateway(request: web.Request) -> web.StreamResponse:
    sb = request.app[SANDBOX]
    if sb.knobs.latency_ms:
        await asyncio.sleep(sb.knobs.latency_ms / 1000)
    params = await read_params(request)
    refusal = check_request(sb, params)
    method = (params or {}).get("method", "")
    if refusal is not None:
        return sb.answer(method if method in HANDLERS else "", refusal)
    assert params is not None
    biz = read_biz(params)
    if biz is None:
        return sb.answer(method, r.business("ACQ.INVALID_PARAMETER", "参数无效"))
    if method != tf.METHOD_PAY and sb.rng.random() < sb.knobs.error_rate:
        return sb.answer(method, r.unknown_error())
    return await HANDLERS[method](request, sb, params, biz)


async def get_ledger(request: web.Request) -> web.Response:
    snapshot = request.app[SANDBOX].ledger.snapshot()
    return web.Response(body=orjson.dumps(snapshot), content_type="application/json")


async def reset_ledger(request: web.Request) -> web.Response:
    request.app[SANDBOX].ledger.reset()
    return web.json_response({"reset": True})


async def get_knobs(request: web.Request) -> web.Response:
    return web.json_response(request.app[SANDBOX].knobs.to_json())


async def set_knobs(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    body = await request.content.read(KNOBS_BODY_MAX_BYTES + 1)
    try:
        changes = orjson.loads(body)
        if len(body) > KNOBS_BODY_MAX_BYTES or not isinstance(changes, dict):
            raise ValueError("expected a JSON object of knobs")
        sb.knobs = sb.knobs.replace(changes)
    except (ValueError, orjson.JSONDecodeError) as e:
        return web.json_response({"error": str(e)}, status=400)
    return web.json_response(sb.knobs.to_json())


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


# ---- the app --------------------------------------------------------------------------------

def create_sandbox_app(config: SandboxConfig | None = None) -> web.Application:
    sandbox = Sandbox(config or SandboxConfig())
    app = web.Application(client_max_size=65_536)
    app[SANDBOX] = sandbox
    app.router.add_post("/gateway.do", gateway)
    app.router.add_get("/_sandbox/ledger", get_ledger)
    app.router.add_post("/_sandbox/reset", reset_ledger)
    app.router.add_get("/_sandbox/knobs", get_knobs)
    app.router.add_post("/_sandbox/knobs", set_knobs)
    app.router.add_get("/_sandbox/health", health)
    app.cleanup_ctx.append(_notifier_ctx)
    return app


async def _notifier_ctx(app: web.Application) -> Any:
    sandbox = app[SANDBOX]
    await sandbox.notifier.start()
    yield
    sandbox.closed = True
    await sandbox.notifier.stop()
