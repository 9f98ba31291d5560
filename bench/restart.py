"""How fast a shard with many open orders serves again after SIGKILL, and what each costs in RAM.

  python -m bench.restart [--orders 100000] [--kills 3]

Fills a fresh redis-server (its own, on a free loopback port) with N open orders of shard 0,
starts a local Ray cluster with that one shard actor, then SIGKILLs the actor's process `--kills`
times and measures the time until it answers again (Ray restarts it; it rebuilds which orders are
open before serving). Resident memory is compared with the same actor holding no orders. Prints a
table and writes bench/results/<time>-restart.json. Targets (issue 5): serving again within 3 s
with 100,000 open orders; at most 1 KB of resident memory per open order.
"""
from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported

import argparse  # noqa: E402
import asyncio  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402
import psutil  # noqa: E402

from actors.factory import deploy, redis_client, teardown  # noqa: E402
from actors.names import shard_host_name  # noqa: E402
from actors.store import OrderStore  # noqa: E402
from core.ids import make_order_id  # noqa: E402
from core.order import CreateOrder, Order  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from gateway.local import free_port, start_redis  # noqa: E402

RESULTS = Path(__file__).with_name("results")
SERVE_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 180.0
FILL_BATCH = 2000


async def fill(settings: Settings, n: int) -> None:
    store = OrderStore(redis_client(settings), settings.orders.set_name, 0,
                       idempotency_ttl_s=3600, commit_batch_max=FILL_BATCH)
    now = time.time()
    for i in range(0, n, FILL_BATCH):
        await asyncio.gather(*(store.commit(replace(Order.new(
            make_order_id("local", settings.orders.set_name, 0, int(now * 1000)),
            CreateOrder("demo-app", f"g-{j:09d}", f"u-{j % 5000}", 600, "CNY", "60 gems",
                        "alipay", "barcode"), now), charge_sent=True), new=True)
            for j in range(i, min(n, i + FILL_BATCH))))


def serving_again(handle: Any, old_pid: int) -> dict[str, Any]:
    import ray
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            info: dict[str, Any] = ray.get(handle.ping.remote(), timeout=SERVE_TIMEOUT_S)
            if info["pid"] != old_pid:
                return info
        except Exception:  # the actor is restarting: any Ray error means "not yet"
            time.sleep(0.01)
    raise RuntimeError(f"shard not serving {SERVE_TIMEOUT_S:.0f} s after the kill")


def measure(settings: Settings, kills: int) -> dict[str, Any]:
    import ray
    deploy(settings)
    handle = ray.get_actor(shard_host_name(settings.orders.set_name, 0),  # shard 0's host
                           namespace=settings.ray.namespace)
    info = ray.get(handle.ping.remote())
    out: dict[str, Any] = {"open": info["open"], "restart_s": [], "rss_bytes": []}
    out["rss_bytes"].append(psutil.Process(info["pid"]).memory_info().rss)
    for _ in range(kills):
        t0 = time.monotonic()
        os.kill(info["pid"], signal.SIGKILL)
        info = serving_again(handle, info["pid"])
        out["restart_s"].append(time.monotonic() - t0)
        assert info["open"] == out["open"], (info, out)
        out["rss_bytes"].append(psutil.Process(info["pid"]).memory_info().rss)
    # Every open order's record is read when its query comes due: measure again once every
    # open order has been followed up at least once.
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while ray.get(handle.call.remote(0, "stats"))["queries"] < out["open"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"open orders not all followed up within {LOAD_TIMEOUT_S:.0f} s")
        time.sleep(0.5)
    out["rss_loaded_bytes"] = psutil.Process(info["pid"]).memory_info().rss
    teardown(settings)
    return out


def run(orders: int, kills: int, work: Path) -> dict[str, Any]:
    import ray
    figures = {}
    for label, n in (("empty", 0), ("loaded", orders)):
        s = load_settings(env={}, overrides={
            "data_dir": str(work / label), "redis": {"port": free_port(),
                                                     "appendfsync": "everysec"},
            "orders": {"shard_count": 1}, "ray": {"namespace": f"restart{label}"}})
        redis = start_redis(s, Path(s.data_dir))
        try:
            asyncio.run(fill(s, n))
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     namespace=s.ray.namespace)
            try:
                figures[label] = measure(s, kills)
            finally:
                ray.shutdown()
        finally:
            redis.stop()
    return figures


def report(figures: dict[str, Any], orders: int) -> dict[str, Any]:
    loaded, empty = figures["loaded"], figures["empty"]
    rss_per_order = (statistics.median(loaded["rss_bytes"]) -
                     statistics.median(empty["rss_bytes"])) / max(1, orders)
    rss_loaded = (loaded["rss_loaded_bytes"] - empty["rss_loaded_bytes"]) / max(1, orders)
    worst = max(loaded["restart_s"])
    return {"orders": orders, "open_after_restart": loaded["open"],
            "restart_s": loaded["restart_s"], "restart_s_empty": empty["restart_s"],
            "restart_s_max": worst, "rss_bytes_per_open_order": rss_per_order,
            "rss_bytes_per_open_order_after_follow_ups": rss_loaded,
            "goals": {"serving_within_3s": worst <= 3.0,
                      "rss_le_1kb_per_order": max(rss_per_order, rss_loaded) <= 1024}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=100_000)
    p.add_argument("--kills", type=int, default=3)
    args = p.parse_args(argv)
    if not 1 <= args.orders <= 2_000_000 or not 1 <= args.kills <= 20:
        p.error("--orders must be 1..2,000,000 and --kills 1..20")
    work = Path(tempfile.mkdtemp(prefix="paycell-restart-"))
    try:
        fig = report(run(args.orders, args.kills, work), args.orders)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    restarts = ", ".join(f"{t:.2f}" for t in fig["restart_s"])
    empty = ", ".join(f"{t:.2f}" for t in fig["restart_s_empty"])
    print(f"\nshard with {fig['open_after_restart']:,} open orders: serving again after "
          f"{restarts} s (empty shard: {empty} s)")
    print(f"resident memory: {fig['rss_bytes_per_open_order']:.0f} B per open order right after "
          f"the restart, {fig['rss_bytes_per_open_order_after_follow_ups']:.0f} B once every "
          "open order has been queried")
    print(f"goals: {fig['goals']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-restart.json")
    out.write_bytes(orjson.dumps(fig, option=orjson.OPT_INDENT_2))
    print(f"results {out}")
    return 0 if all(fig["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
