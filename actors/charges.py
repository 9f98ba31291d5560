"""Charges in flight: started in batches, answered within a wait, the rest collected later.

`charge_many` returns each answer that arrived within `wait_s` and None for the ones still
running; `collect` returns the late ones as they finish, so a hung charge holds up no other.
An answer that is lost (its process restarted) comes back as "unknown", so the shard resolves
the order by query: never by charging again.

Answers travel as tagged tuples so a caller can tell what the connector said from a failed call:
  ("ok", ChannelResult) | ("not_sent", detail) | ("unknown", detail)
"""
from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from actors.board import TaskBoard
from channels.base import ChargeRequest, ChannelError, ChannelResult, NotSent, OutcomeUnknown

Tagged = tuple[str, Any]
KEEP_ANSWERS_S = 120.0  # an answer nobody collected (its shard died) is dropped after this


async def tagged(aw: Awaitable[ChannelResult]) -> Tagged:
    try:
        return ("ok", await aw)
    except NotSent as e:
        return ("not_sent", f"{type(e).__name__}: {e}"[:300])
    except OutcomeUnknown as e:
        return ("unknown", f"{type(e).__name__}: {e}"[:300])


def untag(t: Tagged) -> ChannelResult | ChannelError:
    kind, value = t
    if kind == "ok":
        assert isinstance(value, ChannelResult)
        return value
    if kind == "not_sent":
        return NotSent(value)
    return OutcomeUnknown(value)


class ChargeBoard:
    """The charges in flight for one channel, keyed by order id (never two per order)."""

    def __init__(self, charge: Callable[[ChargeRequest], Awaitable[ChannelResult]],
                 inflight_max: int) -> None:
        self._charge = charge
        self._board: TaskBoard[str, Tagged] = TaskBoard(
            inflight_max=inflight_max, keep_s=KEEP_ANSWERS_S,
            refused=lambda _k: ("not_sent", "channel at its in-flight bound"),
            lost=lambda _k: ("unknown", "not in flight here (process restarted?)"),
            crashed=lambda _k, e: ("unknown", f"charge crashed: {type(e).__name__}"))

    def __len__(self) -> int:
        return len(self._board)

    async def charge_many(self, reqs: list[ChargeRequest], wait_s: float) -> list[Tagged | None]:
        return await self._board.run_many(
            [(r.order_id, functools.partial(self._run, r)) for r in reqs], wait_s)

    async def collect(self, order_ids: list[str], wait_s: float) -> dict[str, Tagged]:
        return await self._board.collect(order_ids, wait_s)

    async def _run(self, req: ChargeRequest) -> Tagged:
        return await tagged(self._charge(req))
