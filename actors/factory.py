"""The one place that applies ray.remote: actor options, names, and deployment of a SET."""
from __future__ import annotations

import time
from typing import Any

import ray
import redis.asyncio as aioredis

from actors.board import TaskBoard
from actors.host import ShardHost
from actors.names import host_count, reconciler_actor_name, shard_host_name, shards_of
from actors.local_channels import LocalChannelPort
from actors.merchant_notify import MerchantNotifier
from actors.reconcile_store import OrderReader, RefundLog, ReportStore
from actors.reconciler import Reconciler
from actors.shard import OrderShard, reply_board
from actors.startup import until_answered
from actors.store import OrderStore
from channels.base import Connector
from channels.registry import build_connector, enabled_channels
from core import heap
from core.logs import configure as configure_logs
from core.resp import LeanRedis
from core.settings import Settings

# Money-moving calls are never retried by Ray: paycell makes them idempotent and resolves by query.
# SPREAD: with several Ray nodes the reconciler goes where Ray finds room (best effort); the shard
# hosts are placed on the nodes in turn (_placement).
_COMMON = {"num_cpus": 0, "lifetime": "detached", "max_restarts": -1, "max_task_retries": 0,
           "get_if_exists": True, "scheduling_strategy": "SPREAD"}


def notify_url(settings: Settings, channel: str) -> str:
    return f"{settings.gateway.base_url()}/v1/notify/{channel}"


REDIS_CONNECTIONS_MAX = 64  # per process; past it an operation waits (op_timeout_ms) for one


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client whose pool makes an operation wait for a free connection (bounded by the
    operation timeout) instead of failing when many run at once."""
    r = settings.redis
    pool = aioredis.BlockingConnectionPool.from_url(
        r.effective_url(), max_connections=REDIS_CONNECTIONS_MAX, timeout=r.op_timeout_ms / 1000,
        socket_timeout=r.op_timeout_ms / 1000, socket_connect_timeout=r.connect_timeout_ms / 1000)
    return aioredis.Redis(connection_pool=pool)


def lean_redis(settings: Settings) -> LeanRedis:
    """The hot path's Redis connection (core/resp.py), on the same server as redis_client."""
    r = settings.redis
    return LeanRedis.from_url(r.effective_url(), op_timeout_s=r.op_timeout_ms / 1000,
                              connect_timeout_s=r.connect_timeout_ms / 1000)


def live_shard(settings: Settings, shard: int, client: aioredis.Redis,
               replies: TaskBoard[str, dict[str, Any]] | None = None,
               fast: LeanRedis | None = None) -> OrderShard:
    """An OrderShard wired to Redis (the host's clients) and to its own channel connectors."""
    store = OrderStore(client, settings.orders.set_name, shard,
                       idempotency_ttl_s=settings.orders.idempotency_ttl_s,
                       commit_batch_max=settings.orders.commit_batch_max,
                       event_keep_s=settings.merchant_notify.event_keep_s, fast=fast)
    notifier = MerchantNotifier(settings.merchant_notify, shard, store=store,
                                app_secrets=settings.app_secrets())
    store.on_events = notifier.wake
    channels = LocalChannelPort(settings, {ch: notify_url(settings, ch)
                                           for ch in enabled_channels(settings)})
    return OrderShard(settings, shard, store=store, channels=channels, notify_url="",
                      notifier=notifier, replies=replies)


class LiveShardHost(ShardHost):
    """The shards of one host (actors/host.py), sharing one Redis pool and one reply board."""

    def __init__(self, settings: Settings, host: int) -> None:
        configure_logs(settings.log_level)
        client, fast = redis_client(settings), lean_redis(settings)
        mine = shards_of(host, settings.orders)
        replies = reply_board(settings.orders.open_orders_max * len(mine), f"host {host}")
        super().__init__(host, {s: live_shard(settings, s, client, replies, fast) for s in mine},
                         replies)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.link_address = ray.util.get_node_ip_address()
        heap.settle()


class LiveReconciler(Reconciler):
    """The SET's Reconciler wired to Redis, the shard actors and its own channel connectors."""

    def __init__(self, settings: Settings) -> None:
        from actors.client import ShardClient
        configure_logs(settings.log_level)
        client = redis_client(settings)
        set_name = settings.orders.set_name
        connectors: dict[str, Connector] = {}

        def connector_for(channel: str) -> Connector:
            connector = connectors.get(channel)
            if connector is None:    # its own HTTP session, opened inside the actor's loop
                connector = connectors[channel] = build_connector(
                    channel, settings, notify_url(settings, channel))
            return connector
        super().__init__(settings, channels=enabled_channels(settings),
                         shards=ShardClient(settings), orders=OrderReader(client, settings),
                         reports=ReportStore(client, set_name, settings.reconcile.report_ttl_days),
                         refunds=RefundLog(client, set_name), connector_for=connector_for)


def deploy(settings: Settings, timeout_s: float = 60) -> dict[str, Any]:
    """Create (or find) the shard actors and the reconciler of this SET and wait until they
    answer, at most ``timeout_s``: one that cannot reach Redis yet is asked again
    (actors.startup), so a launcher started while Redis restarts waits for it.

    Sync, for drivers and launchers only (never call it from async code on the hot path).
    """
    ns, set_name = settings.ray.namespace, settings.orders.set_name
    host_cls: Any = ray.remote(LiveShardHost)
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    hosts = [host_cls.options(name=shard_host_name(set_name, h), namespace=ns,
                              **{**_COMMON, **_placement(h, nodes)})
             .remote(settings, h)
             for h in range(host_count(settings.orders))]
    reconciler_cls: Any = ray.remote(LiveReconciler)
    reconciler = reconciler_cls.options(name=reconciler_actor_name(set_name), namespace=ns,
                                        **_COMMON).remote(settings)
    deadline = time.monotonic() + timeout_s
    pings = until_answered(lambda left: ray.get([a.ping.remote() for a in hosts],
                                                timeout=left), deadline)
    return {"hosts": pings, "nodes": len({p.get("node", "") for p in pings}),
            "reconciler": until_answered(lambda left: ray.get(reconciler.ping.remote(),
                                                              timeout=left), deadline)}


# A host asks for a sliver of a CPU so that Ray honours its node affinity: with num_cpus=0, Ray
# 2.60 placed soft-affine actors where it liked (seen here while building this; bench.scale's
# "nodes used" column shows the placement of every run). A node fits 1,000 hosts per CPU.
HOST_CPUS = 0.001


def _placement(host: int, nodes: list[str]) -> dict[str, Any]:
    """Host h on node h % nodes (soft: a lost node's hosts restart on the others)."""
    if len(nodes) <= 1:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    return {"num_cpus": HOST_CPUS, "scheduling_strategy":
            NodeAffinitySchedulingStrategy(nodes[host % len(nodes)], soft=True)}


def teardown(settings: Settings) -> None:
    """Kill this SET's detached actors (tests and operators); state stays in Redis."""
    ns, set_name = settings.ray.namespace, settings.orders.set_name
    names = [shard_host_name(set_name, h) for h in range(host_count(settings.orders))]
    for name in [*names, reconciler_actor_name(set_name)]:
        try:
            ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
        except ValueError:  # not there: nothing to kill
            pass
