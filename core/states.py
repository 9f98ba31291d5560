"""The order lifecycle as data: statuses, channel facts, one table of allowed transitions, one pure apply().

A channel fact (PAID, DECLINED, CLOSED, WAITING) arrives through a rung of the reliability ladder
(sync, notify, query, reconcile). `apply` decides what it does to an order's status:
  * a move along an allowed edge (PENDING -> SUCCEEDED ...), recording the rung that resolved it;
  * a no-op (a duplicate of the fact that already decided the order, or WAITING on anything);
  * a conflict (a fact that contradicts a final status: paid after closed, declined after paid ...),
    which changes nothing and must be reported for review (never silently flipped).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import AbstractSet, Generic, Mapping, Protocol, TypeVar


class OrderStatus(str, enum.Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CLOSED = "CLOSED"

    @property
    def is_final(self) -> bool:
        return self is not OrderStatus.PENDING


class Fact(str, enum.Enum):
    """What the channel says about the money of one order."""
    PAID = "PAID"            # the payer was charged
    DECLINED = "DECLINED"    # the channel refused before taking money
    CLOSED = "CLOSED"        # the trade is closed/cancelled (or never existed) and no money moved
    WAITING = "WAITING"      # still waiting for the payer or unknown so far


class Rung(str, enum.Enum):
    SYNC = "sync"
    NOTIFY = "notify"
    QUERY = "query"
    RECONCILE = "reconcile"


class Outcome(str, enum.Enum):
    MOVED = "moved"
    NOOP = "noop"
    CONFLICT = "conflict"


S, F = OrderStatus, Fact

# (current status, fact) -> new status. Anything absent from both tables is a conflict.
TRANSITIONS: dict[tuple[OrderStatus, Fact], OrderStatus] = {
    (S.PENDING, F.PAID): S.SUCCEEDED,
    (S.PENDING, F.DECLINED): S.FAILED,
    (S.PENDING, F.CLOSED): S.CLOSED,
}
# (current status, fact) pairs that change nothing and are fine: duplicates and stale "waiting".
NOOPS: frozenset[tuple[OrderStatus, Fact]] = frozenset({
    (S.PENDING, F.WAITING),
    (S.SUCCEEDED, F.PAID), (S.SUCCEEDED, F.WAITING),
    (S.FAILED, F.DECLINED), (S.FAILED, F.WAITING),
    (S.CLOSED, F.CLOSED), (S.CLOSED, F.WAITING),
    # A declined order whose trade the channel later reports closed: same money state (none moved).
    (S.FAILED, F.CLOSED),
})


class _Status(Protocol):
    @property
    def is_final(self) -> bool: ...


St = TypeVar("St", bound=_Status)
Report = TypeVar("Report")


@dataclass(frozen=True, slots=True)
class Decision(Generic[St]):
    outcome: Outcome
    status: St                   # the status after the report (unchanged unless MOVED)
    resolved_by: Rung | None     # set only when MOVED to a final status


def decide(transitions: Mapping[tuple[St, Report], St], noops: AbstractSet[tuple[St, Report]],
           status: St, report: Report, rung: Rung) -> Decision[St]:
    """Pure: what a `report` learnt through `rung` does to a record in `status`, by a table of
    moves and a set of harmless repeats; anything in neither is a conflict. Shared by orders
    (below) and refunds (core.refund)."""
    new = transitions.get((status, report))
    if new is not None:
        assert new.is_final and not status.is_final
        return Decision(Outcome.MOVED, new, rung)
    if (status, report) in noops:
        return Decision(Outcome.NOOP, status, None)
    return Decision(Outcome.CONFLICT, status, None)


def apply(status: OrderStatus, fact: Fact, rung: Rung) -> Decision[OrderStatus]:
    """Pure: what `fact`, learnt through `rung`, does to an order in `status`."""
    return decide(TRANSITIONS, NOOPS, status, fact, rung)
