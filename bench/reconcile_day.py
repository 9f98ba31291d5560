"""The day bench.reconcile builds, and what reconciling it must give: pure, no I/O.

A day is N paycell orders on one channel, each of one kind. The kind fixes the order's amount,
whose last two digits pick the sandbox's scenario (channels/sandbox/engine.py), and so what
paycell and the channel each know before reconciliation:

  kind      ending   paycell before        channel              reconciliation must
  paid      00,09-99 SUCCEEDED (sync)      paid                 match it
  notify    02       SUCCEEDED (notify)    paid                 match it
  lost      06       PENDING               paid (answer and     settle it SUCCEEDED,
                                           notification lost)   resolved_by reconcile
  unpaid    03       PENDING               waiting (the payer   close it at the channel (cancel:
                                           never confirms)      the fence), CLOSED by reconcile
  unknown   07       PENDING               nothing (system      close it (fence), CLOSED
                                           error, no trade)
  declined  01       FAILED (sync)         closed               match it
  twice     as paid  SUCCEEDED (sync)      paid twice (a second report paid_twice, refund the
                                           pay request, naive   extra payment once
                                           charge)
  mismatch  07       PENDING               paid 93 more (the    report amount_mismatch, apply
                                           same trade number    nothing: the order stays PENDING
                                           paid again with      for review
                                           another amount)
  stray     (not an order) paid             paid, no such order  report missing_in_paycell

A second run must change nothing: no settlement, cancel, refund or charge; the settled orders
counted as already settled, the reconciliation refunds as already done, the same mismatches.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from core.order import Order
from core.states import OrderStatus, Rung

KINDS = ("paid", "notify", "lost", "unpaid", "unknown", "declined", "twice", "mismatch")
DEFAULT_MIX: dict[str, float] = {   # shares of the day's orders; "paid" takes the rest
    "notify": 0.03, "lost": 0.05, "unpaid": 0.01, "unknown": 0.005, "declined": 0.02,
    "twice": 0.002, "mismatch": 0.0005, "stray": 0.0005}
ENDINGS = {"notify": 2, "lost": 6, "unpaid": 3, "unknown": 7, "declined": 1, "mismatch": 7}
MISMATCH_EXTRA = 93            # the channel's amount: ends in 00, so the sandbox pays it
AMOUNT_HUNDREDS_MAX = 500      # amounts up to 500.99 in major units

# what the create call may answer, per kind: (HTTP status, order status); a charge answered after
# the sync deadline (a loaded machine) is 202 PENDING and settled by its late answer or the
# notification
LATE = (202, "PENDING")
SYNC_ANSWERS = {"paid": {(200, "SUCCEEDED"), LATE}, "twice": {(200, "SUCCEEDED"), LATE},
                "declined": {(200, "FAILED"), LATE}, "notify": {LATE}, "lost": {LATE},
                "unpaid": {LATE}, "unknown": {LATE}, "mismatch": {LATE}}
# the order after reconciliation, per kind: (status, the rungs that may have decided it)
PAID_BY_LADDER = frozenset({Rung.SYNC, Rung.NOTIFY})
FINAL: dict[str, tuple[OrderStatus, frozenset[Rung | None]]] = {
    "paid": (OrderStatus.SUCCEEDED, PAID_BY_LADDER),
    "twice": (OrderStatus.SUCCEEDED, PAID_BY_LADDER),
    "notify": (OrderStatus.SUCCEEDED, frozenset({Rung.NOTIFY})),
    "lost": (OrderStatus.SUCCEEDED, frozenset({Rung.RECONCILE})),
    "unpaid": (OrderStatus.CLOSED, frozenset({Rung.RECONCILE})),
    "unknown": (OrderStatus.CLOSED, frozenset({Rung.RECONCILE})),
    "declined": (OrderStatus.FAILED, frozenset({Rung.SYNC})),
    "mismatch": (OrderStatus.PENDING, frozenset({None}))}
LADDER_KINDS = ("paid", "twice", "notify", "declined")   # final before reconciliation


@dataclass
class DayOrder:
    kind: str
    key: str                 # out_trade_no
    amount: int
    order_id: str = ""       # once created

    @property
    def channel_amount(self) -> int:
        """What the channel takes for it (mismatch: another amount)."""
        return self.amount + MISMATCH_EXTRA if self.kind == "mismatch" else self.amount


def parse_mix(text: str) -> dict[str, float]:
    """"lost=0.05,unpaid=0.01" over DEFAULT_MIX; ValueError on an unknown kind or a bad share."""
    mix = dict(DEFAULT_MIX)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in mix:
            raise ValueError(f"unknown kind {name!r}; kinds: {sorted(mix)}")
        share = float(value)
        if not 0 <= share < 1:
            raise ValueError(f"{name}: a share in [0, 1)")
        mix[name] = share
    if sum(v for k, v in mix.items() if k != "stray") >= 1:
        raise ValueError("the shares leave no paid orders")
    return mix


def amount_for(kind: str, rng: random.Random) -> int:
    hundreds = rng.randint(1, AMOUNT_HUNDREDS_MAX) * 100
    if kind in ENDINGS:
        return hundreds + ENDINGS[kind]
    return hundreds + rng.choice((0, rng.randint(9, 99)))     # paid at once


def plan_day(n: int, mix: Mapping[str, float], seed: int, tag: str
             ) -> tuple[list[DayOrder], int]:
    """(the day's orders in a seeded random order, how many stray payments). Every kind with a
    share above 0 gets at least one order."""
    rng = random.Random(seed)
    counts = {k: (max(1, round(n * s)) if s > 0 else 0) for k, s in mix.items()}
    strays = counts.pop("stray", 0)
    counts["paid"] = n - sum(counts.values())
    if counts["paid"] < 1:
        raise ValueError(f"{n} orders are too few for this mix")
    kinds = [k for k, c in sorted(counts.items()) for _ in range(c)]
    rng.shuffle(kinds)
    return [DayOrder(k, f"rb{tag}{i:07d}", amount_for(k, rng)) for i, k in enumerate(kinds)], \
        strays


def kinds_of(orders: Iterable[DayOrder]) -> Counter[str]:
    c: Counter[str] = Counter(o.kind for o in orders)
    for k in KINDS:
        c.setdefault(k, 0)
    return c


def expected_reports(k: Mapping[str, int], strays: int) -> tuple[dict[str, int], dict[str, int],
                                                                  dict[str, int]]:
    """(counts of the first run, counts of the second, mismatches by kind) that matter."""
    lines = k["paid"] + 2 * k["twice"] + k["notify"] + k["lost"] + k["mismatch"] + strays
    first = {"lines_parsed": lines, "payment_lines": lines, "refund_lines": 0,
             "matched": k["paid"] + k["twice"] + k["notify"] + k["declined"],
             "settled_paid": k["lost"], "settled_closed": k["unpaid"] + k["unknown"],
             "already_settled": 0, "resolved_meanwhile": 0, "not_due": 0, "left_open": 0,
             "refunds_sent": k["twice"], "refunds_already_done": 0, "refunds_failed": 0,
             "own_refund_lines": 0, "mismatches": k["twice"] + k["mismatch"] + strays,
             "deferred": 0, "errors": 0}
    second = dict(first, lines_parsed=lines + k["twice"], refund_lines=k["twice"],
                  settled_paid=0, settled_closed=0,
                  already_settled=k["lost"] + k["unpaid"] + k["unknown"],
                  refunds_sent=0, refunds_already_done=k["twice"], own_refund_lines=k["twice"])
    by_kind = {name: n for name, n in (("amount_mismatch", k["mismatch"]),
                                       ("missing_in_paycell", strays),
                                       ("paid_twice", k["twice"])) if n}
    return first, second, by_kind


def check_report(report: Mapping[str, Any], counts: Mapping[str, int],
                 by_kind: Mapping[str, int]) -> list[str]:
    problems = []
    if report.get("status") != "complete":
        problems.append(f"run {report.get('run')}: status {report.get('status')}")
    got = report.get("counts", {})
    for name, want in counts.items():
        if got.get(name) != want:
            problems.append(f"run {report.get('run')}: {name} {got.get(name)}, expected {want}")
    if report.get("mismatches_by_kind") != dict(by_kind):
        problems.append(f"run {report.get('run')}: mismatches by kind "
                        f"{report.get('mismatches_by_kind')}, expected {dict(by_kind)}")
    return problems


def check_orders(orders: Iterable[DayOrder], records: Mapping[str, Order | None]) -> list[str]:
    """Each order's status and rung after reconciliation (the first few problems, then a count)."""
    problems: list[str] = []
    for o in orders:
        rec = records.get(o.order_id)
        status, rungs = FINAL[o.kind]
        if rec is None:
            problems.append(f"{o.kind} {o.order_id}: no record")
        elif rec.status is not status or rec.resolved_by not in rungs:
            problems.append(f"{o.kind} {o.order_id}: {rec.status.value} by "
                            f"{rec.resolved_by.value if rec.resolved_by else None}, expected "
                            f"{status.value} by "
                            + " or ".join(sorted(r.value if r else "None" for r in rungs)))
        elif o.kind == "lost" and not rec.channel_trade_no:
            problems.append(f"lost {o.order_id}: settled without the channel's trade number")
    return _bounded(problems)


def check_ledger(orders: Iterable[DayOrder], trades: Mapping[str, Mapping[str, Any]]
                 ) -> list[str]:
    """The channel's ledger after reconciliation: what each kind must show there."""
    problems: list[str] = []
    for o in orders:
        t = trades.get(o.order_id, {})
        status, charges = t.get("status"), t.get("charges", 0)
        refunded, amount = t.get("refunded_amount", 0), t.get("total_amount")
        if o.kind == "unknown":       # the fence on a trade the channel never opened: CLOSED
            ok = status in ("CLOSED", None) and charges == 0   # or no trade (Stripe's own fence)
        elif o.kind in ("unpaid", "declined"):
            ok = status == "CLOSED" and charges == 0
        elif o.kind == "twice":
            ok = (status, charges, refunded, t.get("refund_calls")) == ("PAID", 2, o.amount, 1)
        else:
            ok = (status, charges, refunded, amount) == ("PAID", 1, 0, o.channel_amount)
        if o.kind == "unpaid" and t.get("cancel_calls") != 1:
            ok = False
        if not ok:
            problems.append(f"{o.kind} {o.order_id}: channel shows {dict(t)}")
    return _bounded(problems)


def _bounded(problems: list[str], keep: int = 10) -> list[str]:
    if len(problems) <= keep:
        return problems
    return problems[:keep] + [f"... and {len(problems) - keep} more"]
