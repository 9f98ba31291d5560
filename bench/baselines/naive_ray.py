"""Baseline 2: what a Ray user writes first. An aiohttp + uvloop gateway (also the Ray driver)
authenticates each request, then makes ONE Ray actor call per request to an async actor that
writes the order to Redis, charges it through the sandbox and writes the result (one Redis round
trip per write). No batching anywhere.

  python -m bench.baselines.naive_ray --port P --redis-port R --sandbox-port S --notify-base-url U
"""
from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # before ray is imported anywhere
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import sys  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402
import uvloop  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.baselines.serving import add_work_args, base_parser, serve_app  # noqa: E402
from bench.baselines.work import (NOTIFY_PATH, Authorizer, Payer, WorkConfig,  # noqa: E402
                                  connect_redis, error_reply)
from core.errors import PaycellError  # noqa: E402
from core.order import CreateOrder  # noqa: E402

ACTOR_MAX_CONCURRENCY = 1000      # Ray's default for async actors, stated
GATEWAY = web.AppKey("gateway", Any)


class OrderPayer:
    """The actor: the two writes and the charge for one order per call (plain class; Ray is
    applied in ``make_actor``)."""

    def __init__(self, config: WorkConfig) -> None:
        self._config = config
        self._payer: Payer | None = None

    async def pay(self, cmd: CreateOrder) -> tuple[int, dict[str, Any]]:
        if self._payer is None:      # built on the actor's event loop, at the first call
            settings = self._config.settings()
            self._payer = Payer(settings, connect_redis(settings),
                                self._config.notify_base_url + NOTIFY_PATH)
        return await self._payer.pay(cmd)


def make_actor(config: WorkConfig) -> Any:
    import ray
    cls = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0,
                     max_concurrency=ACTOR_MAX_CONCURRENCY)(OrderPayer)
    return cls.remote(config)


class Gateway:
    def __init__(self, config: WorkConfig) -> None:
        settings = config.settings()
        redis = connect_redis(settings)
        self.auth = Authorizer(settings, redis)
        self.checker = Payer(settings, redis, config.notify_base_url + NOTIFY_PATH)
        self.actor = make_actor(config)


def _json(status: int, data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def create_order(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY]
    body = await request.read()
    try:
        cmd = await gw.auth.authorize(request.headers, request.method, request.raw_path, body)
    except PaycellError as e:
        return _json(*error_reply(e))
    status, order = await gw.actor.pay.remote(cmd)          # one actor call per request
    return _json(status, order)


async def notify(request: web.Request) -> web.Response:
    status, ack = request.app[GATEWAY].checker.notify(await request.read(), request.content_type)
    return web.Response(status=status, body=ack, content_type="text/plain")


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


def create_app(config: WorkConfig) -> web.Application:
    app = web.Application()
    app[GATEWAY] = Gateway(config)
    app.router.add_post("/v1/orders", create_order)
    app.router.add_post(NOTIFY_PATH, notify)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    p = base_parser("python -m bench.baselines.naive_ray", __doc__)
    add_work_args(p)
    args = p.parse_args(argv)
    import ray
    ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(),
             log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        config = WorkConfig(args.redis_port, args.sandbox_port, args.notify_base_url)

        async def run() -> None:
            app = create_app(config)
            await app[GATEWAY].actor.__ray_ready__.remote()
            await serve_app(app, args.host, args.port)
        uvloop.run(run())
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
