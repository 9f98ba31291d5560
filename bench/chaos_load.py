"""The chaos run's load (bench/chaos.py): the order mix, the recorded client that retries one key
until it has an answer, the open loop at a rate, and the closed-loop probe that measures the
stack's maximum for the same mix.

The mix: alipay and wechatpay barcodes (CNY), stripe cards (USD), and the same without a channel
(paycell routes them); amounts end in 00 (paid, subject to the random channel faults), 01
(declined) or 02 (the payer confirms later).

The probe is bench.run's closed loop: wrk, 64 connections, over pre-signed orders of this mix,
on a stack of its own configured as the chaos stacks. wrk, not the Python generator, because it
costs a fraction of the CPU per request (bench/README.md), so on two shared cores the figure is
the stack's and not the generator's; the chaos mix, not bench.run's one alipay order, because
half of the maximum is meant for this load (wechatpay and stripe cost differently).
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.chaos_oracles import Attempt, History
from bench.chaos_stack import ChaosStack
from bench.procs import percentile
from bench.run import run_wrk, write_pool
from gateway.client import PaycellClient, signed_headers

APP_ID, APP_SECRET = "demo-app", "demo-secret"
BARCODES = {"alipay": "28763443825664394", "wechatpay": "134567890123456789"}
CARD = ("USD", "pm_card_visa")

REQUEST_TIMEOUT_S = 5.0      # one attempt
RETRY_FOR_S = 90.0           # a client keeps retrying one key this long (covers a gateway restart)
RETRY_BACKOFF_S = (0.2, 2.0)  # exponential backoff between attempts, from .. to, with jitter
CLIENT_CONNECTIONS_MAX = 2048  # the load's HTTP connections (aiohttp's default 100 would queue)
ORDERS_PATH = "/v1/orders"
PRESIGNED_FOR_S = 200.0      # a pre-signed first attempt older than this is signed again (the
                             # gateway's window is 300 s)

PROBE_CONNECTIONS = 64       # as bench.run --closed 64, where the stack's maximum was measured
PROBE_WARMUP_S = 3.0
PROBE_S = 10.0
PROBE_RATE_CEILING = 2500.0  # orders/s the pre-signed pool is sized for (wrk never reuses one)
POOL_SLACK = 1.2


def order_body(rng: random.Random, run: str, i: int) -> dict[str, Any]:
    kind = rng.choice(("alipay", "wechatpay", "stripe", "any-cny", "any-card"))
    ending = rng.choices(("00", "01", "02"), weights=(80, 10, 10))[0]
    amount = int(f"{rng.randint(1, 99)}{ending}")
    if kind in ("stripe", "any-card"):
        currency, pay = CARD[0], {"type": "card", "token": CARD[1]}
    else:
        code = BARCODES[kind if kind in BARCODES else rng.choice(tuple(BARCODES))]
        currency, pay = "CNY", {"type": "barcode", "auth_code": code}
    body: dict[str, Any] = {"out_trade_no": f"cx{run}{i:06d}", "user_id": f"u{i % 97}",
                            "amount": amount, "currency": currency, "subject": "chaos",
                            "payment": pay}
    if not kind.startswith("any"):
        body["channel"] = kind
    return body


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CLIENT_CONNECTIONS_MAX),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


@dataclass
class Prepared:
    """One order of the open loop, built and signed before the clock starts."""
    body: dict[str, Any]
    raw: bytes
    sha: str
    headers: dict[str, str]        # the first attempt's (a retry signs again: a fresh nonce)
    signed_at: float


def prepare(rng: random.Random, run: str, n: int) -> list[Prepared]:
    now = time.time()
    out = []
    for i in range(n):
        body = order_body(rng, run, i)
        raw = orjson.dumps(body)
        headers = signed_headers(APP_ID, APP_SECRET, "POST", ORDERS_PATH, raw, now=now)
        headers["Content-Type"] = "application/json"
        out.append(Prepared(body, raw, hashlib.sha256(raw).hexdigest()[:16], headers, now))
    return out


async def _send(client: PaycellClient, http: aiohttp.ClientSession, url: str, o: Prepared,
                first: bool) -> tuple[int, dict[str, Any]]:
    if not first or time.time() - o.signed_at > PRESIGNED_FOR_S:
        status, reply, _ = await client.request("POST", ORDERS_PATH, o.raw)
        return status, reply
    async with http.post(url, data=o.raw, headers=o.headers) as resp:
        raw = await resp.read()
        ok = resp.content_type.endswith("json") and raw
        return resp.status, (orjson.loads(raw) if ok else {"text": raw.decode(errors="replace")})


async def place(client: PaycellClient, http: aiohttp.ClientSession, h: History, o: Prepared,
                rng: random.Random, due: float) -> None:
    """One merchant order, due at ``due`` (monotonic): the same key and body until an answer
    that is not 5xx/429/no answer, or until RETRY_FOR_S."""
    key = o.body["out_trade_no"]
    h.bodies[key] = o.body
    start = time.monotonic()
    h.send_lag_s.append(start - due)
    h.first_t[key] = round(h.now(), 3)
    url = client.base_url + ORDERS_PATH
    n = 0
    while True:
        n += 1
        t, t_mono = h.now(), time.monotonic()
        status, reply, error = 0, dict[str, Any](), ""
        try:
            status, reply = await _send(client, http, url, o, n == 1)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            error = type(e).__name__
        h.attempts.append(Attempt(key, o.sha, n, round(t, 3), round(time.monotonic() - t_mono, 3),
                                  status, reply, error))
        if status in (200, 202):
            h.acked.setdefault(key, reply)
            return
        if 400 <= status < 500 and status != 429:
            return                                  # refused: nothing to retry
        if time.monotonic() - start > RETRY_FOR_S:
            return                                  # indefinite: the oracles look it up
        await asyncio.sleep(backoff_s(n, rng))


def backoff_s(attempt: int, rng: random.Random) -> float:
    """The wait after a failed ``attempt`` (1-based): doubling from RETRY_BACKOFF_S[0] up to
    RETRY_BACKOFF_S[1], each drawn from half of it to all of it (a fleet of clients retrying
    after an outage does not come back in step, nor as a storm)."""
    first, cap = RETRY_BACKOFF_S
    return min(cap, first * 2 ** min(attempt - 1, 16)) * rng.uniform(0.5, 1.0)


async def open_loop(client: PaycellClient, http: aiohttp.ClientSession, h: History,
                    orders: list[Prepared], rate: float, start: float,
                    retry_rng: random.Random) -> list[asyncio.Task[None]]:
    """Start orders[i] at start + i/rate (monotonic) until they run out; the orders' tasks. A
    send that falls behind its schedule is recorded (History.send_lag_s), never skipped."""
    tasks: list[asyncio.Task[None]] = []
    for i, o in enumerate(orders):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(place(client, http, h, o, retry_rng, due)))
    return tasks


def lag_figures(lags: list[float]) -> dict[str, float]:
    """Send lag behind schedule, ms: p50, p99, max."""
    s = sorted(lags)
    return {"p50_ms": round(percentile(s, 50) * 1e3, 1),
            "p99_ms": round(percentile(s, 99) * 1e3, 1),
            "max_ms": round((s[-1] if s else 0.0) * 1e3, 1)}


# ---- the probe: the stack's maximum for this mix ---------------------------------------------

def _pool(rng: random.Random, run: str, n: int) -> list[tuple[dict[str, str], bytes]]:
    return [(o.headers, o.raw) for o in prepare(rng, run, n)]


def probe_max(seed: int, work: Path | None = None, seconds: float = PROBE_S,
              conns: int = PROBE_CONNECTIONS) -> dict[str, Any]:
    """Start a stack (as the chaos stacks, no faults), warm it up, run wrk closed loop over the
    chaos mix, always stop it; the figures, ``max_per_s`` = orders answered 200/202 per second."""
    rng = random.Random(seed)
    run = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="paycell-chaos-probe-", dir=work) as tmp:
        stack = ChaosStack(Path(tmp), seed)
        try:
            stack.start()
            phases = []
            for tag, secs in (("w", PROBE_WARMUP_S), ("m", seconds)):
                pool_file = Path(tmp) / f"pool-{tag}.tsv"
                write_pool(_pool(rng, run + tag, int(PROBE_RATE_CEILING * secs * POOL_SLACK)),
                           pool_file)
                phases.append(run_wrk(stack.url, conns, 1, secs, pool_file))
        finally:
            stack.stop()
    load, cpu_s = phases[-1]
    if any(n.startswith("INVALID") for n in load.notes):
        raise RuntimeError(f"probe invalid: {load.notes}")
    answered = load.requests - load.non_2xx
    return {"generator": "wrk closed loop", "connections": conns, "seconds": round(load.wall_s, 2),
            "answered": answered, "max_per_s": round(answered / load.wall_s, 1),
            "non_2xx": load.non_2xx, "errors": load.errors,
            "p50_ms": round(load.latency_us["p50"] / 1e3, 1),
            "p99_ms": round(load.latency_us["p99"] / 1e3, 1), "wrk_cpu_s": round(cpu_s, 2)}
