"""The parts of one paid order that every design pays, measured on this machine, and the ceiling
they set: ``cores / (sandbox + one HTTP server hop + one HTTP client call + RSA2 sign + RSA2
verify + load generator)`` orders/s.

RSA2 is measured in-process with paycell's keys (``channels/sandbox/keys``) over a sign content
the size of a real ``alipay.trade.pay`` request; the client call is an aiohttp POST of an
Alipay-sized form to the bare server, timed by this process's CPU.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from channels.alipay import signing
from core.settings import AlipaySettings

RSA_OPS_DEFAULT = 1000
CLIENT_CONCURRENCY = 16
CLIENT_TIMEOUT_S = 5.0
PLATFORM_PRIVATE_KEY = "alipay_platform_private.pem"


def _pay_like_params() -> dict[str, str]:
    biz = ('{"out_trade_no":"P_local_s0_0_0mwvma4vk3u6qopvifyftn","scene":"bar_code",'
           '"auth_code":"28763443825664394","subject":"bench","total_amount":"6.00",'
           '"product_code":"FACE_TO_FACE_PAYMENT"}')
    return {"app_id": "2021000000000001", "method": "alipay.trade.pay", "format": "JSON",
            "charset": "utf-8", "sign_type": "RSA2", "timestamp": "2026-11-25 12:00:00",
            "version": "1.0", "notify_url": "http://127.0.0.1:8080/notify/alipay",
            "biz_content": biz}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def rsa2_us(ops: int = RSA_OPS_DEFAULT) -> dict[str, float]:
    """CPU µs of one RSA2 sign (app key) and one verify (platform key), paycell's keys."""
    from pathlib import Path
    keys = Path(AlipaySettings().app_private_key_path).parent
    app_key = signing.load_private_key(AlipaySettings().app_private_key_path)
    platform_key = signing.load_private_key(keys / PLATFORM_PRIVATE_KEY)
    platform_pub = signing.load_public_key(AlipaySettings().alipay_public_key_path)
    content = signing.request_sign_content(_pay_like_params())
    t0 = _cpu()
    for _ in range(ops):
        signing.sign_rsa2(app_key, content)
    sign_us = (_cpu() - t0) * 1e6 / ops
    sig = signing.sign_rsa2(platform_key, content)
    t0 = _cpu()
    for _ in range(ops):
        assert signing.verify_rsa2(platform_pub, content, sig)
    verify_us = (_cpu() - t0) * 1e6 / ops
    return {"rsa2_sign_us": sign_us, "rsa2_verify_us": verify_us, "ops": float(ops)}


async def _client_calls(url: str, seconds: float) -> tuple[int, float]:
    import aiohttp
    form = signing.sign_params(_pay_like_params(), _app_key())
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with session.post(url + "/v1/orders", data=form) as r:
                await r.read()
            done += 1
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = _cpu()
        await asyncio.gather(*(worker(session) for _ in range(CLIENT_CONCURRENCY)))
        return done, _cpu() - t0


def _app_key() -> Any:
    return signing.load_private_key(AlipaySettings().app_private_key_path)


def client_call_us(url: str, seconds: float) -> dict[str, float]:
    """CPU µs this process spends per aiohttp POST (Alipay-sized form) to the bare server."""
    import uvloop
    calls, cpu = uvloop.run(asyncio.wait_for(_client_calls(url, seconds), seconds + 30))
    return {"http_client_call_us": cpu * 1e6 / calls if calls else float("nan"),
            "calls": float(calls)}


def ceiling(parts: dict[str, float], cores: int) -> dict[str, Any]:
    """The machine's ceiling for this work from its measured parts (µs per order)."""
    names = ("sandbox_us", "http_server_hop_us", "http_client_call_us", "rsa2_sign_us",
             "rsa2_verify_us", "loadgen_us")
    per_order = sum(parts[n] for n in names)
    return {"parts_us": {n: parts[n] for n in names}, "per_order_us": per_order,
            "cores": cores, "orders_per_s": cores * 1e6 / per_order,
            "formula": f"{cores} cores x 1e6 / ({' + '.join(names)}) µs"}


def own_cpu_ratio(paycell: dict[str, float], parts: dict[str, float],
                  bare_hop_us: float) -> dict[str, Any]:
    """paycell's own CPU per order (gateway + actors + ray-system + redis) minus its RSA2 work
    (1 sign, 2 verifies: the answer and the notification) and its one channel HTTP call, over
    the bare endpoint's CPU per request. Also given without ray-system."""
    rsa = parts["rsa2_sign_us"] + 2 * parts["rsa2_verify_us"]
    less = rsa + parts["http_client_call_us"]
    own = paycell["gateway"] + paycell["actors"] + paycell["ray-system"] + paycell["redis"]
    own_no_sys = own - paycell["ray-system"]
    return {"own_us": own, "minus_us": less, "net_us": own - less,
            "ratio": (own - less) / bare_hop_us,
            "ratio_without_ray_system": (own_no_sys - less) / bare_hop_us,
            "formula": "(gateway + actors + ray-system + redis - (rsa2_sign + 2 x rsa2_verify "
                       "+ http_client_call)) / bare http_server_hop"}
