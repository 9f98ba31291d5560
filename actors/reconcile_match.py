"""Matching one channel's statement for one day against paycell's orders: pure, no I/O.

The reconciler (actors/reconciler.py) feeds a Matcher the statement's lines with the records of
the orders they name, then every other order of the day on that channel, and gets a Plan: what
to settle, close, query and refund, and every mismatch. The rules:

* A payment line for an order paycell holds PENDING: the order is paid (settled PAID through its
  shard, rung ``reconcile``); unless a cancel may have reached the channel (``cancel_sent``),
  which may have reversed the payment: then the order is closed as below, and the channel's
  answer to that cancel decides.
* An order PENDING past its async window that the statement covers and shows no payment for:
  closed through the channel by its shard (the cancel fences the trade number), which commits
  what the cancel says (CLOSED, or PAID when the channel reports it paid).
* A paycell SUCCEEDED order with no payment line: the channel is queried (it may have been paid
  just after midnight); not paid there -> ``missing_on_channel``, for review.
* Mismatches, each reported with its kind:
  ``missing_in_paycell``  paid on the channel, no such order (or not a paycell order id);
  ``amount_mismatch`` / ``currency_mismatch``  a payment line that differs from the order (never
                          applied; the order is left as it is for review);
  ``paid_twice``          more payment lines than one for an order: every extra line is refunded;
  ``status_mismatch``     paid on the channel, paycell FAILED or CLOSED: paycell told the merchant
                          the payment failed, so no goods were delivered and the payer's money has
                          no purchase. The order cannot flip (final states never change), so the
                          money goes back: the channel is queried first (a reversal on another day
                          shows there as closed), and if it still holds the payment every line is
                          refunded;
  ``paid_on_other_channel`` paid on a channel the order is not on: refunded when paycell had left
                          that channel (failover after a certain non-charge), reported otherwise;
  ``refund_mismatch``     a refund line paycell cannot account for: no refund record of paycell's
                          (and no reversal of a payment paycell closed), another order, amount or
                          currency than the record, or a record paycell holds FAILED;
  ``missing_on_channel``  as above.

Refunds (paycell's, core/refund.py) on the same ladder: a refund line for a refund paycell holds
PENDING settles it SUCCEEDED (rung reconcile); a refund still PENDING past its async window that
the statement does not show is queried at the channel and settled with a final answer.

Refund ids are deterministic per (channel, order, payment line): ``rc`` + 24 hex digits of a
SHA-256, lowercase letters and digits only (every channel's refund number takes that). A rerun
plans the same ids, and channels are idempotent on them, so nothing is refunded twice; the
reconciler's own refunds are recognised on later statements and not reported as mismatches.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Iterable, Mapping

from channels.base import Statement, StatementKind, StatementLine
from core.ids import parse_order_id
from core.order import Order
from core.refund import Refund, RefundStatus
from core.states import Fact, OrderStatus, Rung

REVERSED_CODE = "reversed_after_window"   # the shard's failure_code for a cancel that reversed
CLOSED_CODE = "closed_unpaid"


class Kind(str, enum.Enum):
    MISSING_IN_PAYCELL = "missing_in_paycell"
    MISSING_ON_CHANNEL = "missing_on_channel"
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    PAID_TWICE = "paid_twice"
    STATUS_MISMATCH = "status_mismatch"
    PAID_ON_OTHER_CHANNEL = "paid_on_other_channel"
    REFUND_MISMATCH = "refund_mismatch"


@dataclass(frozen=True, slots=True)
class Settlement:
    """A fact the reconciler established, for the order's shard to apply with rung reconcile."""
    order_id: str
    fact: Fact                      # PAID or CLOSED
    channel_trade_no: str = ""
    amount: int | None = None       # PAID: what the channel took (the shard checks it)
    currency: str = ""
    failure_code: str = ""          # CLOSED: closed_unpaid | reversed_after_window

    def __post_init__(self) -> None:
        assert self.fact in (Fact.PAID, Fact.CLOSED), self.fact


@dataclass(frozen=True, slots=True)
class RefundSettlement:
    """A final status the reconciler established for one of paycell's refunds."""
    refund_id: str
    order_id: str
    status: RefundStatus            # SUCCEEDED or FAILED
    channel_refund_no: str = ""
    failure_code: str = ""

    def __post_init__(self) -> None:
        assert self.status.is_final, self.status


@dataclass(frozen=True, slots=True)
class RefundPlan:
    """Give back one payment line."""
    refund_id: str
    order_id: str
    amount: int
    currency: str
    total_amount: int               # the payment's amount (several channels ask for it)
    channel_trade_no: str
    kind: Kind
    line_no: int                    # 1-based index of the payment line among the order's lines


