"""One frozen settings tree, loaded once from YAML with PAYCELL_ environment overrides.

Every value has a default that runs the local stack; every name carries its unit. Overrides use
``PAYCELL_<SECTION>__<FIELD>`` (for example ``PAYCELL_ORDERS__SYNC_DEADLINE_MS=500``); the config
file path comes from ``--config`` or ``PAYCELL_CONFIG``. Nothing here runs at import time.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from core.errors import ConfigError
from core.ids import check_part

KEYS_DIR = Path(__file__).resolve().parent.parent / "channels" / "sandbox" / "keys"


class Secret(str):
    """A string whose repr and str are masked; `.reveal()` gives the value."""

    def reveal(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True)
class AppCredential:
    app_id: str
    secret: Secret


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_base_url: str = ""          # base URL channels call back; default http://host:port
    body_max_bytes: int = 65_536
    auth_window_s: int = 300
    batch_max_orders: int = 64         # orders in one actor call
    batch_linger_us: int = 500         # how long a non-full batch waits for company
    shard_calls_inflight_max: int = 1   # batch calls in flight per shard: requests gather meanwhile
    shard_reply_wait_ms: int = 20       # a batch answers what is ready by then; the rest later
    shard_queue_max_orders: int = 4096  # queued orders per shard before 503
    shard_call_timeout_ms: int = 15_000  # a shard call slower than this answers 503 (order is safe)
    final_orders_cached_max: int = 100_000  # final orders remembered to ack duplicate notifications
    host_links: bool = True             # hot shard calls over a direct connection to each host
                                        # (actors/link.py); false: every call goes through Ray

    def base_url(self) -> str:
        return self.public_base_url or f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class RedisSettings:
    url: str = ""                      # empty: paycell starts and owns a local redis-server
    host: str = "127.0.0.1"
    port: int = 6390
    appendfsync: str = "always"        # always | everysec
    server_binary: str = "redis-server"
    connect_timeout_ms: int = 2000
    op_timeout_ms: int = 2000

    def effective_url(self) -> str:
        return self.url or f"redis://{self.host}:{self.port}/0"


@dataclass(frozen=True)
class RaySettings:
    address: str = ""                  # empty: start a local cluster on loopback
    namespace: str = "paycell"
    num_cpus: int = 0                  # 0: all cores
    local_nodes: int = 1               # local mode: Ray nodes on this machine (loopback), 1-8


@dataclass(frozen=True)
class OrderSettings:
    region: str = "local"
    set_name: str = "s0"
    shard_count: int = 2
    # Actor processes that host the shards: shard s runs in actor s % shard_actors (at most
    # shard_count of them). A shard is the unit of partitioning (its ids, keys, locks and
    # recovery); a process is a unit of CPU. One per core is the sweet spot on a machine: more
    # processes than cores only add context switches and smaller batches (bench.scale).
    shard_actors: int = 2
    sync_deadline_ms: int = 800        # the client's sync answer; later -> 202 PENDING
    query_first_delay_ms: int = 1000   # first query after an unknown outcome
    query_interval_ms: int = 2000      # then every interval ...
    async_window_ms: int = 30_000      # ... until this long after creation, then cancel
    cancel_retry_interval_ms: int = 5000
    cancel_attempts_max: int = 5       # then the order waits for batch reconciliation
    scheduler_tick_ms: int = 50
    channel_calls_inflight_max: int = 256  # per shard: bound on concurrent query/cancel calls
    channel_charges_inflight_max: int = 4096  # per shard and channel; past it: not sent
    open_orders_max: int = 200_000     # per shard: at the bound new orders get 503
    commit_batch_max: int = 512        # writes in one Redis pipeline
    idempotency_ttl_s: int = 30 * 86400
    # Refunds (actors/refunds.py): the same sync -> async -> reconcile ladder as payments.
    refund_sync_deadline_ms: int = 1000      # the client's sync answer; later -> 202 PENDING
    refund_query_first_delay_ms: int = 1000  # first refund query after PENDING or unknown
    refund_query_interval_ms: int = 5000     # then every interval ...
    refund_async_window_ms: int = 600_000    # ... until this long after creation; then the
                                             # refund stays PENDING for reconciliation
    refund_resends_max: int = 3        # resends (same refund id) when the channel has no record
    refunds_per_order_max: int = 100   # refund records one order may have (FAILED included)
    open_refunds_max: int = 50_000     # per shard: at the bound new refunds get 503


@dataclass(frozen=True)
class AlipaySettings:
    enabled: bool = True
    gateway_url: str = ""              # empty: the local sandbox
    app_id: str = "2021000000000001"   # the sandbox's merchant app id
    app_private_key_path: str = str(KEYS_DIR / "alipay_app_private.pem")
    alipay_public_key_path: str = str(KEYS_DIR / "alipay_platform_public.pem")
    call_timeout_ms: int = 5000        # one HTTP call to the channel
    qps_max: int = 0                   # charges/s to this channel; 0: its documented rate
    connections_max: int = 1024        # per shard: slow calls hold connections; size for them
    # Hosts besides the gateway's own that bill_download_url may name (comma-separated
    # "host[:port]"; production: "dwbillcenter.alipay.com"). Any other host is refused (SSRF).
    bill_download_hosts: str = ""


@dataclass(frozen=True)
class WechatPaySettings:
    """WeChat Pay API v3 (channels/wechatpay). Defaults: the sandbox's published test merchant."""
    enabled: bool = True
    gateway_url: str = ""              # empty: <sandbox>/wechatpay
    call_timeout_ms: int = 5000
    qps_max: int = 0                   # charges/s to this channel; 0: its documented rate
    mchid: str = "1900009191"
    appid: str = "wxd678efh567hg6787"
    merchant_serial_no: str = "3775B6A45ACD588826D15E583A95F5DD8EA4F2C5"
    merchant_private_key_path: str = str(KEYS_DIR / "wechatpay_merchant_private.pem")
    platform_public_key_path: str = str(KEYS_DIR / "wechatpay_platform_public.pem")
    platform_serial_no: str = "PUB_KEY_ID_0119000091912025112500000000000001"
    apiv3_key: Secret = Secret("paycellSandboxApiV3Key0123456789")   # 32 bytes
    connections_max: int = 1024        # per shard, as alipay.connections_max
    # v3 code pay documents no notify_url (results come by query); true sends one anyway, which
    # the sandbox treats as the callback URL configured on the merchant platform.
    codepay_notify_url: bool = True


