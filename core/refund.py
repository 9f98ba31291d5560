"""The refund record, the command that asks for one, and the refund lifecycle as data.

A refund gives back part or all of a SUCCEEDED order's payment. Its status moves only
PENDING -> SUCCEEDED or PENDING -> FAILED, on what the channel reports through a rung of the
ladder (sync: the refund call's answer; notify; query; reconcile). A report that repeats the
status, or says PENDING about a final refund, changes nothing; one that contradicts a final
status (FAILED after SUCCEEDED, or the reverse) is a conflict: reported, never applied.

The order keeps two sums over its refunds: `refund_reserved` (PENDING + SUCCEEDED, what a new
refund may not push past the paid amount) and `refunded_amount` (SUCCEEDED only, shown in the
API). `reserve` and `settle` are the only ways they change.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, fields, replace
from typing import Any

from core.clock import rfc3339
from core.order import Change, Order
from core.states import Decision, Outcome, Rung, decide


class RefundStatus(str, enum.Enum):
    SUCCEEDED = "SUCCEEDED"    # the money went back
    PENDING = "PENDING"        # accepted or unknown, not final: query or wait for the notification
    FAILED = "FAILED"          # refused or closed: no money moved

    @property
    def is_final(self) -> bool:
        return self is not RefundStatus.PENDING


R = RefundStatus
# (current status, reported status) -> new status. Anything absent from both tables is a conflict.
REFUND_TRANSITIONS: dict[tuple[RefundStatus, RefundStatus], RefundStatus] = {
    (R.PENDING, R.SUCCEEDED): R.SUCCEEDED,
    (R.PENDING, R.FAILED): R.FAILED,
}
REFUND_NOOPS: frozenset[tuple[RefundStatus, RefundStatus]] = frozenset({
    (R.PENDING, R.PENDING),
    (R.SUCCEEDED, R.SUCCEEDED), (R.SUCCEEDED, R.PENDING),
    (R.FAILED, R.FAILED), (R.FAILED, R.PENDING),
})


RefundDecision = Decision[RefundStatus]


def apply_refund(status: RefundStatus, reported: RefundStatus, rung: Rung) -> RefundDecision:
    """Pure: what a channel's `reported` status, learnt through `rung`, does to a refund."""
    return decide(REFUND_TRANSITIONS, REFUND_NOOPS, status, reported, rung)


@dataclass(frozen=True, slots=True)
class CreateRefund:
    """A validated merchant request to refund (part of) an order's payment."""
    app_id: str
    order_id: str
    out_refund_no: str         # the merchant's idempotency key, unique per order
    amount: int                # minor units of the order's currency
    reason: str = ""
    received_at: float = 0.0   # Unix s when the gateway got the request: the sync deadline's start

    def fingerprint(self) -> str:
        """Hash of the fields that make two requests 'the same body'."""
        text = "\x1f".join([self.app_id, self.order_id, self.out_refund_no, str(self.amount),
                            self.reason])
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Refund:
    refund_id: str             # paycell's id, sent as the channel's merchant refund number
    order_id: str
    app_id: str
    out_refund_no: str
    amount: int
    currency: str
    channel: str
    reason: str
    fingerprint: str
    created_at: float
    updated_at: float
    status: RefundStatus = RefundStatus.PENDING
    resolved_by: Rung | None = None
    channel_refund_no: str = ""
    failure_code: str = ""
    failure_message: str = ""
    history: tuple[Change, ...] = ()

    @classmethod
    def new(cls, refund_id: str, cmd: CreateRefund, order: Order, now: float) -> "Refund":
        assert cmd.order_id == order.order_id and cmd.app_id == order.app_id
        return cls(refund_id=refund_id, order_id=order.order_id, app_id=order.app_id,
                   out_refund_no=cmd.out_refund_no, amount=cmd.amount, currency=order.currency,
                   channel=order.channel, reason=cmd.reason, fingerprint=cmd.fingerprint(),
                   created_at=now, updated_at=now)

    def learn(self, reported: RefundStatus, rung: Rung, now: float, *,
              channel_refund_no: str = "", failure_code: str = "",
              failure_message: str = "") -> tuple["Refund", RefundDecision]:
        """Apply a channel report; the new record (self when nothing changed) and the decision.
        Conflicts are counted and logged by the caller, not stored."""
        decision = apply_refund(self.status, reported, rung)
        if decision.outcome is not Outcome.MOVED:
            return self, decision
        return replace(
            self, status=decision.status, resolved_by=decision.resolved_by, updated_at=now,
            channel_refund_no=channel_refund_no or self.channel_refund_no,
            failure_code=failure_code if decision.status is R.FAILED else "",
            failure_message=failure_message if decision.status is R.FAILED else "",
            history=self.history + (Change(now, decision.status.value, reported.value,
                                           rung.value),),
        ), decision

    # ---- storage form ----
    def to_record(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["status"] = self.status.value
        d["resolved_by"] = self.resolved_by.value if self.resolved_by else None
        d["history"] = [[c.at, c.status, c.fact, c.rung] for c in self.history]
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "Refund":
        known = {f.name for f in fields(cls)}
        plain = {k: v for k, v in d.items() if k in known}
        plain["status"] = RefundStatus(d["status"])
        plain["resolved_by"] = Rung(d["resolved_by"]) if d.get("resolved_by") else None
        plain["history"] = tuple(Change(*c) for c in d.get("history", ()))
        return cls(**plain)

    # ---- public API form ----
    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refund_id": self.refund_id, "order_id": self.order_id,
            "out_refund_no": self.out_refund_no, "amount": self.amount,
            "currency": self.currency, "status": self.status.value, "reason": self.reason,
            "resolved_by": self.resolved_by.value if self.resolved_by else None,
            "channel_refund_no": self.channel_refund_no or None,
            "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at),
        }
        if self.status is R.FAILED:
            out["failure"] = {"code": self.failure_code, "message": self.failure_message}
        return out


# ---- what refunds do to their order --------------------------------------------------------

def reserve(order: Order, amount: int) -> Order:
    """The order with `amount` more held for a new PENDING refund (not shown: no updated_at)."""
    reserved = order.refund_reserved + amount
    assert 0 < amount and reserved <= order.amount, (order.order_id, reserved, order.amount)
    return replace(order, refund_reserved=reserved)


def settle(order: Order, refund: Refund, now: float) -> Order:
    """The order after `refund` left PENDING: SUCCEEDED adds to the refunded amount (it stays
    reserved), FAILED gives its reservation back."""
    if refund.status is R.SUCCEEDED:
        refunded = order.refunded_amount + refund.amount
        assert refunded <= order.refund_reserved <= order.amount, (order.order_id, refunded)
        return replace(order, refunded_amount=refunded, updated_at=now)
    assert refund.status is R.FAILED, refund.status
    reserved = order.refund_reserved - refund.amount
    assert order.refunded_amount <= reserved, (order.order_id, reserved)
    return replace(order, refund_reserved=reserved)
