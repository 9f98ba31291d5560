"""Baseline 3: the same work as one Ray Serve deployment behind Serve's HTTP proxy (bound to
127.0.0.1). Each replica authenticates, writes the order, charges it through the sandbox and writes
the result, one request at a time per coroutine (``max_ongoing_requests`` of them at once).

  python -m bench.baselines.serve_app --port P --redis-port R --sandbox-port S --notify-base-url U
      [--replicas N] [--max-ongoing-requests M]

Replicas default to 1: on 2 cores the proxy, the replica, Redis, the sandbox and the load generator
already share both cores; a second replica adds a process and a routing choice but no core (the
suite's --serve-replicas tries 2).
"""
from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # before ray is imported anywhere
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402

from bench.baselines.serving import add_work_args, base_parser  # noqa: E402
from bench.baselines.work import (NOTIFY_PATH, Authorizer, Payer, WorkConfig,  # noqa: E402
                                  connect_redis, error_reply)
from core.errors import PaycellError  # noqa: E402

REPLICAS_DEFAULT = 1
MAX_ONGOING_DEFAULT = 64       # I/O-bound requests (Redis, channel): many may wait at once
APP_NAME = "bench"


class OrderDeployment:
    """A plain class; ``build`` applies ``serve.deployment``."""

    def __init__(self, config: WorkConfig) -> None:
        self._config = config
        self._auth: Authorizer | None = None
        self._payer: Payer | None = None

    def _ready(self) -> tuple[Authorizer, Payer]:
        if self._auth is None or self._payer is None:   # built on the replica's event loop
            settings = self._config.settings()
            redis = connect_redis(settings)
            self._auth = Authorizer(settings, redis)
            self._payer = Payer(settings, redis, self._config.notify_base_url + NOTIFY_PATH)
        return self._auth, self._payer

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import Response
        auth, payer = self._ready()
        path, body = request.url.path, await request.body()
        if path == "/v1/orders" and request.method == "POST":
            status, data = await _create(auth, payer, request, path, body)
            return Response(orjson.dumps(data), status, media_type="application/json")
        if path == NOTIFY_PATH and request.method == "POST":
            status, ack = payer.notify(body, request.headers.get("content-type", ""))
            return Response(ack, status, media_type="text/plain")
        if path == "/healthz":
            return Response(b'{"status":"ok"}', 200, media_type="application/json")
        return Response(b'{"error":"not_found"}', 404, media_type="application/json")


async def _create(auth: Authorizer, payer: Payer, request: Any, path: str,
                  body: bytes) -> tuple[int, Any]:
    path_qs = path + ("?" + request.url.query if request.url.query else "")
    try:
        cmd = await auth.authorize(request.headers, request.method, path_qs, body)
    except PaycellError as e:
        return error_reply(e)
    return await payer.pay(cmd)


def build(config: WorkConfig, replicas: int, max_ongoing: int) -> Any:
    from ray import serve
    dep = serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                           ray_actor_options={"num_cpus": 0})(OrderDeployment)
    return dep.bind(config)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def main(argv: list[str] | None = None) -> int:
    p = base_parser("python -m bench.baselines.serve_app", __doc__)
    add_work_args(p)
    p.add_argument("--replicas", type=int, default=REPLICAS_DEFAULT)
    p.add_argument("--max-ongoing-requests", type=int, default=MAX_ONGOING_DEFAULT)
    args = p.parse_args(argv)
    import ray
    from ray import serve
    ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(),
             log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        config = WorkConfig(args.redis_port, args.sandbox_port, args.notify_base_url)
        serve.run(build(config, args.replicas, args.max_ongoing_requests), name=APP_NAME,
                  route_prefix="/", blocking=False)
        print(f"listening on http://{args.host}:{args.port}", flush=True)
        _wait_for_signal()
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
