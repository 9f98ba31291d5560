"""The order record, the create command that asks for one, and their wire forms."""
from __future__ import annotations

import hashlib
import sys
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import orjson

from core.clock import rfc3339
from core.states import Decision, Fact, OrderStatus, Outcome, Rung, apply


@dataclass(frozen=True, slots=True)
class CreateOrder:
    """A validated merchant request to create and pay an order (what the gateway sends to a shard)."""
    app_id: str
    out_trade_no: str
    user_id: str
    amount: int
    currency: str
    subject: str
    channel: str
    payment_type: str
    auth_code: str = field(default="", repr=False)  # payer's one-time code: never stored or logged
    notify_url: str = ""
    received_at: float = 0.0  # Unix s when the gateway got the request: the sync deadline's start
    payment_token: str = field(default="", repr=False)  # card: saved method / vault id, not stored
    country: str = ""         # ISO 3166 alpha-2 of the payer, for channel eligibility

    def fingerprint(self) -> str:
        """Hash of the business fields that make two requests 'the same body'.

        The payer's one-time auth code is left out on purpose: it is payer data we do not keep,
        and a retry with a refreshed code is the same purchase.
        """
        fields_ = [self.app_id, self.out_trade_no, self.user_id, str(self.amount),
                   self.currency, self.subject, self.channel, self.payment_type, self.notify_url]
        if self.payment_token or self.country:     # (orders from before these fields: same hash)
            fields_ += [self.payment_token, self.country]
        text = "\x1f".join(fields_)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of an order's history: which fact, through which rung, moved it where."""
    at: float
    status: str
    fact: str
    rung: str


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    app_id: str
    out_trade_no: str
    user_id: str
    amount: int
    currency: str
    subject: str
    channel: str
    payment_type: str
    fingerprint: str
    created_at: float
    updated_at: float
    status: OrderStatus = OrderStatus.PENDING
    resolved_by: Rung | None = None
    channel_trade_no: str = ""
    refunded_amount: int = 0        # SUCCEEDED refunds
    refund_reserved: int = 0        # PENDING + SUCCEEDED refunds: at most `amount` (core.refund)
    failure_code: str = ""
    failure_message: str = ""
    notify_url: str = ""
    charge_sent: bool = False       # the charge request may have reached the channel
    cancel_sent: bool = False       # a cancel may have reached it: only its answer decides now
    routed: bool = False            # paycell chose the channel (failover allowed)
    tried_channels: str = ""        # comma-separated channels that certainly did not charge
    pay_data: str = ""              # prepay: JSON of what the payer's app needs (prepay_id...)
    conflicts: int = 0              # contradictory facts seen (reported, never applied)
    history: tuple[Change, ...] = ()

    @classmethod
    def new(cls, order_id: str, cmd: CreateOrder, now: float) -> "Order":
        i = sys.intern
        return cls(order_id=order_id, app_id=i(cmd.app_id), out_trade_no=cmd.out_trade_no,
                   user_id=cmd.user_id, amount=cmd.amount, currency=i(cmd.currency),
                   subject=i(cmd.subject), channel=i(cmd.channel),
                   payment_type=i(cmd.payment_type), fingerprint=cmd.fingerprint(),
                   created_at=now, updated_at=now, notify_url=i(cmd.notify_url))

    def learn(self, fact: Fact, rung: Rung, now: float, *, channel_trade_no: str = "",
              failure_code: str = "", failure_message: str = "",
              pay_data: str = "") -> tuple["Order", Decision[OrderStatus]]:
        """Apply a channel fact; returns the new record (self when nothing changed) and the decision."""
        decision = apply(self.status, fact, rung)
        if decision.outcome is Outcome.NOOP:
            new_trade_no = bool(channel_trade_no) and not self.channel_trade_no
            new_pay_data = bool(pay_data) and not self.pay_data
            if new_trade_no or new_pay_data:
                return replace(self, channel_trade_no=self.channel_trade_no or channel_trade_no,
                               pay_data=self.pay_data or pay_data, updated_at=now), decision
            return self, decision
        if decision.outcome is Outcome.CONFLICT:
            return replace(self, conflicts=self.conflicts + 1, updated_at=now), decision
        return replace(
            self, status=decision.status, resolved_by=decision.resolved_by, updated_at=now,
            channel_trade_no=channel_trade_no or self.channel_trade_no,
            failure_code=failure_code, failure_message=failure_message,
            history=self.history + (Change(now, decision.status.value, fact.value, rung.value),),
        ), decision

    @property
    def paid_at(self) -> float | None:
        """When the order became SUCCEEDED (what a channel's refund window counts from)."""
        for change in self.history:
            if change.status == OrderStatus.SUCCEEDED.value:
                return change.at
        return self.updated_at if self.status is OrderStatus.SUCCEEDED else None

    # ---- storage form (orjson-friendly dict; hand-written: this is on the hot path) ----
    def to_record(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _PLAIN_FIELDS}
        d["status"] = self.status.value
        d["resolved_by"] = self.resolved_by.value if self.resolved_by else None
        d["history"] = [[c.at, c.status, c.fact, c.rung] for c in self.history]
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "Order":
        """The record as stored. A restarted shard builds 100,000s of these before it serves, so
        this sets the slots directly (what the frozen __init__ does, at half the cost)."""
        order = object.__new__(cls)
        for name, slot in _PLAIN_SLOTS:
            value = d[name] if name in d else _DEFAULTS[name]
            slot.__set__(order, sys.intern(value) if name in _SHARED_FIELDS else value)
        _STATUS_SLOT.__set__(order, OrderStatus(d["status"]))
        _RESOLVED_SLOT.__set__(order, Rung(d["resolved_by"]) if d.get("resolved_by") else None)
        _HISTORY_SLOT.__set__(order, tuple(Change(*c) for c in d.get("history", ())))
        return order

    # ---- public API form (../shared/API.md) ----
    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "order_id": self.order_id, "app_id": self.app_id, "out_trade_no": self.out_trade_no,
            "status": self.status.value, "amount": self.amount, "currency": self.currency,
            "channel": self.channel, "channel_trade_no": self.channel_trade_no or None,
            "resolved_by": self.resolved_by.value if self.resolved_by else None,
            "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at),
            "refunded_amount": self.refunded_amount,
        }
        if self.status is OrderStatus.FAILED:
            out["failure"] = {"code": self.failure_code, "message": self.failure_message}
        if self.pay_data:
            out["pay_data"] = orjson.loads(self.pay_data)
        if self.tried_channels:
            out["tried_channels"] = self.tried_channels.split(",")
        return out


_PLAIN_FIELDS = tuple(f.name for f in fields(Order) if f.name not in ("status", "resolved_by", "history"))
_SHARED_FIELDS = frozenset({"app_id", "currency", "subject", "channel", "payment_type",
                            "notify_url"})  # few distinct values: one string object for all
_PLAIN_SLOTS = tuple((name, Order.__dict__[name]) for name in _PLAIN_FIELDS)
_STATUS_SLOT, _RESOLVED_SLOT, _HISTORY_SLOT = (Order.__dict__[n]
                                               for n in ("status", "resolved_by", "history"))
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Order) if f.default is not MISSING}