@dataclass
class Finding:
    """One mismatch, as the report shows it."""
    kind: Kind
    order_id: str
    detail: str
    paycell: dict[str, Any] = field(default_factory=dict)
    channel: dict[str, Any] = field(default_factory=dict)
    refunds: list[RefundPlan] = field(default_factory=list)
    refund_results: dict[str, str] = field(default_factory=dict)   # refund_id -> status

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "order_id": self.order_id, "detail": self.detail,
                "paycell": self.paycell, "channel": self.channel,
                "refunds": [{"refund_id": r.refund_id, "line": r.line_no, "amount": r.amount,
                             "currency": r.currency,
                             "status": self.refund_results.get(r.refund_id, "planned")}
                            for r in self.refunds]}


@dataclass
class Verify:
    """A FAILED / CLOSED order the channel shows paid: query, then refund if it still is."""
    order: Order
    finding: Finding
    refunds: list[RefundPlan]


@dataclass
class Plan:
    settle: list[Settlement] = field(default_factory=list)
    close: list[Order] = field(default_factory=list)
    confirm: list[Order] = field(default_factory=list)      # SUCCEEDED, no payment line
    verify: list[Verify] = field(default_factory=list)
    refunds: list[RefundPlan] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    already_settled: list[Order] = field(default_factory=list)
    settle_refunds: list[RefundSettlement] = field(default_factory=list)
    refund_checks: list[Refund] = field(default_factory=list)   # PENDING, no line: query

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


@dataclass(frozen=True)
class MatchContext:
    channel: str
    day: date
    region: str
    set_name: str
    async_window_s: float
    covered_until: float             # Unix s: every trade before this is on the statement
    own_refunds: frozenset[str] = frozenset()   # refund ids the reconciler made earlier
    refund_window_s: float = 600.0   # paycell's refund async window (orders.refund_async_window_ms)


def refund_id_for(channel: str, order_id: str, line_no: int) -> str:
    digest = hashlib.sha256(f"paycell-reconcile|{channel}|{order_id}|{line_no}".encode())
    return "rc" + digest.hexdigest()[:24]


def day_bounds(day: date) -> tuple[float, float]:
    """[start, end) of a UTC day in Unix seconds."""
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    return start, start + 86_400


def covered_until(day: date, fetched_at: float, lag_s: float) -> float:
    """Until when the statement of `day`, fetched at `fetched_at`, shows every trade."""
    return min(day_bounds(day)[1], fetched_at - lag_s)


def group_lines(statement: Statement
                ) -> dict[str, tuple[list[StatementLine], list[StatementLine]]]:
    """order id -> (payment lines, refund lines), each in time order."""
    groups: dict[str, tuple[list[StatementLine], list[StatementLine]]] = {}
    for line in sorted(statement.lines, key=lambda x: (x.at, x.channel_trade_no, x.refund_id)):
        pays, refunds = groups.setdefault(line.order_id, ([], []))
        (pays if line.kind is StatementKind.PAYMENT else refunds).append(line)
    return groups


def _paycell_side(o: Order) -> dict[str, Any]:
    return {"status": o.status.value, "amount": o.amount, "currency": o.currency,
            "channel": o.channel, "refunded_amount": o.refunded_amount,
            "resolved_by": o.resolved_by.value if o.resolved_by else None}


def _channel_side(lines: list[StatementLine]) -> dict[str, Any]:
    first = lines[0]
    return {"lines": len(lines), "amount": first.amount, "currency": first.currency,
            "channel_trade_no": first.channel_trade_no, "kind": first.kind.value,
            "total": sum(x.amount for x in lines)}


