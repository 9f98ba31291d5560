"""Names of paycell's named, detached actors (one namespace per deployment)."""
from __future__ import annotations


def shard_actor_name(set_name: str, shard: int) -> str:
    return f"paycell.{set_name}.shard.{shard}"


def reconciler_actor_name(set_name: str) -> str:
    return f"paycell.{set_name}.reconciler"
