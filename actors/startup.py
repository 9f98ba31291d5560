"""Waiting at start-up for actors that rebuild from Redis before they serve.

A shard (or the reconciler) answers its first call only after it has read its open orders from
Redis; while Redis cannot be reached (restarting, paused) that call fails with Unavailable and
the next one tries again (OrderShard.ensure_started). A launcher that deploys the actors asks
again until its deadline instead of giving up on the first Unavailable.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

from core.errors import Unavailable

T = TypeVar("T")

ASK_AGAIN_AFTER_S = 0.5


def until_answered(ask: Callable[[float], T], deadline: float, *,
                   again_after_s: float = ASK_AGAIN_AFTER_S,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> T:
    """``ask(seconds left)`` until it answers; Unavailable (the actor cannot reach Redis yet)
    asks again after ``again_after_s``, until ``deadline`` (on ``clock``), then raises it.
    Anything else is raised at once."""
    while True:
        try:
            return ask(max(0.0, deadline - clock()))
        except Unavailable:
            if clock() + again_after_s >= deadline:
                raise
            sleep(again_after_s)
