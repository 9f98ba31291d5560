"""The sync deadline, shared by payments and refunds: how long a client's request waits for the
channel's first answer before it is told PENDING (202)."""
from __future__ import annotations

import asyncio

from core.clock import Clock


async def wait_for_sync(done: asyncio.Event | None, started_at: float, budget_s: float,
                        clock: Clock) -> None:
    """Wait for `done` until `budget_s` after `started_at` (when the gateway received the
    request), and never longer than `budget_s` from now, in case the gateway's clock is ahead."""
    if done is None:
        return
    deadline = min(started_at + budget_s, clock.time() + budget_s)
    remaining = deadline - clock.time()
    if remaining > 0:
        try:
            await asyncio.wait_for(done.wait(), remaining)
        except asyncio.TimeoutError:
            pass