@dataclass(frozen=True)
class StripeSettings:
    """Stripe PaymentIntents (channels/stripe)."""
    enabled: bool = True
    gateway_url: str = ""              # empty: <sandbox>/stripe (the SDK's api_base)
    call_timeout_ms: int = 5000
    qps_max: int = 0                   # charges/s to this channel; 0: its documented rate
    secret_key: Secret = Secret("sk_test_paycellsandbox000000000000000000")
    webhook_secret: Secret = Secret("whsec_paycellsandbox0000000000000000")
    webhook_tolerance_s: int = 300


@dataclass(frozen=True)
class UnionPaySettings:
    """UnionPay online payments, gateway 5.1.0 (channels/unionpay)."""
    enabled: bool = True
    gateway_url: str = ""              # empty: <sandbox>/unionpay
    call_timeout_ms: int = 5000
    qps_max: int = 0                   # charges/s to this channel; 0: its documented rate
    mer_id: str = "777290058110048"
    sign_cert_id: str = "69629715588"
    merchant_private_key_path: str = str(KEYS_DIR / "unionpay_merchant_private.pem")
    # 5.1.0 answers carry UnionPay's signing cert (signPubKeyCert); it must chain to these.
    root_cert_path: str = str(KEYS_DIR / "unionpay_root_cert.pem")
    middle_cert_path: str = str(KEYS_DIR / "unionpay_middle_cert.pem")
    token_requestor_id: str = "99988877766"   # trId of tokenPayData (UnionPay's test value)
    pay_timeout_s: int = 900           # payTimeout = txnTime + this (UnionPay advises 15 min)


