"""A local PayPal REST API that speaks the real protocol at PayPal's paths, for local runs and tests.

Followed: PayPal REST "Authentication" (OAuth2 client credentials), Orders v2 (create / show
order, single-step create with a vaulted ``payment_source``), Payments v2 (show capture, refund
capture, show refund), Transaction Search v1 (``/v1/reporting/transactions``), Webhooks v1
(create webhook, event format, transmission signature) and the Idempotency guide
(PayPal-Request-Id). Mounted under /paypal/, so a connector's base URL is ``<sandbox>/paypal``.

What it checks, as PayPal does:
  * ``POST /v1/oauth2/token`` needs HTTP Basic with the app's client id and secret and
    ``grant_type=client_credentials`` (else 401 invalid_client / 400 unsupported_grant_type); it
    issues bearer tokens that expire after ``token_ttl_s``. Every other API call needs a live
    bearer token, else 401 ``invalid_token``.
  * PayPal-Request-Id: a create or refund whose id was used before returns the resource that id
    made, in its latest state, and never makes another (the ``naive_charge`` knob turns that off).
    A create with a payment_source needs the header (400 PAYPAL_REQUEST_ID_REQUIRED).
  * Refunds: over the captured amount -> 422 REFUND_AMOUNT_EXCEEDED, fully refunded ->
    CAPTURE_FULLY_REFUNDED, a pending capture -> PENDING_CAPTURE, too many -> REFUND_NOT_ALLOWED.

Charges follow the amount table of channels.sandbox.engine; in PayPal's words (201 answers):
  00 COMPLETED/capture COMPLETED; 01 card: COMPLETED/capture DECLINED (processor 5120), PayPal
  wallet: 422 INSTRUMENT_DECLINED; 02/03 COMPLETED/capture PENDING (reason ECHECK), 02 completes
  after payer_confirm_ms (PAYMENT.CAPTURE.COMPLETED); 04 held answer; 05/06 connection closed after
  commit; 07/08 500 INTERNAL_SERVER_ERROR. Another request id for a known invoice_id ->
  422 DUPLICATE_INVOICE_ID. A create without payment_source for an unused request id makes a
  CREATED order that nobody approves: the ledger records the trade CLOSED (the fence).

Deviations, all deliberate:
  * The ledger is keyed by ``invoice_id`` (``reference_id`` for an order without a payment
    source); PayPal does not require invoice_id, the sandbox does.
  * Tokens, request ids and webhooks live in memory; request ids are kept as long as the ledger
    keeps the trade (PayPal: 6 hours for orders, 45 days for refunds).
  * Webhooks are signed with the published key in channels/sandbox/keys, whose self-signed
    certificate is served at PAYPAL-CERT-URL under the sandbox's own base URL; every registered
    webhook gets the app's one webhook id (WEBHOOK_ID) and events go to the latest URL.
  * Transaction Search lists a transaction at once (PayPal: up to 3 hours later).
  * ``POST /paypal/_sandbox/expire_tokens`` (a control, not PayPal's) ends every issued token, to
    exercise the connector's renewal after a 401.
"""
from __future__ import annotations

import time

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from channels.paypal import signing, transformers as tf
from channels.sandbox import keyring, paypal_views as v
from channels.sandbox.engine import ChannelSandbox, Event, SandboxConfig
from channels.sandbox.ledger import Refund, Trade
from channels.sandbox.notifier import Delivery, accept_2xx

