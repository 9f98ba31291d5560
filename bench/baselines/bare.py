"""Baseline 1: aiohttp + uvloop answering a fixed JSON to POST /v1/orders (reads the body, no
auth, no Redis, no channel): the ceiling of one HTTP hop in Python on this machine.

  python -m bench.baselines.bare --port P
"""
from __future__ import annotations

import sys

import orjson
import uvloop
from aiohttp import web

from bench.baselines.serving import base_parser, serve_app

FIXED = orjson.dumps({"order_id": "P_local_s0_0_bare", "status": "SUCCEEDED", "amount": 600,
                      "currency": "CNY", "channel": "alipay"})


async def create_order(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=FIXED, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/orders", create_order)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    args = base_parser("python -m bench.baselines.bare", __doc__).parse_args(argv)
    uvloop.run(serve_app(create_app(), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