@dataclass(frozen=True)
class QPaySettings:
    """QQ Wallet (QPay) merchant API (channels/qpay)."""
    enabled: bool = True
    gateway_url: str = ""              # empty: <sandbox>/qpay
    call_timeout_ms: int = 5000
    qps_max: int = 0                   # charges/s to this channel; 0: its documented rate
    mch_id: str = "1900000109"
    appid: str = ""
    api_key: Secret = Secret("paycellSandboxQPayKey0123456789ab")
    sign_type: str = "MD5"             # MD5 | HMAC-SHA256 (both keyed with api_key)
    device_info: str = "paycell"       # the terminal id micropay asks for
    op_user_id: str = ""               # refund/reverse operator; empty: mch_id (the default operator)
    op_user_passwd: Secret = Secret("paycellSandboxOperator")   # sent as its MD5 hex
    cert_gateway_url: str = ""         # refund/reverse host (api.qpay.qq.com); empty: gateway_url
    client_cert_path: str = ""         # PEM client certificate for refund/reverse (mTLS); empty: none
    client_key_path: str = ""


@dataclass(frozen=True)
class PayPalSettings:
    """PayPal REST: OAuth2 + Orders v2 + Payments v2 (channels/paypal)."""
    enabled: bool = True
    gateway_url: str = ""              # empty: <sandbox>/paypal
    call_timeout_ms: int = 5000
    qps_max: int = 0                   # charges/s to this channel; 0: its documented rate
    client_id: str = "AYpaycellSandboxClient"
    client_secret: Secret = Secret("EFpaycellSandboxSecret0000")
    webhook_id: str = "8PT597110X687430LKGECATA"
    # parse_notification is synchronous, so PayPal's webhook signing certificate is pinned here
    # instead of being downloaded from PAYPAL-CERT-URL (which must still lie under the base URL).
    webhook_cert_path: str = str(KEYS_DIR / "paypal_webhook_cert.pem")
    vault_source: str = "card"         # payment_source kind of the vault ids: card | paypal
    # How long PayPal keeps an Orders v2 PayPal-Request-Id (6 h by default, up to 72 h on
    # request): past it a replay cannot prove anything, so query/cancel refuse to guess.
    request_id_retention_s: int = 6 * 3600
    token_refresh_margin_s: int = 300  # renew the OAuth2 token this long before it expires
    register_webhook: bool = True      # subscribe notify_url (Webhooks Management API) once
    connections_max: int = 1024


@dataclass(frozen=True)
class RoutingSettings:
    """Automatic channel selection (channels/routing) for orders that name no channel."""
    window_s: int = 60                 # success rate and latency are kept over this window
    window_buckets: int = 12           # the window slides one bucket (window_s / buckets) at a time
    min_samples: int = 20              # fewer attempts than this: the channel counts as healthy
    exploration_pct: int = 5           # share of orders sent to a non-best eligible channel
    elimination_success_pct: int = 50  # below this success rate a channel is not chosen
    latency_weight_ms: int = 2000      # a channel this much slower loses as much as 100% success
    tie_margin_pct: int = 2            # scores this close to the best are ties: fallback order
    fallback_order: str = "alipay,wechatpay,qpay,stripe,unionpay,paypal"
    breaker_failures: int = 5          # consecutive unknown outcomes / not-sent that open it
    breaker_open_ms: int = 10_000      # then one probe call is let through (half-open)
    failovers_max: int = 2             # other channels tried after a certain non-charge


@dataclass(frozen=True)
class MerchantNotifySettings:
    """Events to merchants' notify_url (actors/merchant_notify.py), delivered by each shard."""
    enabled: bool = True               # false: events are still stored, nothing is sent
    # Waits before each retry after a failed attempt (ms, comma-separated); when all are spent
    # the event is dead (kept for operators). 1 + len(schedule) attempts in all.
    retry_schedule_ms: str = "5000,15000,60000,300000,1800000,7200000"
    request_timeout_ms: int = 5000     # one POST, connect to last byte
    response_body_max_bytes: int = 4096  # read of the merchant's answer (it is only logged)
    deliveries_inflight_max: int = 16  # per shard: concurrent POSTs
    queue_max: int = 256               # per shard: due events taken from Redis at once
    poll_ms: int = 500                 # look for due events at least this often
    lease_ms: int = 30_000             # a taken event is not taken again before this (a crash)
    event_keep_s: int = 7 * 86400      # event records (and their delivery state) kept this long
    dead_kept_max: int = 100_000       # per shard: dead or refused event ids kept for operators
    # Loopback, link-local, private, reserved... targets. Default: true in local mode (the local
    # stack and its tests post to 127.0.0.1), false in cluster mode unless set.
    allow_private_targets: bool = True

    def retry_schedule(self) -> tuple[float, ...]:
        """The retry waits in seconds."""
        return tuple(int(x) / 1000 for x in self.retry_schedule_ms.split(",") if x.strip())