CLIENT_ID = "AYpaycellSandboxClient"          # core.settings PayPalSettings defaults
CLIENT_SECRET = "EFpaycellSandboxSecret0000"
WEBHOOK_ID = "8PT597110X687430LKGECATA"
CERT_NAME = "CERT-360caa42-fca2a594-paycell01"
APP_ID = "APP-80W284485P519543T"
TOKEN_TTL_S = 32_400
TOKENS_MAX = 10_000
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class PayPalSandbox(ChannelSandbox):
    name = "paypal"
    trade_no_prefix = "77001"

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        self.signing_key: RSAPrivateKey = keyring.private_key("paypal_webhook_private.pem")
        self.cert_pem = (keyring.KEYS_DIR / "paypal_webhook_cert.pem").read_bytes()
        self.token_ttl_s = TOKEN_TTL_S
        self.tokens: dict[str, float] = {}              # access token -> expiry (unix s)
        self.order_requests: dict[str, str] = {}        # PayPal-Request-Id -> invoice id
        self.refund_requests: dict[str, tuple[str, str]] = {}  # request id -> (invoice, refund)
        self.ids: dict[str, tuple[str, str]] = {}       # PayPal id -> (invoice id, what)
        self.webhook_url = ""
        self.public_base = ""

    def add_routes(self, app: web.Application) -> None:
        from channels.sandbox.paypal_routes import add_routes
        add_routes(app)

    # ---- ids ------------------------------------------------------------------------------------

    def new_id(self, trade: Trade, key: str, what: str) -> str:
        """trade.extra[key], made (17 characters, PayPal's shape) and indexed on first use."""
        if key not in trade.extra:
            pid = "".join(self.rng.choice(ID_ALPHABET) for _ in range(17))
            trade.extra[key] = pid
            self.ids[pid] = (trade.out_trade_no, what)
        return trade.extra[key]

    def charge_ids(self, trade: Trade) -> None:
        self.new_id(trade, "order_id", "order")
        self.new_id(trade, "capture_id", "capture")

    def by_id(self, pid: str, what: str) -> Trade | None:
        found = self.ids.get(pid)
        if found is None or found[1] != what:
            return None
        return self.ledger.get(found[0])

    # ---- notifications --------------------------------------------------------------------------

    def build_notification(self, trade: Trade, event: Event, refund: Refund | None,
                           notify_id: str, *, forged: bool = False) -> Delivery | None:
        now, base = self.now(), self.public_base
        event_id = "WH-" + notify_id.upper()
        if event is Event.REFUND and refund is not None:
            self.new_id(trade, f"refund:{refund.out_refund_no}", "refund")
            doc = v.event(event_id, "PAYMENT.CAPTURE.REFUNDED", "refund",
                          v.refund(trade, refund, base), "A capture was refunded", now, base)
        elif event is Event.PAID:
            self.charge_ids(trade)
            doc = v.event(event_id, "PAYMENT.CAPTURE.COMPLETED", "capture",
                          v.capture(trade, base), "Payment completed", now, base)
        elif event is Event.CLOSED and "capture_id" in trade.extra:
            doc = v.event(event_id, "PAYMENT.CAPTURE.DENIED", "capture",
                          v.capture(trade, base), "Payment denied", now, base)
        else:
            return None
        body = orjson.dumps(doc)
        transmission_id = "%08x-%04x-11ef-%04x-%012x" % (
            self.rng.getrandbits(32), self.rng.getrandbits(16), self.rng.getrandbits(16),
            self.rng.getrandbits(48))
        transmission_time = tf.iso_utc(now)
        key = keyring.attacker_key() if forged else self.signing_key
        headers = {
            "Content-Type": "application/json",
            signing.H_TRANSMISSION_ID: transmission_id,
            signing.H_TRANSMISSION_TIME: transmission_time,
            signing.H_CERT_URL: f"{base}{signing.CERTS_PATH}{CERT_NAME}",
            signing.H_AUTH_ALGO: signing.AUTH_ALGO,
            signing.H_TRANSMISSION_SIG: signing.sign_transmission(
                key, transmission_id, transmission_time, WEBHOOK_ID, body),
        }
        return Delivery(trade.out_trade_no, trade.notify_url, body, headers, accept_2xx,
                        event.value)

    # ---- auth -----------------------------------------------------------------------------------

    def issue(self) -> str:
        now = time.time()
        if len(self.tokens) >= TOKENS_MAX:
            self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
            while len(self.tokens) >= TOKENS_MAX:
                del self.tokens[next(iter(self.tokens))]
        token = "A21AA" + "".join(self.rng.choice(ID_ALPHABET) for _ in range(40))
        self.tokens[token] = now + self.token_ttl_s
        return token

    def expire_tokens(self) -> None:
        """Every issued token stops working (what PayPal does when they expire)."""
        self.tokens.clear()

    def learn_base(self, request: web.Request) -> None:
        path = request.path
        cut = min((i for i in (path.find("/v1/"), path.find("/v2/")) if i >= 0), default=0)
        self.public_base = f"{request.scheme}://{request.host}{path[:cut]}"
