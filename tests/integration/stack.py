"""Real parts for integration tests: redis-server, the Alipay sandbox, local Ray, the gateway.

Each part is started by the test session on a free loopback port and stopped by its PID in a
finally block, whatever the tests did.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import psutil
from aiohttp import web

from core.settings import Settings, load_settings
from gateway.local import Child, free_port, redis_child, redis_pings, start_redis, start_sandbox

TEST_ORDERS = {"sync_deadline_ms": 500, "query_first_delay_ms": 1500, "query_interval_ms": 700,
               "async_window_ms": 4000, "cancel_retry_interval_ms": 500,
               # three shards in two actors: host 0 runs shards 0 and 2 (actors/host.py)
               "shard_count": 3, "shard_actors": 2,
               "scheduler_tick_ms": 20, "refund_sync_deadline_ms": 800,
               "refund_query_first_delay_ms": 1000, "refund_query_interval_ms": 500,
               "refund_async_window_ms": 8000}


# A short routing window so that tests/integration/test_routing.py sees shifts in seconds.
TEST_ROUTING = {"window_s": 6, "window_buckets": 6, "min_samples": 10, "breaker_open_ms": 2000}

# Merchant events retried in a second, not in hours (tests/integration/test_merchant_notify.py).
TEST_MERCHANT_NOTIFY = {"retry_schedule_ms": "300,600,900", "poll_ms": 100}


class OwnRedis:
    """A test module's own redis-server (so the session's is never killed), started like
    paycell's, signalled, SIGKILLed and started again on the same port and data by its PID."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.settings, self.data_dir = settings, data_dir
        self.child: Child = redis_child(settings, data_dir)

    @property
    def port(self) -> int:
        return self.settings.redis.port

    def start(self) -> None:
        self.child.start()
        r = self.settings.redis
        self.child.wait_until(lambda: redis_pings(r.host, r.port), "PING")

    def signal(self, sig: signal.Signals) -> None:
        assert self.child.proc is not None
        self.child.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.child.proc is not None
        self.child.proc.wait()

    def start_again(self) -> None:
        """The same command line: same port, same data directory (its append-only file)."""
        self.child = Child("redis-server", self.child.argv, self.child.log_path)
        self.start()

    def kill_and_restart(self) -> None:
        self.kill()
        self.start_again()

    def stop(self) -> None:
        if self.child.alive():
            self.signal(signal.SIGCONT)    # (a stopped server does not end on SIGTERM)
        self.child.stop()


@contextlib.contextmanager
def own_redis(data_dir: Path) -> Iterator[OwnRedis]:
    """A test module's own redis-server on a free port (`appendfsync everysec`: its tests flush
    it and write a lot), stopped by its PID afterwards, whatever happened."""
    settings = load_settings(env={}, overrides={"redis": {"port": free_port(),
                                                          "appendfsync": "everysec"}})
    server = OwnRedis(settings, data_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    tree: dict[str, Any] = {
        "data_dir": str(data_dir),
        "redis": {"port": free_port()},
        "sandbox": {"port": free_port()},
        "gateway": {"port": free_port()},
        "ray": {"namespace": f"paycelltest{os.getpid()}"},
        "orders": dict(TEST_ORDERS),
        "routing": dict(TEST_ROUTING),
        "merchant_notify": dict(TEST_MERCHANT_NOTIFY),
    }
    for k, v in overrides.items():
        tree[k] = {**tree.get(k, {}), **v} if isinstance(v, dict) else v
    return load_settings(env={}, overrides=tree)


@contextlib.contextmanager
def processes(settings: Settings, sandbox_args: tuple[str, ...] = ()) -> Iterator[dict[str, Child]]:
    data_dir = Path(settings.data_dir)
    started: dict[str, Child] = {}
    try:
        started["redis"] = start_redis(settings, data_dir)
        started["sandbox"] = start_sandbox(settings, data_dir, sandbox_args)
        yield started
    finally:
        for child in reversed(list(started.values())):
            child.stop()


@contextlib.contextmanager
def ray_cluster(settings: Settings) -> Iterator[None]:
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             namespace=settings.ray.namespace)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[str]:
    from gateway.app import create_app
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, settings.gateway.host, settings.gateway.port)
    await site.start()
    try:
        yield settings.gateway.base_url()
    finally:
        await runner.cleanup()


class Sandbox:
    """The sandbox's control and ledger endpoints."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.sandbox.url()

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, json=body) as r:
                assert r.status == 200, (path, r.status, await r.text())
                return await r.json()

    async def ledger(self) -> dict[str, Any]:
        return await self._json("GET", "/_sandbox/ledger")  # type: ignore[no-any-return]

    async def knobs(self, **knobs: Any) -> dict[str, Any]:
        return await self._json("POST", "/_sandbox/knobs", knobs)  # type: ignore[no-any-return]


def kill_pid(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def listeners_of_tree(root_pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP listener of root_pid and its descendants."""
    root = psutil.Process(root_pid)
    procs = [root, *root.children(recursive=True)]
    out = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((c.laddr.ip, c.laddr.port, p.name()))
    return out


async def wait_until(pred: Any, timeout_s: float, interval_s: float = 0.1) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await pred()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s (last: {value!r})")
        await asyncio.sleep(interval_s)
