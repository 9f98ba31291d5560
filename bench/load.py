"""Open-loop load from Python (Debian's wrk has no constant-rate mode), and the figures one load
phase reports, whichever generator ran it.

The open loop runs on uvloop with raw keep-alive connections: every request's bytes are built
before the clock starts, a connection carries one request at a time, answers are parsed by
httptools. An aiohttp client session here cost about ten times wrk's CPU per request (bench.run
--rate: 440 us per request, against wrk's 45 in bench.suite), on the two cores the stack under
measure runs on."""
from __future__ import annotations

import asyncio
import gc
import os
import time
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

from bench import procs

REQUEST_TIMEOUT_S = 5.0
OPEN_LOOP_INFLIGHT_MAX = 4096   # connections (one request in flight each); past it: INVALID
OPEN_LOOP_CONNS_WARM = 64       # opened before the clock starts
OPEN_LOOP_CONNECTS_MAX = 16     # connections being opened at once, when all are busy
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


class _Conn(asyncio.Protocol):
    """One keep-alive connection of the generator: one request at a time, its answer parsed in
    C (httptools), nothing allocated per request but the answer's bytes."""

    def __init__(self, gen: _Generator) -> None:
        self._gen = gen
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self.due = self.sent = 0.0
        self.busy = False

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None and not self.busy
        self.busy, self.due, self._body = True, due, []
        self.sent = time.monotonic()
        self.transport.write(request)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._gen.failed(self)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.busy = False
        self._gen.answered(self, self._parser.get_status_code(), b"".join(self._body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._gen.failed(self)


class _Generator:
    """Sends request i at t0 + i / rate on a free connection (a new one if none is free), and
    records each answer against its intended send time."""

    def __init__(self, host: str, port: int, requests: list[bytes], rate: float) -> None:
        self.host, self.port, self.requests, self.rate = host, port, requests, rate
        self.idle: list[_Conn] = []
        self.open = 0
        self.lat: list[float] = []
        self.lag: list[float] = []
        self.pending_lat: list[float] = []
        self.st = {"ok": 0, "succeeded": 0, "pending": 0, "non_2xx": 0, "errors": 0,
                   "skipped": 0}
        self.inflight: set[_Conn] = set()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.open += 1
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.open -= 1
            self.st["errors"] += 1
            return
        self.idle.append(conn)

    def send(self, i: int, due: float) -> bool:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None:
                self.lag.append(time.monotonic() - due)
                self.inflight.add(conn)
                conn.send(self.requests[i], due)
                return True
        return False

    def answered(self, conn: _Conn, status: int, raw: bytes) -> None:
        now = time.monotonic()
        self.inflight.discard(conn)
        self.lat.append(now - conn.due)   # from the intended send time: no omission
        _count(self.st, status, raw)
        if status == 202:
            self.pending_lat.append(now - conn.sent)
        self.idle.append(conn)

    def failed(self, conn: _Conn) -> None:
        if conn in self.inflight:
            self.inflight.discard(conn)
            self.st["errors"] += 1
        if conn.transport is not None:
            conn.transport.abort()
        self.open -= 1

    def expire(self, now: float) -> None:
        for conn in [c for c in self.inflight if now - c.sent > REQUEST_TIMEOUT_S]:
            self.failed(conn)


async def _open_loop(url: str, rate: float, seconds: float,
                     pool: list[tuple[dict[str, str], bytes]]) -> tuple[Load, float]:
    """The phase's figures, and this process's CPU seconds from the first send to the last
    answer (the requests' bytes and the first connections are made before)."""
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    requests = [_request(f"{host}:{port}", headers, body) for headers, body in pool]
    gen = _Generator(host, port, requests, rate)
    await asyncio.gather(*(gen.connect() for _ in range(OPEN_LOOP_CONNS_WARM)))
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()
    n = len(requests)
    cpu0 = os.times()
    t0 = time.monotonic()
    i = 0
    while i < n and time.monotonic() - t0 < seconds:
        now = time.monotonic()
        due_count = min(n, int((now - t0) * rate) + 1)
        while i < due_count:
            if not gen.send(i, t0 + i / rate):
                if gen.open >= OPEN_LOOP_INFLIGHT_MAX:
                    gen.st["skipped"] += 1
                    i += 1
                    continue
                if len(connecting) < OPEN_LOOP_CONNECTS_MAX:   # more connections; this request
                    task = loop.create_task(gen.connect())
                    connecting.add(task)
                    task.add_done_callback(connecting.discard)
                break                                         # goes when one is up (late: counted)
            i += 1
        gen.expire(now)
        if i < due_count:       # request i waits for a connection: look again in a ms
            await asyncio.sleep(0.001)
        else:                   # until the next request is due (uvloop's timers count whole
            await asyncio.sleep(max(t0 + i / rate - time.monotonic(), 0.001))  # ms: no spinning)
    drain_until = time.monotonic() + REQUEST_TIMEOUT_S + 1
    while gen.inflight and time.monotonic() < drain_until:
        gen.expire(time.monotonic())
        await asyncio.sleep(0.005)
    wall = time.monotonic() - t0
    cpu1 = os.times()
    for conn in gen.idle + list(gen.inflight):
        if conn.transport is not None:
            conn.transport.close()
    load = _open_load(gen.st, sorted(gen.lat), sorted(gen.lag), wall, i, rate)
    pending_lat = sorted(gen.pending_lat)
    if pending_lat:
        load.pending_latency_us = {"p50": procs.percentile(pending_lat, 50) * 1e6,
                                   "p99": procs.percentile(pending_lat, 99) * 1e6,
                                   "max": pending_lat[-1] * 1e6, "count": len(pending_lat)}
    return load, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)


def _request(host: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"POST /v1/orders HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
            f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


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
                     "connections busy)")
    return Load("python uvloop, raw keep-alive connections (open loop; wrk has no constant-rate "
                "mode)", wall, sent, st["ok"],
                st["succeeded"], st["pending"], pct, st["non_2xx"], {"client": st["errors"]},
                notes, procs.percentile(lag, 99) * 1e3)


def run_open(url: str, rate: float, seconds: float,
             pool: list[tuple[dict[str, str], bytes]]) -> tuple[Load, float]:
    """One open-loop phase; (its figures, this process's CPU seconds while it sent).
    The garbage collector is off meanwhile: this process holds every phase's pre-signed orders,
    and a full collection over them would pause the generator (answers read late count as the
    stack's latency). A phase allocates a few MB at most."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return uvloop.run(asyncio.wait_for(_open_loop(url, rate, seconds, pool),
                                           seconds + PHASE_SLACK_S))
    finally:
        if was_enabled:
            gc.enable()