@dataclass(frozen=True)
class ReconcileSettings:
    """Batch reconciliation against the channels' statements (actors/reconciler.py)."""
    enabled: bool = True               # the scheduled runs (on-demand runs work either way)
    run_at_utc: str = "02:30"          # daily at HH:MM UTC: the days_back days before today
    days_back: int = 1                 # days the daily run covers (1: yesterday only)
    interval_s: int = 0                # also reconcile today every interval_s (0: off); only for
                                       # channels whose statement covers the day in progress
    channels: str = ""                 # scheduled runs' channels, comma-separated; empty: every
                                       # enabled one (on demand: any enabled channel)
    statement_lag_s: int = 300         # a trade is on the channel's statement this long after it
    channel_calls_inflight_max: int = 8   # cancel / query / refund calls of one run at once
    actions_max: int = 10_000          # channel calls of one run; the rest wait for the next run
    settle_batch_max: int = 256        # facts per shard call
    scan_count: int = 1000             # Redis SCAN hint (keys per step) over a shard's orders
    read_batch_max: int = 500          # order records per MGET
    runs_inflight_max: int = 2         # runs at once (one per channel and day); more: 503
    progress_interval_ms: int = 500    # a running report is saved this often
    report_ttl_days: int = 400         # reports are kept in Redis this long
    report_items_max: int = 1000       # entries per list of a report; the rest only counted


@dataclass(frozen=True)
class OpsSettings:
    """Operator credentials for /v1/ops/...: requests are signed like merchant calls (API.md),
    with this id and secret. The default secret is for local runs only: cluster mode refuses it."""
    operator_id: str = "local-operator"
    operator_secret: Secret = Secret("local-operator-secret")