class Matcher:
    """Accumulates a Plan: statement lines first (add_lines), then the day's other orders."""

    def __init__(self, ctx: MatchContext) -> None:
        self.ctx = ctx
        self.plan = Plan()
        self.line_ids: set[str] = set()
        self.refund_line_ids: set[str] = set()
        self._records: Mapping[str, Refund | None] = {}

    # ---- the statement's side ---------------------------------------------------------------
    def add_lines(self, groups: Mapping[str, tuple[list[StatementLine], list[StatementLine]]],
                  orders: Mapping[str, Order | None],
                  refund_records: Mapping[str, Refund | None] | None = None) -> None:
        """`orders`: the record of every order of this SET the lines name (None: no record);
        `refund_records`: paycell's refund records of the refund ids the lines name."""
        self._records = refund_records or {}
        for oid, (pays, refunds) in groups.items():
            self.line_ids.add(oid)
            self.refund_line_ids.update(x.refund_id for x in refunds)
            self.plan.count("payment_lines", len(pays))
            self.plan.count("refund_lines", len(refunds))
            ref = parse_order_id(oid)
            if ref is not None and (ref.region, ref.set_name) != (self.ctx.region,
                                                                  self.ctx.set_name):
                self.plan.count("other_set_lines", len(pays) + len(refunds))
                continue
            order = orders.get(oid) if ref is not None else None
            if order is None:
                self._unknown(oid, pays, refunds, paycell_id=ref is not None)
                continue
            self._payments(order, pays, refunds)
            self._refunds(order, pays, refunds)

    def _finding(self, kind: Kind, oid: str, detail: str, order: Order | None,
                 lines: list[StatementLine]) -> Finding:
        f = Finding(kind, oid, detail, _paycell_side(order) if order else {},
                    _channel_side(lines) if lines else {})
        self.plan.findings.append(f)
        self.plan.count("mismatches")
        return f

    def _unknown(self, oid: str, pays: list[StatementLine], refunds: list[StatementLine],
                 paycell_id: bool) -> None:
        what = "no such order" if paycell_id else "not a paycell order id"
        if pays:
            self._finding(Kind.MISSING_IN_PAYCELL, oid,
                          f"paid on {self.ctx.channel}, {what}: for review", None, pays)
        if refunds:
            self._finding(Kind.REFUND_MISMATCH, oid, f"refund on {self.ctx.channel}, {what}",
                          None, refunds)

    def _refund_plans(self, order: Order, lines: list[StatementLine], first_no: int,
                      kind: Kind) -> list[RefundPlan]:
        return [RefundPlan(refund_id_for(self.ctx.channel, order.order_id, no), order.order_id,
                           line.amount, line.currency, line.amount, line.channel_trade_no, kind,
                           no)
                for no, line in enumerate(lines, start=1) if no >= first_no]

    def _payments(self, order: Order, pays: list[StatementLine],
                  refunds: list[StatementLine]) -> None:
        if not pays:
            return
        if order.channel != self.ctx.channel:
            left = self.ctx.channel in order.tried_channels.split(",")
            f = self._finding(Kind.PAID_ON_OTHER_CHANNEL, order.order_id,
                              f"paid on {self.ctx.channel}, the order is on {order.channel}"
                              + ("; paycell had left this channel: refunded" if left
                                 else ": for review"), order, pays)
            if left:
                f.refunds = self._refund_plans(order, pays, 1, f.kind)
                self.plan.refunds += f.refunds
            return
        good = [x for x in pays if x.amount == order.amount and x.currency == order.currency]
        for line in pays:
            if line.currency != order.currency:
                self._finding(Kind.CURRENCY_MISMATCH, order.order_id,
                              f"channel {line.currency}, paycell {order.currency}: not applied",
                              order, [line])
            elif line.amount != order.amount:
                self._finding(Kind.AMOUNT_MISMATCH, order.order_id,
                              f"channel {line.amount}, paycell {order.amount}: not applied",
                              order, [line])
        if not good:
            return
        if order.status is OrderStatus.PENDING and order.cancel_sent:
            self.plan.close.append(order)    # a cancel may have reversed it: its answer decides
        elif order.status is OrderStatus.PENDING:
            first = good[0]
            self.plan.settle.append(Settlement(order.order_id, Fact.PAID, first.channel_trade_no,
                                               first.amount, first.currency))
        elif order.status is OrderStatus.SUCCEEDED:
            self._settled_or_matched(order)
        else:
            self._unpaid_but_paid(order, good, refunds)
            return
        if len(good) > 1:
            f = self._finding(Kind.PAID_TWICE, order.order_id,
                              f"{len(good)} payments for one order: the extra "
                              f"{len(good) - 1} refunded", order, good)
            f.refunds = self._refund_plans(order, good, 2, f.kind)
            self.plan.refunds += f.refunds

    def _settled_or_matched(self, order: Order) -> None:
        if order.resolved_by is Rung.RECONCILE:
            self.plan.already_settled.append(order)
        else:
            self.plan.count("matched")

    def _unpaid_but_paid(self, order: Order, good: list[StatementLine],
                         refunds: list[StatementLine]) -> None:
        theirs = sum(x.amount for x in refunds if x.refund_id not in self.ctx.own_refunds)
        if order.failure_code == REVERSED_CODE or theirs >= good[0].amount:
            # closed by a cancel that gave the money back: one payment is accounted for
            self._settled_or_matched(order)
            self.plan.count("reversed")
            if len(good) > 1:
                f = self._finding(Kind.PAID_TWICE, order.order_id,
                                  f"{len(good)} payments, one reversed: the extra "
                                  f"{len(good) - 1} refunded", order, good)
                f.refunds = self._refund_plans(order, good, 2, f.kind)
                self.plan.refunds += f.refunds
            return
        f = self._finding(Kind.STATUS_MISMATCH, order.order_id,
                          f"paid on {self.ctx.channel}, paycell {order.status.value}: the payer's "
                          "money has no purchase; refunded if the channel still holds it",
                          order, good)
        self.plan.verify.append(Verify(order, f, self._refund_plans(order, good, 1, f.kind)))

    def _refunds(self, order: Order, pays: list[StatementLine],
                 refunds: list[StatementLine]) -> None:
        for line in refunds:
            if line.refund_id in self.ctx.own_refunds:
                self.plan.count("own_refund_lines")
                continue
            rec = self._records.get(line.refund_id)
            if rec is None:
                # no refund of paycell's: only a cancel's reversal of a payment is expected
                reversal = order.status is not OrderStatus.SUCCEEDED and (
                    order.failure_code == REVERSED_CODE or bool(pays)) \
                    and line.amount <= order.amount
                if reversal:
                    self.plan.count("refunds_matched")
                else:
                    self._finding(Kind.REFUND_MISMATCH, order.order_id,
                                  f"refund {line.refund_id or '(no id)'} of {line.amount} on "
                                  f"{self.ctx.channel}: no such refund of paycell's", order,
                                  [line])
            elif (rec.order_id, rec.amount, rec.currency) != (order.order_id, line.amount,
                                                              line.currency):
                self._finding(Kind.REFUND_MISMATCH, order.order_id,
                              f"refund {rec.refund_id}: channel {line.amount} {line.currency}, "
                              f"paycell {rec.amount} {rec.currency} of {rec.order_id}", order,
                              [line])
            elif rec.status is RefundStatus.PENDING:
                self.plan.settle_refunds.append(RefundSettlement(
                    rec.refund_id, rec.order_id, RefundStatus.SUCCEEDED, line.channel_refund_no))
            elif rec.status is RefundStatus.FAILED:
                self._finding(Kind.REFUND_MISMATCH, order.order_id,
                              f"refund {rec.refund_id}: refunded on {self.ctx.channel}, paycell "
                              "holds it FAILED: for review", order, [line])
            elif rec.resolved_by is Rung.RECONCILE:
                self.plan.count("refunds_already_settled")
            else:
                self.plan.count("refunds_matched")

    def add_day_refund(self, refund: Refund) -> None:
        """A refund of paycell's on this channel, still PENDING, created on the day: past its
        async window and with no line on the statement, the channel is asked."""
        if refund.channel != self.ctx.channel or refund.status.is_final \
                or refund.refund_id in self.refund_line_ids:
            return
        if refund.created_at + self.ctx.refund_window_s <= self.ctx.covered_until:
            self.plan.refund_checks.append(refund)
        else:
            self.plan.count("refunds_not_due")

    # ---- paycell's side ---------------------------------------------------------------------
    def add_day_order(self, order: Order) -> None:
        """An order of this channel created on the day, whatever its status. Only orders whose
        async window ended before the statement's coverage are judged (the others: not_due)."""
        if order.order_id in self.line_ids or order.channel != self.ctx.channel:
            return
        if order.status.is_final and order.resolved_by is Rung.RECONCILE:
            self.plan.already_settled.append(order)
        elif order.created_at + self.ctx.async_window_s > self.ctx.covered_until:
            self.plan.count("not_due")
        elif order.status is OrderStatus.PENDING:
            self.plan.close.append(order)
        elif order.status is OrderStatus.SUCCEEDED:
            self.plan.confirm.append(order)
        else:
            self.plan.count("matched")

    def missing_on_channel(self, order: Order, channel_fact: str) -> None:
        self._finding(Kind.MISSING_ON_CHANNEL, order.order_id,
                      f"paycell SUCCEEDED, {self.ctx.channel} shows no payment (query: "
                      f"{channel_fact}): for review", order, [])


def match(statement: Statement, orders: Mapping[str, Order | None], day_orders: Iterable[Order],
          ctx: MatchContext, refunds: Mapping[str, Refund | None] | None = None,
          day_refunds: Iterable[Refund] = ()) -> Plan:
    """The whole plan at once (the reconciler streams the day's orders instead)."""
    m = Matcher(ctx)
    m.add_lines(group_lines(statement), orders, refunds)
    for order in day_orders:
        m.add_day_order(order)
    for refund in day_refunds:
        m.add_day_refund(refund)
    return m.plan
