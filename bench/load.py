"""Open-loop load from Python asyncio (Debian's wrk has no constant-rate mode), and the figures
one load phase reports, whichever generator ran it."""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import orjson

from bench import procs

REQUEST_TIMEOUT_S = 5.0
OPEN_LOOP_INFLIGHT_MAX = 4096
PHASE_SLACK_S = 30.0            # a load phase may overrun its duration by this much


@dataclass
class Load:
    """What one load phase saw."""
    generator: str
    wall_s: float
    requests: int
    ok: int                     # 200/202 whose order is SUCCEEDED or PENDING
    succeeded: int
    pending: int
    latency_us: dict[str, float]
    non_2xx: int
    errors: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    send_lag_p99_ms: float = float("nan")   # open loop: how far behind schedule sends went
    # open loop: the 202 PENDING replies alone, from their actual send (the stack's own time
    # to answer an order its channel did not settle within the sync deadline)
    pending_latency_us: dict[str, float] = field(default_factory=dict)


async def _open_loop(url: str, rate: float, seconds: float,
                     pool: list[tuple[dict[str, str], bytes]]) -> Load:
    import aiohttp
    n = len(pool)
    lat, lag, statuses = [], [], {"ok": 0, "succeeded": 0, "pending": 0, "non_2xx": 0,
                                  "errors": 0, "skipped": 0}
    pending_lat: list[float] = []
    inflight: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def send(session: aiohttp.ClientSession, i: int, due: float) -> None:
        headers, body = pool[i]
        sent = time.monotonic()
        lag.append(sent - due)
        try:
            async with session.post(url + "/v1/orders", data=body,
                                    headers={**headers, "Content-Type": "application/json"}) as r:
                raw = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            statuses["errors"] += 1
            return
        now = time.monotonic()
        lat.append(now - due)   # from the intended send time: no omission
        _count(statuses, r.status, raw)
        if r.status == 202:
            pending_lat.append(now - sent)

    connector = aiohttp.TCPConnector(limit=OPEN_LOOP_INFLIGHT_MAX)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.monotonic()
        i = 0
        while i < n and time.monotonic() - t0 < seconds:
            due_count = min(n, int((time.monotonic() - t0) * rate) + 1)
            while i < due_count:
                if len(inflight) >= OPEN_LOOP_INFLIGHT_MAX:
                    statuses["skipped"] += 1
                else:
                    task = asyncio.create_task(send(session, i, t0 + i / rate))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                i += 1
            await asyncio.sleep(0.001)
        if inflight:
            await asyncio.wait(inflight, timeout=REQUEST_TIMEOUT_S + 1)
        wall = time.monotonic() - t0
    load = _open_load(statuses, sorted(lat), sorted(lag), wall, i, rate)
    pending_lat.sort()
    if pending_lat:
        load.pending_latency_us = {"p50": procs.percentile(pending_lat, 50) * 1e6,
                                   "p99": procs.percentile(pending_lat, 99) * 1e6,
                                   "max": pending_lat[-1] * 1e6, "count": len(pending_lat)}
    return load


def _count(statuses: dict[str, int], status: int, raw: bytes) -> None:
    if status not in (200, 202):
        statuses["non_2xx"] += 1
        return
    order_status = orjson.loads(raw).get("status")
    if order_status in ("SUCCEEDED", "PENDING"):
        statuses["ok"] += 1
        statuses["succeeded" if order_status == "SUCCEEDED" else "pending"] += 1


def _open_load(st: dict[str, int], lat: list[float], lag: list[float], wall: float, sent: int,
               rate: float) -> Load:
    pct = {f"p{q:g}": procs.percentile(lat, q) * 1e6 for q in (50, 97, 99, 99.9)}
    pct["max"] = lat[-1] * 1e6 if lat else float("nan")
    notes = [f"target {rate:g}/s, scheduled {sent} in {wall:.1f} s (incl. drain)",
             f"send lag behind schedule p99 {procs.percentile(lag, 99) * 1e3:.1f} ms "
             "(large lag means the generator, not the stack, set the pace)"]
    if st["skipped"]:
        notes.append(f"INVALID: {st['skipped']} requests not sent ({OPEN_LOOP_INFLIGHT_MAX} "
                     "in flight)")
    return Load("python asyncio (open loop; wrk has no constant-rate mode)", wall, sent, st["ok"],
                st["succeeded"], st["pending"], pct, st["non_2xx"], {"client": st["errors"]},
                notes, procs.percentile(lag, 99) * 1e3)


def run_open(url: str, rate: float, seconds: float,
             pool: list[tuple[dict[str, str], bytes]]) -> tuple[Load, float]:
    """One open-loop phase; (its figures, this process's CPU seconds during it)."""
    before = os.times()
    load = asyncio.run(asyncio.wait_for(_open_loop(url, rate, seconds, pool),
                                        seconds + PHASE_SLACK_S))
    after = os.times()
    return load, (after.user - before.user) + (after.system - before.system)
