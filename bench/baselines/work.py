"""The work one paid order costs, written the plain way, from paycell's own pieces.

Every baseline that processes orders does exactly this, in this order:

1. ``authenticate``: HMAC check of the request, then the nonce claimed in Redis (``SET NX EX``,
   one round trip), as paycell's gateway does (``gateway.auth``);
2. ``parse_create_order``: paycell's request validation;
3. write the order record (``SET``, one round trip, Redis with ``appendfsync always``) before the
   charge is sent;
4. charge through ``AlipayConnector`` against the sandbox (RSA2-signed request, signed answer
   verified);
5. write the result (a second ``SET``) and answer the order's public JSON.

The sandbox then POSTs a signed payment notification to ``notify_url``; ``notify`` verifies it
(RSA2) and acknowledges it, as a real Alipay integration must. Unlike paycell it does not apply it
to the stored order (the order is final already).

The split into ``authorize`` (gateway side) and ``pay`` (where the writes and the charge run) lets
the Ray baseline put one actor call between them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

import orjson

from channels.alipay.connector import AlipayConfig, AlipayConnector
from channels.base import ChargeRequest, NotSent, OutcomeUnknown, ProtocolError
from core.errors import PaycellError, http_status_for
from core.ids import make_order_id, shard_for_key
from core.order import CreateOrder, Order
from core.settings import Settings, load_settings
from core.states import Rung
from gateway.auth import RedisNonceStore, authenticate
from gateway.validation import parse_create_order

CHANNELS = ("alipay",)
NOTIFY_PATH = "/notify/alipay"
ORDER_KEY_PREFIX = "bench:order:"
SHARD_COUNT = 1


@dataclass(frozen=True)
class WorkConfig:
    """What a baseline process needs to reach its own Redis and sandbox (plain, picklable)."""
    redis_port: int
    sandbox_port: int
    notify_base_url: str            # where the sandbox sends notifications (this baseline)

    def settings(self) -> Settings:
        return load_settings(env={}, overrides={"redis": {"port": self.redis_port},
                                                "sandbox": {"port": self.sandbox_port}})

    def as_args(self) -> list[str]:
        return ["--redis-port", str(self.redis_port), "--sandbox-port", str(self.sandbox_port),
                "--notify-base-url", self.notify_base_url]


def error_reply(e: PaycellError) -> tuple[int, dict[str, Any]]:
    return http_status_for(e), {"error": e.code, "detail": str(e)}


def connect_redis(settings: Settings) -> Any:
    import redis.asyncio as aioredis
    r = settings.redis
    return aioredis.Redis(host=r.host, port=r.port,
                          socket_connect_timeout=r.connect_timeout_ms / 1000,
                          socket_timeout=r.op_timeout_ms / 1000)


class Authorizer:
    """Steps 1-2: the signed request becomes a validated ``CreateOrder``."""

    def __init__(self, settings: Settings, redis: Any) -> None:
        self._settings = settings
        self._apps = settings.app_secrets()
        self._nonces = RedisNonceStore(redis, prefix="bench:nonce")

    async def authorize(self, headers: Mapping[str, str], method: str, path_qs: str,
                        body: bytes) -> CreateOrder:
        app_id = await authenticate(headers, method, path_qs, body, self._apps, self._nonces,
                                    time.time(), self._settings.gateway.auth_window_s)
        return parse_create_order(app_id, body, CHANNELS)


class Payer:
    """Steps 3-5 for one order, plus the notification check. Build inside the event loop."""

    def __init__(self, settings: Settings, redis: Any, notify_url: str) -> None:
        self._settings = settings
        self._redis = redis
        self._connector = AlipayConnector(AlipayConfig.from_settings(settings, notify_url), None)

    async def close(self) -> None:
        await self._connector.close()

    async def pay(self, cmd: CreateOrder) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 with a final order, 202 with a PENDING one."""
        o = self._settings.orders
        now = time.time()
        shard = shard_for_key(cmd.app_id, cmd.out_trade_no, SHARD_COUNT)
        order_id = make_order_id(o.region, o.set_name, shard, int(now * 1000))
        order = Order.new(order_id, cmd, now)
        order = replace(order, charge_sent=True)
        await self._write(order)                                  # durable before charging
        charge = ChargeRequest(order_id, cmd.amount, cmd.currency, cmd.subject,
                               cmd.payment_type, cmd.auth_code, cmd.notify_url)
        try:
            result = await self._connector.charge(charge)
        except (NotSent, OutcomeUnknown, ProtocolError):
            return 202, order.to_api()                            # a query would resolve it
        order, _ = order.learn(result.fact, Rung.SYNC, time.time(),
                               channel_trade_no=result.channel_trade_no,
                               failure_code=result.failure_code,
                               failure_message=result.failure_message)
        await self._write(order)
        return 200, order.to_api()

    async def _write(self, order: Order) -> None:
        await self._redis.set(ORDER_KEY_PREFIX + order.order_id, orjson.dumps(order.to_record()))

    def notify(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        """Verify the sandbox's signed notification; (status, ack body)."""
        try:
            self._connector.parse_notification(body, {"Content-Type": content_type})
        except ProtocolError:
            ack = self._connector.ack(False)
        else:
            ack = self._connector.ack(True)
        return ack.status, ack.body

