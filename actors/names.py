"""Names of paycell's named, detached actors (one namespace per deployment), and which actor
hosts which shard."""
from __future__ import annotations

from core.settings import OrderSettings


def host_count(orders: OrderSettings) -> int:
    """Actor processes hosting this SET's shards."""
    return min(orders.shard_actors, orders.shard_count)


def host_of(shard: int, hosts: int) -> int:
    return shard % hosts


def shards_of(host: int, orders: OrderSettings) -> list[int]:
    return list(range(host, orders.shard_count, host_count(orders)))


def shard_host_name(set_name: str, host: int) -> str:
    return f"paycell.{set_name}.shards.{host}"


def reconciler_actor_name(set_name: str) -> str:
    return f"paycell.{set_name}.reconciler"
