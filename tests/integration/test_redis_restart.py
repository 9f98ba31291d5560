"""The reconciler across a redis-server restart: a real redis-server of this module's own (so the
session's is never killed), SIGKILLed and started again on the same port and data; a SET ("rr")
deployed into the session's Ray cluster on it.

Before, the reconciler's pooled connection was closed by the old server, so its first call after
the restart failed on it (ConnectionError -> 503). Now its idempotent commands run once more on a
fresh connection (core.redis_retry), and the first call answers.
"""
from __future__ import annotations

import asyncio
import signal
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
import pytest_asyncio

from actors.factory import redis_client
from actors.reconcile_store import ReportStore
from core.errors import Unavailable
from core.settings import Settings, load_settings
from gateway.local import free_port
from tests.integration.stack import TEST_ROUTING, OwnRedis

pytestmark = pytest.mark.integration

RR_ORDERS = {"set_name": "rr", "shard_count": 1}


@pytest.fixture(scope="module")
def rr_settings(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("rr")
    return load_settings(env={}, overrides={
        "data_dir": str(data_dir), "redis": {"port": free_port()},
        "sandbox": {"port": stack_settings.sandbox.port}, "gateway": {"port": free_port()},
        "ray": {"namespace": stack_settings.ray.namespace}, "orders": RR_ORDERS,
        "routing": TEST_ROUTING, "reconcile": {"enabled": False, "statement_lag_s": 1}})


@pytest.fixture(scope="module")
def own_redis(rr_settings: Settings) -> Iterator[OwnRedis]:
    redis = OwnRedis(rr_settings, Path(rr_settings.data_dir))
    try:
        redis.start()
        yield redis
    finally:
        redis.stop()


@pytest_asyncio.fixture(scope="module")
async def rr(rr_settings: Settings, own_redis: OwnRedis, stack_ray: None
             ) -> AsyncIterator[Settings]:
    from actors.factory import deploy, teardown
    try:
        await asyncio.to_thread(deploy, rr_settings)
        yield rr_settings
    finally:
        await asyncio.to_thread(teardown, rr_settings)


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


async def _finished(reports: ReportStore, channel: str, day: str, run: int) -> dict[str, Any]:
    for _ in range(300):
        report = await reports.load(channel, day)
        if report is not None and report["run"] == run and report["status"] != "running":
            return report
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run} of {channel} {day} did not finish")


async def test_the_first_reconciler_call_after_a_redis_restart_answers(
        rr: Settings, own_redis: OwnRedis) -> None:
    from actors.client import ReconcilerClient
    reconciler = ReconcilerClient(rr)
    client = redis_client(rr)
    reports = ReportStore(client, "rr", 1)
    day = _today()
    try:
        first = await reconciler.start("alipay", day)
        assert "error" not in first, first
        done = await _finished(reports, "alipay", day, first["run"])
        assert done["status"] == "complete", done
        # The reconciler has pooled connections now; the server that opened them goes away.
        own_redis.kill_and_restart()
        again = await reconciler.start("alipay", day)
        assert "error" not in again, again                  # was {"error": "unavailable"}
        assert again["run"] == first["run"] + 1 and again["status"] == "running"
        done = await _finished(reports, "alipay", day, again["run"])
        assert done["status"] == "complete" and done["errors"] == [], done
    finally:
        await client.aclose()


async def test_report_reads_survive_a_restart_and_fail_cleanly_while_redis_is_down(
        rr_settings: Settings, own_redis: OwnRedis) -> None:
    """The same store the gateway's ops routes read reports with: the first read after a
    restart answers; with redis-server gone it is Unavailable (503), not a hang or a crash."""
    client = redis_client(rr_settings)
    reports = ReportStore(client, "rr", 1)
    report = {"channel": "wechatpay", "day": "2026-01-02", "status": "complete", "run": 7}
    try:
        await reports.save(report)
        assert await reports.load("wechatpay", "2026-01-02") == report
        own_redis.kill_and_restart()
        assert await reports.load("wechatpay", "2026-01-02") == report   # AOF kept it
        assert await reports.running() == []
        own_redis.kill()
        with pytest.raises(Unavailable):
            await reports.load("wechatpay", "2026-01-02")
        own_redis.start_again()
        assert await reports.load("wechatpay", "2026-01-02") == report
    finally:
        await client.aclose()
