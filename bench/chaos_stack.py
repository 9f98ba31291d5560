"""The chaos run's stack (bench/chaos.py): redis-server and the channel sandbox started here,
``paycell up`` on them, every process ended by PID; what the faults do to its processes; and a
read of the order records in the run's own Redis.

redis-server is started with exactly the command line ``paycell up`` uses
(gateway.local.redis_child), so it can be SIGKILLed and restarted identically or SIGSTOPped;
paycell is pointed at it with ``PAYCELL_REDIS__URL``. The sandbox (``python -m channels.sandbox
--naive-charge``) is started here so its ledger, the money truth, survives a gateway kill. As in
bench.run, the channels' documented request rates (``<channel>.qps_max``) are lifted: the channels
here are the local sandbox, and the stack, not Stripe's 100 charges/s, is what is measured.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import orjson
import psutil
import redis.asyncio as aioredis

from core.settings import load_settings
from bench import procs
from gateway.local import Child, die_with_parent, free_port, http_ok, redis_child, redis_pings

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0
READY_PROBE_S = 1.0          # one readiness request of a stack under chaos load
STOP_TIMEOUT_S = 30.0
CHANNEL_QPS_LIFTED = 1_000_000
QPS_CHANNELS = ("alipay", "wechatpay", "stripe", "unionpay", "qpay", "paypal")
LEDGER_CHANNELS = ("alipay", "wechatpay", "stripe", "paypal")   # where the load can be charged
CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=30.0)   # the sandbox's control and operator calls
CONTROL_ATTEMPTS = 3
SCAN_COUNT = 1000            # keys per SCAN step when reading the stored orders
MGET_MAX = 500               # records per MGET


# ---- the stack -------------------------------------------------------------------------------

class ChaosStack:
    """redis-server and the sandbox started here; ``paycell up`` on them; fixed ports for its
    whole life so a restarted piece comes back where the others expect it."""

    def __init__(self, work: Path, seed: int, local_nodes: int = 1,
                 settings_env: dict[str, str] | None = None) -> None:
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
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                        **{f"PAYCELL_{ch.upper()}__QPS_MAX": str(CHANNEL_QPS_LIFTED)
                           for ch in QPS_CHANNELS},
                        **(settings_env or {}))
        # the command line paycell up would run redis-server with (redis.url unset)
        plain = {k: v for k, v in self.env.items() if k != "PAYCELL_REDIS__URL"}
        self.settings = load_settings(env=plain)
        self.redis = redis_child(self.settings, self.data)
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
        _wait(lambda: http_ok(self.sandbox_url + "/_sandbox/health", READY_PROBE_S), "sandbox", self.sandbox)
        self.start_up()
        _wait(lambda: http_ok(self.url + "/readyz", READY_PROBE_S), "paycell up", None, self.up)

    def start_redis(self) -> None:
        self.redis = Child("redis-server", self.redis.argv, self.redis.log_path)
        self.redis.start()
        _wait(lambda: redis_pings("127.0.0.1", self.redis_port), "redis-server", self.redis)

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

    async def stored_orders(self) -> list[dict[str, Any]]:
        """Every order record in the run's Redis (``pc:{tag}:o:<id>``, actors/store.py): what
        paycell stored, whether or not a client asked for it."""
        client = aioredis.Redis(host="127.0.0.1", port=self.redis_port)
        try:
            keys = [k async for k in client.scan_iter(match="pc:{*}:o:*", count=SCAN_COUNT)
                    if k.split(b":")[-2] == b"o"]
            out = []
            for i in range(0, len(keys), MGET_MAX):
                out += [orjson.loads(raw) for raw in await client.mget(keys[i:i + MGET_MAX])
                        if raw]
            return out
        finally:
            await client.aclose()

    def tail(self, lines: int = 30) -> str:
        return procs.log_tail(self.up_log, lines)

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


def _kill_left(left: list[tuple[int, float]]) -> None:
    """SIGKILL the processes of ``left`` still alive as the same process (PID + start time)."""
    for pid, created in left:
        try:
            if psutil.Process(pid).create_time() == created:
                os.kill(pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue


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


async def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if await asyncio.to_thread(http_ok, url + "/readyz", READY_PROBE_S):
            return time.monotonic() - t0
        await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


# ---- the sandbox's control endpoints --------------------------------------------------------

async def _control(http: aiohttp.ClientSession, method: str, url: str,
                   knobs: dict[str, Any] | None = None) -> Any:
    """One call to the sandbox's control endpoints (the harness's own, not paycell's), with its
    own timeout and a few attempts: a loaded two-core machine can stall one."""
    for attempt in range(1, CONTROL_ATTEMPTS + 1):
        try:
            async with http.request(method, url, json=knobs, timeout=CONTROL_TIMEOUT) as r:
                if r.status != 200:
                    raise RuntimeError(f"sandbox {method} {url}: {r.status} {await r.text()}")
                return await r.json()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            if attempt == CONTROL_ATTEMPTS:
                raise
            await asyncio.sleep(1.0)


async def set_knobs(http: aiohttp.ClientSession, sandbox_url: str, knobs: dict[str, Any]) -> None:
    for ch in LEDGER_CHANNELS:
        await _control(http, "POST", f"{sandbox_url}/{ch}/_sandbox/knobs", knobs)


async def ledgers(http: aiohttp.ClientSession, sandbox_url: str) -> dict[str, dict[str, Any]]:
    return {ch: await _control(http, "GET", f"{sandbox_url}/{ch}/_sandbox/ledger")
            for ch in LEDGER_CHANNELS}