@dataclass(frozen=True)
class SandboxSettings:
    start_local: bool = True
    host: str = "127.0.0.1"
    port: int = 8091

    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    mode: str = "local"                # local | cluster
    data_dir: str = ".paycell"
    log_level: str = "INFO"
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    orders: OrderSettings = field(default_factory=OrderSettings)
    alipay: AlipaySettings = field(default_factory=AlipaySettings)
    wechatpay: WechatPaySettings = field(default_factory=WechatPaySettings)
    stripe: StripeSettings = field(default_factory=StripeSettings)
    unionpay: UnionPaySettings = field(default_factory=UnionPaySettings)
    qpay: QPaySettings = field(default_factory=QPaySettings)
    paypal: PayPalSettings = field(default_factory=PayPalSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    merchant_notify: MerchantNotifySettings = field(default_factory=MerchantNotifySettings)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    apps: tuple[AppCredential, ...] = ()

    def alipay_gateway_url(self) -> str:
        return self.alipay.gateway_url or f"{self.sandbox.url()}/gateway.do"

    def channel_base_url(self, channel: str) -> str:
        """The channel's API base URL: its configured gateway_url, or its local sandbox."""
        configured = getattr(self, channel).gateway_url
        return configured or f"{self.sandbox.url()}/{channel}"

    def app_secrets(self) -> dict[str, str]:
        return {a.app_id: a.secret.reveal() for a in self.apps}


# Every channel's settings section, by connector name.
CHANNEL_SECTIONS = ("alipay", "wechatpay", "stripe", "unionpay", "qpay", "paypal")

DEMO_APPS = (AppCredential("demo-app", Secret("demo-secret")),)
LOCAL_OPERATOR_SECRET = "local-operator-secret"


def _convert(name: str, tp: Any, raw: Any) -> Any:
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected a boolean, got {raw!r}")
    if tp is int:
        try:
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if tp is Secret:
        if not isinstance(raw, (str, int)):
            raise ConfigError(f"{name}: expected a string")
        return Secret(str(raw))
    if tp is str:
        if not isinstance(raw, (str, int)):
            raise ConfigError(f"{name}: expected a string, got {raw!r}")
        return str(raw)
    raise ConfigError(f"{name}: unsupported type")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(prefix + u for u in sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, raw, name = hints[f.name], data[f.name], prefix + f.name
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{name}: expected a mapping")
            kwargs[f.name] = _build(tp, raw, name + ".")
        elif f.name == "apps":
            kwargs[f.name] = _apps(raw)
        else:
            kwargs[f.name] = _convert(name, tp, raw)
    return cls(**kwargs)


def _apps(raw: Any) -> tuple[AppCredential, ...]:
    if not isinstance(raw, list):
        raise ConfigError("apps: expected a list of {app_id, secret}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not item.get("app_id") or not item.get("secret"):
            raise ConfigError(f"apps[{i}]: needs app_id and secret")
        out.append(AppCredential(str(item["app_id"]), Secret(str(item["secret"]))))
    return tuple(out)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("PAYCELL_") or key == "PAYCELL_CONFIG":
            continue
        path = key[len("PAYCELL_"):].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with another override")
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Defaults <- YAML file <- PAYCELL_ environment <- explicit overrides (tests)."""
    env = os.environ if env is None else env
    path = path or env.get("PAYCELL_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top")
        data = loaded
    data = _merge(data, _env_overrides(env))
    if overrides:
        data = _merge(data, overrides)
    settings = _build(Settings, data, "")
    if not settings.apps and settings.mode == "local":
        settings = dataclasses.replace(settings, apps=DEMO_APPS)
    mn = data.get("merchant_notify")
    explicit = isinstance(mn, Mapping) and "allow_private_targets" in mn
    if settings.mode != "local" and not explicit:
        settings = dataclasses.replace(settings, merchant_notify=dataclasses.replace(
            settings.merchant_notify, allow_private_targets=False))
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)
    need(s.mode in ("local", "cluster"), f"mode: must be local or cluster, got {s.mode!r}")
    try:
        check_part("orders.region", s.orders.region)
        check_part("orders.set_name", s.orders.set_name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    need(1 <= s.orders.shard_count <= 1024, "orders.shard_count: must be 1..1024")
    need(1 <= s.orders.shard_actors <= 1024, "orders.shard_actors: must be 1..1024")
    need(1 <= s.ray.local_nodes <= 8, "ray.local_nodes: must be 1..8")
    need(s.orders.sync_deadline_ms > 0, "orders.sync_deadline_ms: must be > 0")
    need(s.orders.query_interval_ms > 0, "orders.query_interval_ms: must be > 0")
    need(s.orders.async_window_ms > s.orders.sync_deadline_ms,
         "orders.async_window_ms: must exceed orders.sync_deadline_ms")
    need(s.gateway.shard_call_timeout_ms > s.orders.sync_deadline_ms,
         "gateway.shard_call_timeout_ms: must exceed orders.sync_deadline_ms")
    o = s.orders
    need(o.refund_sync_deadline_ms > 0, "orders.refund_sync_deadline_ms: must be > 0")
    need(s.gateway.shard_call_timeout_ms > o.refund_sync_deadline_ms,
         "gateway.shard_call_timeout_ms: must exceed orders.refund_sync_deadline_ms")
    need(o.refund_query_first_delay_ms >= 0 and o.refund_query_interval_ms > 0,
         "orders.refund_query_first_delay_ms / refund_query_interval_ms: must be >= 0 / > 0")
    need(o.refund_async_window_ms > o.refund_sync_deadline_ms,
         "orders.refund_async_window_ms: must exceed orders.refund_sync_deadline_ms")
    need(o.refund_resends_max >= 0, "orders.refund_resends_max: must be >= 0")
    need(1 <= o.refunds_per_order_max <= 1000, "orders.refunds_per_order_max: must be 1..1000")
    need(o.open_refunds_max >= 1, "orders.open_refunds_max: must be >= 1")
    for name in CHANNEL_SECTIONS:
        need(getattr(s, name).call_timeout_ms > 0, f"{name}.call_timeout_ms: must be > 0")
        need(getattr(s, name).qps_max >= 0, f"{name}.qps_max: must be >= 0 (0: documented)")
    r = s.routing
    need(r.window_s > 0 and 1 <= r.window_buckets <= r.window_s * 1000,
         "routing.window_s / window_buckets: window_s > 0 and 1 <= buckets")
    need(0 <= r.exploration_pct <= 50, "routing.exploration_pct: must be 0..50")
    need(0 <= r.elimination_success_pct <= 100, "routing.elimination_success_pct: must be 0..100")
    need(r.breaker_failures >= 1 and r.breaker_open_ms > 0, "routing.breaker_*: must be positive")
    need(0 <= r.failovers_max <= 5, "routing.failovers_max: must be 0..5")
    unknown = sorted(set(r.fallback_order.split(",")) - set(CHANNEL_SECTIONS) - {""})
    need(not unknown, f"routing.fallback_order: unknown channel(s) {unknown}")
    _validate_merchant_notify(s.merchant_notify, need)
    need(s.redis.appendfsync in ("always", "everysec"), "redis.appendfsync: always or everysec")
    need(1 <= s.gateway.batch_max_orders <= 10_000, "gateway.batch_max_orders: must be 1..10000")
    need(s.gateway.body_max_bytes >= 1024, "gateway.body_max_bytes: must be >= 1024")
    if s.mode == "cluster":
        need(bool(s.redis.url), "redis.url: required in cluster mode")
        need(bool(s.ray.address), "ray.address: required in cluster mode")
        need(all(a.app_id != "demo-app" for a in s.apps), "apps: demo-app is for local mode only")
    need(bool(s.apps), "apps: at least one merchant app is needed outside local mode")
    for a in s.apps:
        need(len(a.secret.reveal()) >= 8, f"apps[{a.app_id}].secret: at least 8 characters")
    _validate_reconcile(s)


def _validate_merchant_notify(m: MerchantNotifySettings, need: Any) -> None:
    try:
        waits = [int(x) for x in m.retry_schedule_ms.split(",") if x.strip()]
    except ValueError:
        waits = [-1]
    need(len(waits) <= 20 and all(w >= 0 for w in waits),
         "merchant_notify.retry_schedule_ms: up to 20 comma-separated waits in ms, each >= 0")
    need(m.request_timeout_ms > 0, "merchant_notify.request_timeout_ms: must be > 0")
    need(m.response_body_max_bytes >= 0,
         "merchant_notify.response_body_max_bytes: must be >= 0")
    need(1 <= m.deliveries_inflight_max <= 4096,
         "merchant_notify.deliveries_inflight_max: must be 1..4096")
    need(m.queue_max >= m.deliveries_inflight_max,
         "merchant_notify.queue_max: must be >= deliveries_inflight_max")
    need(m.poll_ms > 0, "merchant_notify.poll_ms: must be > 0")
    need(m.lease_ms > m.request_timeout_ms,
         "merchant_notify.lease_ms: must exceed request_timeout_ms")
    need(m.event_keep_s * 1000 > sum(waits) + m.lease_ms * (len(waits) + 1),
         "merchant_notify.event_keep_s: must outlast the whole retry schedule")
    need(m.dead_kept_max >= 1, "merchant_notify.dead_kept_max: must be >= 1")


def _validate_reconcile(s: Settings) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)
    rc, ops = s.reconcile, s.ops
    hh, _, mm = rc.run_at_utc.partition(":")
    need(len(hh) == 2 and len(mm) == 2 and hh.isdigit() and mm.isdigit()
         and int(hh) < 24 and int(mm) < 60, "reconcile.run_at_utc: HH:MM (UTC)")
    need(1 <= rc.days_back <= 31, "reconcile.days_back: must be 1..31")
    need(rc.interval_s == 0 or rc.interval_s >= 1, "reconcile.interval_s: >= 0 (0: off)")
    unknown = sorted(set(rc.channels.split(",")) - set(CHANNEL_SECTIONS) - {""})
    need(not unknown, f"reconcile.channels: unknown channel(s) {unknown}")
    need(rc.statement_lag_s >= 0, "reconcile.statement_lag_s: must be >= 0")
    for name in ("channel_calls_inflight_max", "actions_max", "settle_batch_max", "scan_count",
                 "read_batch_max", "runs_inflight_max", "progress_interval_ms",
                 "report_ttl_days", "report_items_max"):
        need(getattr(rc, name) >= 1, f"reconcile.{name}: must be >= 1")
    need(bool(ops.operator_id) and ops.operator_id not in {a.app_id for a in s.apps},
         "ops.operator_id: must be set and differ from every merchant app id")
    need(len(ops.operator_secret.reveal()) >= 16, "ops.operator_secret: at least 16 characters")
    if s.mode == "cluster":
        need(ops.operator_secret.reveal() != LOCAL_OPERATOR_SECRET,
             "ops.operator_secret: the local default is for local mode only")
