"""The chaos run: the stack as processes under load, a recorded history, faults, a drain, oracles.

  python -m bench.chaos [--scenario all|shard_kill|channel_faults|notify_faults|redis_kill|
                                    gateway_kill|node_loss|mixed]
                        [--rate R] [--duration S] [--seed N] [--cycles K] [--out DIR]

What runs (all on loopback, all ours, every process ended by PID):

  * redis-server, started here with exactly the command line ``paycell up`` uses
    (gateway.local.redis_child), so it can be killed and restarted identically; paycell is
    pointed at it with ``PAYCELL_REDIS__URL``;
  * the channel sandbox (``python -m channels.sandbox --naive-charge``), started here so that its
    ledger (the money truth) survives a gateway kill; with ``naive_charge`` every charge request
    that reaches a channel charges again, so any second request for one order is a double charge;
  * ``paycell up`` (gateway + Ray + shard actors) with ``PAYCELL_SANDBOX__START_LOCAL=false``,
    scheduled reconciliation off and ``reconcile.statement_lag_s=0`` (the run reconciles today on
    demand after the drain).

The load is open loop at ``--rate`` orders/s (default 40). The stack's measured maximum on this
2-core machine is about 600 orders/s (bench.run, closed loop), so half of it is about 300/s; the
default is lower because the load generator, the fault injector, Redis, the sandbox, Ray and the
gateway share the same two cores and the short form in ``make test`` must stay light and
deterministic; ``--rate 300`` runs at half the maximum. Orders mix alipay and wechatpay barcodes
(CNY), stripe cards (USD), and the same without a channel (paycell routes them); amounts end in 00
(paid, subject to the random channel faults), 01 (declined) or 02 (the payer confirms later).
Every client retries with the same key and the same body on 5xx, timeouts and connection errors,
for up to ``RETRY_FOR_S``. Every attempt is recorded: key, body hash, attempt, time, reply status
and body (or the error).

Faults (a seeded schedule; ``--seed`` makes it the same run again):

  shard_kill      SIGKILL a random shard actor process every ~SHARD_KILL_EVERY_S
  channel_faults  channel knobs: commit-then-drop 2%, hang 5% (HANG_MS) on every channel
  notify_faults   notifications dropped 20%, duplicated 30%; earlier notifications replayed late
                  (reordered); SUCCEEDED orders fully refunded, then their PAID notification
                  replayed after the refund's (a late contradictory one)
  redis_kill      redis-server SIGKILLed and restarted identically, or SIGSTOPped for PAUSE_S
  gateway_kill    ``paycell up`` SIGKILLed (its leftovers by PID) and started again on the same
                  data and ports while clients keep retrying the same keys
  node_loss       two Ray nodes on loopback (PAYCELL_RAY__LOCAL_NODES=2); the second node's raylet
                  is SIGKILLed, its actors restart on the head
  mixed           all of the above at once (node_loss included), process faults less often
  a+b             the named ones at once (e.g. shard_kill+channel_faults+notify_faults)

After the load, faults stop (knobs back to none, Redis running, the gateway up), then the drain:
the ladder (sync -> notify -> query) gets up to ``LADDER_DRAIN_S`` for every known order to be
final; then, while an order is not final or does not match its channel, the reconciler runs once
per channel (one "cycle"), up to ``--cycles`` (default 3). Then the oracles (names after Jepsen's):

  lost               an acknowledged key whose order is gone (or answers under another id)
  unexpected         a channel trade for an order id no requested key has
  duplicated         an order charged more than once, across every channel's ledger
  wrong_total        per currency: ledger (charges * amount - refunded) != sum of SUCCEEDED
                     orders' (amount - refunded_amount)
  not_final          a known order still PENDING after the drain
  mismatch           SUCCEEDED but not charged once net on its channel, or final otherwise and
                     money still taken
  divergent_replies  two replies for one key that disagree on the order (id, amount, currency,
                     created_at) or on a final status

It prints a table, writes JSON under bench/results/, and exits 1 on any violation.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import orjson
import psutil

from core.settings import load_settings
from gateway.client import PaycellClient
from gateway.local import Child, die_with_parent, free_port, redis_child

APP_ID, APP_SECRET = "demo-app", "demo-secret"
OPERATOR_ID, OPERATOR_SECRET = "local-operator", "local-operator-secret"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results")

SCENARIOS = ("shard_kill", "channel_faults", "notify_faults", "redis_kill", "gateway_kill",
             "node_loss", "mixed")
LEDGER_CHANNELS = ("alipay", "wechatpay", "stripe", "paypal")   # where the load can be charged
RECONCILE_CHANNELS = LEDGER_CHANNELS

DEFAULT_RATE = 40.0          # orders/s (see the docstring for the measured maximum)
DEFAULT_DURATION_S = 30.0
DEFAULT_CYCLES = 3           # the stated bound: reconcile cycles to drain
REQUEST_TIMEOUT_S = 5.0      # one attempt
RETRY_FOR_S = 90.0           # a client keeps retrying one key this long (covers a gateway restart)
RETRY_BACKOFF_S = (0.2, 1.0)  # uniform backoff between attempts
LADDER_DRAIN_S = 45.0        # the ladder's time to make every order final before reconciling
POLL_EVERY_S = 0.5
READY_TIMEOUT_S = 120.0
RECONCILE_TIMEOUT_S = 60.0
RECONCILE_503_RETRIES = 10
STOP_TIMEOUT_S = 30.0

SHARD_KILL_EVERY_S = 3.0
REDIS_FAULT_EVERY_S = 6.0
REDIS_DOWN_S = 1.0           # between the SIGKILL and the restart
PAUSE_S = 2.0                # SIGSTOP .. SIGCONT
GATEWAY_KILL_EVERY_S = 25.0
NODE_LOSS_AT_S = 5.0
CHANNEL_KNOBS = {"commit_then_drop_rate": 0.02, "hang_rate": 0.05, "hang_ms": 3000}
NOTIFY_KNOBS = {"notify_drop_rate": 0.2, "notify_duplicate_rate": 0.3}
NO_KNOBS = {"commit_then_drop_rate": 0.0, "hang_rate": 0.0, "notify_drop_rate": 0.0,
            "notify_duplicate_rate": 0.0}
REPLAY_EVERY_S = 0.25        # one late (reordered) notification this often
REFUND_SHARE = 0.1           # of SUCCEEDED orders in notify_faults: fully refunded
MIXED_SLOWER = 2.0           # mixed: process faults this many times less often

BARCODES = {"alipay": "28763443825664394", "wechatpay": "134567890123456789"}
CARD = ("USD", "pm_card_visa")


# ---- the stack -------------------------------------------------------------------------------

class ChaosStack:
    """redis-server and the sandbox started here; ``paycell up`` on them; fixed ports for its
    whole life so a restarted piece comes back where the others expect it."""

    def __init__(self, work: Path, seed: int, local_nodes: int = 1) -> None:
        self.work = work
        self.data = work / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port, self.redis_port, self.sandbox_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.seed = seed
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), PAYCELL_DATA_DIR=str(self.data),
                        PAYCELL_GATEWAY__HOST="127.0.0.1", PAYCELL_GATEWAY__PORT=str(self.port),
                        PAYCELL_REDIS__PORT=str(self.redis_port),
                        PAYCELL_REDIS__URL=f"redis://127.0.0.1:{self.redis_port}/0",
                        PAYCELL_SANDBOX__PORT=str(self.sandbox_port),
                        PAYCELL_SANDBOX__START_LOCAL="false",
                        PAYCELL_RECONCILE__ENABLED="false",
                        PAYCELL_RECONCILE__STATEMENT_LAG_S="0",
                        PAYCELL_RAY__LOCAL_NODES=str(local_nodes),
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
        # the command line paycell up would run redis-server with (redis.url unset)
        plain = {k: v for k, v in self.env.items() if k != "PAYCELL_REDIS__URL"}
        self.redis = redis_child(load_settings(env=plain), self.data)
        self.sandbox = Child("sandbox", [sys.executable, "-m", "channels.sandbox", "--host",
                                         "127.0.0.1", "--port", str(self.sandbox_port),
                                         "--seed", str(seed), "--naive-charge"],
                             self.data / "logs" / "sandbox.log", env=self.env)
        self.up: subprocess.Popen[bytes] | None = None
        self.up_log = self.data / "logs" / "paycell-up.log"
        self.extra_pids: list[tuple[int, float]] = []   # leftovers of killed launchers

    # -- start / stop

    def start(self) -> None:
        self.start_redis()
        self.sandbox.start()
        _wait(lambda: _http_ok(self.sandbox_url + "/_sandbox/health"), "sandbox", self.sandbox)
        self.start_up()
        _wait(lambda: _http_ok(self.url + "/readyz"), "paycell up", None, self.up)

    def start_redis(self) -> None:
        self.redis = Child("redis-server", self.redis.argv, self.redis.log_path)
        self.redis.start()
        _wait(lambda: _redis_pings(self.redis_port), "redis-server", self.redis)

    def start_up(self) -> None:
        self.up_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.up_log, "ab") as log:
            self.up = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up"], cwd=ROOT,
                                       env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=die_with_parent)

    def tree(self) -> list[psutil.Process]:
        """The live processes under ``paycell up``."""
        if self.up is None or self.up.poll() is not None:
            return []
        try:
            root = psutil.Process(self.up.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGINT to paycell up (then harder), its leftovers and ours by PID; Redis, sandbox."""
        tree = [(p.pid, _ctime(p)) for p in self.tree()]
        if self.up is not None and self.up.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                self.up.send_signal(sig)
                try:
                    self.up.wait(STOP_TIMEOUT_S if sig == signal.SIGINT else 10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        _kill_left(tree + self.extra_pids)
        self.sandbox.stop()
        self.redis.stop()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.up_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- faults

    def shard_pids(self) -> list[int]:
        return [p.pid for p in self.tree() if _title(p).startswith("ray::LiveShardHost")]

    def kill_shard(self, rng: random.Random) -> bool:
        pids = self.shard_pids()
        if not pids:
            return False
        return _kill(rng.choice(sorted(pids)))

    def kill_redis(self) -> bool:
        assert self.redis.proc is not None
        self.redis.proc.send_signal(signal.SIGKILL)
        self.redis.proc.wait()
        return True

    def pause_redis(self, pause: bool) -> None:
        assert self.redis.proc is not None
        self.redis.proc.send_signal(signal.SIGSTOP if pause else signal.SIGCONT)

    def kill_gateway(self) -> bool:
        """SIGKILL paycell up; what it started (Ray) is ended by PID; then start it again."""
        assert self.up is not None
        tree = [(p.pid, _ctime(p)) for p in self.tree()]
        self.up.send_signal(signal.SIGKILL)
        self.up.wait()
        time.sleep(1.0)
        _kill_left(tree[1:])
        self.start_up()
        return True

    def second_raylet(self) -> int | None:
        """The raylet started last (the Cluster's added node; the head's starts first)."""
        raylets = sorted((p for p in self.tree() if _name(p) == "raylet"), key=_ctime)
        return raylets[-1].pid if len(raylets) >= 2 else None

    def kill_node(self) -> list[str] | None:
        """SIGKILL the second node's raylet; the paycell actors it hosted (None: no second
        node)."""
        pid = self.second_raylet()
        if pid is None:
            return None
        try:
            hosted = [_title(c)[len("ray::"):].split(".")[0].split(" ")[0]
                      for c in psutil.Process(pid).children(recursive=True)
                      if _title(c).startswith("ray::Live")]
        except psutil.NoSuchProcess:
            return None
        return hosted if _kill(pid) else None


def _name(p: psutil.Process) -> str:
    try:
        return str(p.name())
    except psutil.Error:
        return ""


def _title(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
        return cmd[0] if cmd else ""
    except psutil.Error:
        return ""


def _ctime(p: psutil.Process) -> float:
    try:
        return float(p.create_time())
    except psutil.Error:
        return 0.0


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def _kill_left(procs: list[tuple[int, float]]) -> None:
    """SIGKILL the processes of ``procs`` still alive as the same process (PID + start time)."""
    for pid, created in procs:
        try:
            if psutil.Process(pid).create_time() == created:
                os.kill(pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue


def _http_ok(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 (loopback only)
            return int(r.status) == 200
    except OSError:
        return False


def _redis_pings(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait(ready: Callable[[], bool], what: str, child: Child | None,
          proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{what} exited while starting; see {child.log_path}")
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) while starting")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {READY_TIMEOUT_S:.0f} s")


async def _wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if await asyncio.to_thread(_http_ok, url + "/readyz"):
            return time.monotonic() - t0
        await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


# ---- the history -----------------------------------------------------------------------------

@dataclass
class Attempt:
    key: str
    body_sha: str
    attempt: int
    t: float                  # seconds since the run started, when the request was sent
    took_s: float
    status: int               # 0: no HTTP answer (timeout, connection error)
    reply: dict[str, Any]
    error: str = ""


@dataclass
class History:
    t0: float = field(default_factory=time.monotonic)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)   # key -> first 200/202 reply

    def now(self) -> float:
        return time.monotonic() - self.t0


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


async def place(client: PaycellClient, h: History, body: dict[str, Any],
                rng: random.Random) -> None:
    """One merchant order: the same key and body until an answer that is not 5xx/no answer."""
    key = body["out_trade_no"]
    sha = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    h.bodies[key] = body
    start = time.monotonic()
    n = 0
    while True:
        n += 1
        t, t_mono = h.now(), time.monotonic()
        status, reply, error = 0, dict[str, Any](), ""
        try:
            status, reply = await client.create_order(body)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            error = type(e).__name__
        h.attempts.append(Attempt(key, sha, n, round(t, 3), round(time.monotonic() - t_mono, 3),
                                  status, reply, error))
        if status in (200, 202):
            h.acked.setdefault(key, reply)
            return
        if 400 <= status < 500 and status != 429:
            return                                  # refused: nothing to retry
        if time.monotonic() - start > RETRY_FOR_S:
            return                                  # indefinite: the oracles look it up
        await asyncio.sleep(rng.uniform(*RETRY_BACKOFF_S))


# ---- faults ----------------------------------------------------------------------------------

@dataclass
class Faults:
    counts: dict[str, int] = field(default_factory=dict)
    log: list[tuple[float, str]] = field(default_factory=list)

    def add(self, h: History, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n
        self.log.append((round(h.now(), 2), kind))


async def set_knobs(http: aiohttp.ClientSession, sandbox_url: str, knobs: dict[str, Any]) -> None:
    for ch in LEDGER_CHANNELS:
        async with http.post(f"{sandbox_url}/{ch}/_sandbox/knobs", json=knobs) as r:
            if r.status != 200:
                raise RuntimeError(f"{ch} sandbox refused {knobs}: {await r.text()}")


async def ledgers(http: aiohttp.ClientSession, sandbox_url: str) -> dict[str, dict[str, Any]]:
    out = {}
    for ch in LEDGER_CHANNELS:
        async with http.get(f"{sandbox_url}/{ch}/_sandbox/ledger") as r:
            out[ch] = await r.json()
    return out


async def every(period_s: float, until: float, rng: random.Random,
                act: Callable[[], Awaitable[None]], first_s: float = 1.0) -> None:
    """Run ``act`` at jittered times (period_s * U(0.5, 1.5)) until ``until`` (monotonic)."""
    await asyncio.sleep(first_s)
    while time.monotonic() < until:
        await act()
        await asyncio.sleep(period_s * rng.uniform(0.5, 1.5))


def kinds_of(scenario: str) -> frozenset[str]:
    """The fault kinds of a scenario: one name, ``mixed`` (all), or names joined by ``+``."""
    if scenario == "mixed":
        return frozenset(SCENARIOS) - {"mixed"}
    kinds = frozenset(scenario.split("+"))
    unknown = kinds - set(SCENARIOS) - {"mixed"}
    if unknown or "mixed" in kinds:
        raise ValueError(f"unknown scenario part(s) {sorted(unknown)}; known: {SCENARIOS}")
    return kinds


def injectors(kinds: frozenset[str], stack: ChaosStack, h: History, faults: Faults,
              http: aiohttp.ClientSession, client: PaycellClient, rng: random.Random,
              until: float) -> list[Awaitable[None]]:
    mixed = len(kinds & {"shard_kill", "redis_kill", "gateway_kill", "node_loss"}) > 1
    slower = MIXED_SLOWER if mixed else 1.0
    jobs: list[Awaitable[None]] = []

    if "shard_kill" in kinds:
        async def shard() -> None:
            if stack.kill_shard(rng):
                faults.add(h, "shard_killed")
        jobs.append(every(SHARD_KILL_EVERY_S * slower, until, rng, shard))

    if "redis_kill" in kinds:
        async def redis() -> None:
            if rng.random() < 0.5:
                stack.kill_redis()
                faults.add(h, "redis_killed")
                await asyncio.sleep(REDIS_DOWN_S)
                stack.start_redis()
            else:
                stack.pause_redis(True)
                faults.add(h, "redis_paused")
                await asyncio.sleep(PAUSE_S)
                stack.pause_redis(False)
        jobs.append(every(REDIS_FAULT_EVERY_S * slower, until, rng, redis, first_s=2.0))

    if "gateway_kill" in kinds:
        async def gateway() -> None:
            stack.kill_gateway()
            faults.add(h, "gateway_killed")
            faults.counts["gateway_restart_s_max"] = max(
                faults.counts.get("gateway_restart_s_max", 0),
                round(await _wait_ready(stack.url)))
        period = GATEWAY_KILL_EVERY_S * (1.5 if mixed else 1.0)
        jobs.append(every(period, until, rng, gateway, first_s=period / 3))

    if "node_loss" in kinds:
        async def node() -> None:
            await asyncio.sleep(NODE_LOSS_AT_S)
            hosted = stack.kill_node()
            if hosted is not None:
                faults.add(h, "node_lost")
                for actor in hosted:
                    faults.add(h, f"node_lost_actor_{actor}")
            else:
                faults.add(h, "node_loss_no_second_node")
        jobs.append(node())

    if "notify_faults" in kinds:
        refunded: set[str] = set()

        async def replay_one() -> None:
            """A late notification: an earlier one of an order delivered again now; for a
            refunded order its PAID one after the refund's (contradicts the refund)."""
            succeeded = [(k, o) for k, o in h.acked.items() if o.get("status") == "SUCCEEDED"
                         and o.get("channel") in LEDGER_CHANNELS]
            if not succeeded:
                return
            key, order = rng.choice(succeeded)
            oid, ch = order["order_id"], order["channel"]
            if key not in refunded and rng.random() < REFUND_SHARE:
                refunded.add(key)
                try:
                    status, _ = await client.create_refund(oid, {"out_refund_no": f"rf{key}",
                                                                 "amount": order["amount"],
                                                                 "reason": "chaos"})
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    status = 0           # the gateway is down (mixed): no late notification
                faults.add(h, f"refund_{status}")
                if status not in (200, 202):
                    return
                await asyncio.sleep(1.0)     # its notification first
                kind = "notify_contradictory"
            else:
                kind = "notify_reordered"
            async with http.post(f"{stack.sandbox_url}/{ch}/_sandbox/replay",
                                 json={"out_trade_no": oid, "index": 0}) as r:
                if r.status == 200:
                    faults.add(h, kind)
        jobs.append(every(REPLAY_EVERY_S, until, rng, replay_one))
    return jobs


# ---- reconcile -------------------------------------------------------------------------------

async def reconcile(url: str, channel: str, day: str, unavailable: list[str]) -> dict[str, Any]:
    """Run the reconciler for one channel and day to its end; 503s (retried) go to
    ``unavailable``."""
    path = f"/v1/ops/reconciliation/{channel}/{day}"
    async with PaycellClient(url, OPERATOR_ID, OPERATOR_SECRET) as ops:
        for _ in range(RECONCILE_503_RETRIES):
            status, report, _ = await ops.request("POST", path, None)
            if status != 503:
                break
            unavailable.append(f"{channel}: {report.get('detail', '')}")
            await asyncio.sleep(1.0)       # as an operator would: 503 says try again
        if status not in (200, 202):
            raise RuntimeError(f"reconcile {channel}: {status} {report}")
        run = report["run"]
        deadline = time.monotonic() + RECONCILE_TIMEOUT_S
        while report.get("status") == "running" or report.get("run", 0) < run:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reconcile {channel} still running after "
                                   f"{RECONCILE_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.5)
            status, report, _ = await ops.request("GET", path, None)
            if status == 503:
                unavailable.append(f"{channel}: {report.get('detail', '')}")
                report = {"status": "running", "run": run}
        return report


# ---- oracles ---------------------------------------------------------------------------------

FINAL = ("SUCCEEDED", "FAILED", "CLOSED")
IDENTITY = ("order_id", "out_trade_no", "amount", "currency", "created_at")


def check(h: History, found: dict[str, dict[str, Any]],
          books: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """The oracles over the history, the orders as paycell has them now (key -> order, for every
    requested key it knows) and the channels' ledgers. Each oracle: the list of its violations."""
    v: dict[str, list[Any]] = {k: [] for k in ("lost", "unexpected", "duplicated", "wrong_total",
                                               "not_final", "mismatch", "divergent_replies")}
    for key, reply in h.acked.items():
        now = found.get(key)
        if now is None or now.get("order_id") != reply.get("order_id"):
            v["lost"].append(key)
    ours = {o["order_id"]: o for o in found.values() if o.get("order_id")}
    charges: dict[str, int] = {}
    net: dict[str, dict[str, int]] = {}       # order id -> channel -> money taken net
    ledger_money: dict[str, int] = {}
    for ch, book in books.items():
        for oid, t in book["trades"].items():
            charges[oid] = charges.get(oid, 0) + int(t["charges"])
            taken = int(t["total_amount"]) * int(t["charges"]) - int(t["refunded_amount"])
            net.setdefault(oid, {})[ch] = taken
            ledger_money[t["currency"]] = ledger_money.get(t["currency"], 0) + taken
            if oid not in ours and (t["charges"] or t["pay_calls"]):
                v["unexpected"].append((ch, oid))
    v["duplicated"] = sorted(oid for oid, n in charges.items() if n > 1)
    order_money: dict[str, int] = {}
    for oid, o in ours.items():
        status = o.get("status")
        if status not in FINAL:
            v["not_final"].append(oid)
            continue
        kept = int(o["amount"]) - int(o.get("refunded_amount", 0))
        on = net.get(oid, {})
        if status == "SUCCEEDED":
            order_money[o["currency"]] = order_money.get(o["currency"], 0) + kept
            if on.get(o.get("channel", ""), 0) != kept or sum(on.values()) != kept:
                v["mismatch"].append((oid, status, on))
        elif any(on.values()):
            v["mismatch"].append((oid, status, on))
    for cur in sorted(set(ledger_money) | set(order_money)):
        if ledger_money.get(cur, 0) != order_money.get(cur, 0):
            v["wrong_total"].append({"currency": cur, "ledger": ledger_money.get(cur, 0),
                                     "succeeded": order_money.get(cur, 0)})
    by_key: dict[str, list[Attempt]] = {}
    for a in h.attempts:
        if a.status in (200, 202):
            by_key.setdefault(a.key, []).append(a)
    for key, got in by_key.items():
        first = got[0].reply
        final_seen = ""
        for a in got:
            if any(a.reply.get(f) != first.get(f) for f in IDENTITY):
                v["divergent_replies"].append((key, "identity", a.attempt))
                break
            st = a.reply.get("status", "")
            if final_seen and st != final_seen:
                v["divergent_replies"].append((key, f"{final_seen}->{st}", a.attempt))
                break
            if st in FINAL:
                final_seen = st
        now = found.get(key, {})
        if final_seen and now.get("status") not in (final_seen, None):
            v["divergent_replies"].append((key, f"reply {final_seen}, now {now.get('status')}"))
    return v


async def lookup(client: PaycellClient, keys: list[str]) -> dict[str, dict[str, Any]]:
    """key -> the order paycell has for it now (keys it does not know are left out)."""
    out: dict[str, dict[str, Any]] = {}
    sem = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with sem:
            for _ in range(5):
                try:
                    status, o = await client.find_order(key)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    await asyncio.sleep(0.5)
                    continue
                if status == 200:
                    out[key] = o
                if status < 500:
                    return
                await asyncio.sleep(0.5)
    await asyncio.gather(*(one(k) for k in keys))
    return out


# ---- the run ---------------------------------------------------------------------------------

async def drive(stack: ChaosStack, scenario: str, rate: float, duration_s: float, seed: int,
                cycles_max: int) -> dict[str, Any]:
    rng = random.Random(seed)
    load_rng, fault_rng, retry_rng = (random.Random(rng.random()) for _ in range(3))
    run = secrets.token_hex(3)
    h, faults = History(), Faults()
    day = datetime.now(timezone.utc).date().isoformat()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            PaycellClient(stack.url, APP_ID, APP_SECRET, session=http,
                          timeout_s=REQUEST_TIMEOUT_S) as client:
        kinds = kinds_of(scenario)
        knobs: dict[str, Any] = {}
        if "channel_faults" in kinds:
            knobs |= CHANNEL_KNOBS
        if "notify_faults" in kinds:
            knobs |= NOTIFY_KNOBS
        if knobs:
            await set_knobs(http, stack.sandbox_url, knobs)
        start = time.monotonic()
        until = start + duration_s
        tasks: list[asyncio.Task[None]] = []
        fault_tasks = [asyncio.ensure_future(j) for j in
                       injectors(kinds, stack, h, faults, http, client, fault_rng, until)]
        i = 0
        while time.monotonic() < until:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(place(client, h, order_body(load_rng, run, i),
                                                   retry_rng)))
            i += 1
        # faults stop: injectors finish their current fault (a restart completes), knobs off
        await asyncio.gather(*fault_tasks)
        await set_knobs(http, stack.sandbox_url, NO_KNOBS)
        load_s = time.monotonic() - start
        await asyncio.gather(*tasks)
        clients_done_s = time.monotonic() - start
        books = await ledgers(http, stack.sandbox_url)
        for ch, book in books.items():
            for name, n in book["totals"].get("faults", {}).items():
                faults.counts[f"channel_{name}"] = faults.counts.get(f"channel_{name}", 0) + n
            for name in ("notifies_dropped", "notifies_duplicated"):
                faults.counts[name] = faults.counts.get(name, 0) + book["totals"].get(name, 0)
        # drain: the ladder first, then reconcile cycles while anything is off
        t_drain = time.monotonic()
        keys = sorted(h.bodies)
        found = await lookup(client, keys)
        while time.monotonic() - t_drain < LADDER_DRAIN_S:
            if all(o.get("status") in FINAL for o in found.values()):
                break
            await asyncio.sleep(POLL_EVERY_S)
            found = await lookup(client, keys)
        ladder_s = time.monotonic() - t_drain
        books = await ledgers(http, stack.sandbox_url)
        v = check(h, found, books)
        cycles, reports, unavailable = 0, [], list[str]()
        while cycles < cycles_max and (v["not_final"] or v["mismatch"] or v["wrong_total"]):
            cycles += 1
            for ch in RECONCILE_CHANNELS:
                r = await reconcile(stack.url, ch, day, unavailable)
                reports.append({"cycle": cycles, "channel": ch, "status": r.get("status"),
                                "counts": r.get("counts", r.get("summary"))})
            found = await lookup(client, keys)
            books = await ledgers(http, stack.sandbox_url)
            v = check(h, found, books)
        # one more run of the reconciler on the drained state: it must change nothing
        after = []
        for ch in RECONCILE_CHANNELS:
            r = await reconcile(stack.url, ch, day, unavailable)
            after.append({"channel": ch, "status": r.get("status")})
        found2 = await lookup(client, keys)
        books = await ledgers(http, stack.sandbox_url)
        v = check(h, found2, books)
        changed = sorted(k for k in found if found2.get(k, {}).get("status")
                         != found[k].get("status"))
        if changed:
            v.setdefault("changed_by_extra_reconcile", []).extend(changed)
    statuses: dict[str, int] = {}
    for o in found2.values():
        statuses[o.get("status", "?")] = statuses.get(o.get("status", "?"), 0) + 1
    resolved: dict[str, int] = {}
    for o in found2.values():
        rb = o.get("resolved_by") or "-"
        resolved[rb] = resolved.get(rb, 0) + 1
    return {
        "scenario": scenario, "rate": rate, "duration_s": duration_s, "seed": seed,
        "orders": len(h.bodies), "requests": len(h.attempts),
        "retries": len(h.attempts) - len(h.bodies),
        "no_answer": sum(1 for a in h.attempts if a.status == 0),
        "http_5xx": sum(1 for a in h.attempts if a.status >= 500),
        "acknowledged": len(h.acked), "known_to_paycell": len(found2),
        "statuses": statuses, "resolved_by": resolved,
        "faults": faults.counts, "fault_log": faults.log,
        "load_s": round(load_s, 1), "clients_done_s": round(clients_done_s, 1),
        "ladder_drain_s": round(ladder_s, 1), "reconcile_cycles_to_drain": cycles,
        "reconcile_cycles_max": cycles_max, "reconcile_reports": reports,
        "reconcile_after": after, "reconcile_503": unavailable,
        "violations": {k: len(x) for k, x in v.items()},
        "violation_examples": {k: x[:10] for k, x in v.items() if x},
        "history": [asdict(a) for a in h.attempts],
    }


def run_scenario(scenario: str, rate: float, duration_s: float, seed: int,
                 cycles_max: int = DEFAULT_CYCLES, work: Path | None = None) -> dict[str, Any]:
    """Start a fresh stack, run one scenario, always stop the stack."""
    nodes = 2 if "node_loss" in kinds_of(scenario) else 1
    with tempfile.TemporaryDirectory(prefix=f"paycell-chaos-{scenario}-",
                                     dir=work) as tmp:
        stack = ChaosStack(Path(tmp), seed, local_nodes=nodes)
        try:
            stack.start()
            return asyncio.run(drive(stack, scenario, rate, duration_s, seed, cycles_max))
        except BaseException:
            print(stack.tail(), file=sys.stderr)
            raise
        finally:
            stack.stop()


def violations(result: dict[str, Any]) -> int:
    return sum(result["violations"].values())


def print_table(results: list[dict[str, Any]]) -> None:
    oracles = ("lost", "unexpected", "duplicated", "wrong_total", "not_final", "mismatch",
               "divergent_replies")
    for r in results:
        print(f"\nchaos {r['scenario']}: {r['rate']:g}/s for {r['duration_s']:g} s, "
              f"seed {r['seed']}")
        print(f"  orders {r['orders']}  acknowledged {r['acknowledged']}  "
              f"requests {r['requests']} (retries {r['retries']}, no answer {r['no_answer']}, "
              f"5xx {r['http_5xx']})")
        print(f"  final: {r['statuses']}  resolved by: {r['resolved_by']}")
        print("  faults: " + ", ".join(f"{k} {n}" for k, n in sorted(r["faults"].items())))
        print(f"  drain: clients done {r['clients_done_s']} s after start; ladder "
              f"{r['ladder_drain_s']} s; reconcile cycles to drain "
              f"{r['reconcile_cycles_to_drain']} (bound {r['reconcile_cycles_max']})")
        print("  violations: " + ", ".join(f"{k} {r['violations'].get(k, 0)}" for k in oracles)
              + "".join(f", {k} {n}" for k, n in r["violations"].items() if k not in oracles))
        for k, ex in r.get("violation_examples", {}).items():
            print(f"    {k}: {ex}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="all",
                   help="all, one of " + ", ".join(SCENARIOS) + ", or parts joined by +")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="orders/s (open loop)")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="load seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cycles", type=int, default=DEFAULT_CYCLES,
                   help="the bound on reconcile cycles to drain")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.cycles < 0:
        p.error("--rate and --duration must be > 0, --cycles >= 0")
    if args.scenario != "all":
        try:
            kinds_of(args.scenario)
        except ValueError as e:
            p.error(str(e))
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = []
    for name in names:
        dur = args.duration * (2 if name == "mixed" and args.scenario == "all" else 1)
        print(f"chaos: {name} ...", flush=True)
        results.append(run_scenario(name, args.rate, dur, args.seed, args.cycles))
    print_table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"chaos-{args.scenario}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nwritten {out}")
    return 1 if any(violations(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
