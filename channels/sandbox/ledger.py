"""A channel sandbox's in-memory ledger: the money truth tests and chaos runs check paycell against.

Channel-neutral: every channel sandbox keeps one Ledger and speaks about it in its own words
(TRADE_SUCCESS, SUCCESS, succeeded, COMPLETED...). One Trade per merchant trade number.
`charges` counts every time money was taken for it (more than one is a double charge); refunds
are kept per merchant refund number, so a partial refund and its retry are told apart.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

TRADES_MAX = 2_000_000
NOTIFICATIONS_KEPT_MAX = 8          # per trade, for the replay control (out-of-order tests)


class TradeStatus(str, enum.Enum):
    WAITING = "WAITING"              # created, the payer has not paid (yet)
    PAID = "PAID"                    # money taken (possibly partly or wholly refunded since)
    CLOSED = "CLOSED"                # closed unpaid, declined, or reversed


class RefundState(str, enum.Enum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class LedgerFull(Exception):
    pass


class RefundRefused(Exception):
    """Why the channel refuses a refund; `reason` is one of the REFUSE_* names below."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


REFUSE_NOT_PAID = "not_paid"
REFUSE_AMOUNT = "amount_exceeds_paid"
REFUSE_TOO_MANY = "too_many_refunds"
REFUSE_CONFLICT = "refund_number_reused"   # same merchant refund number, another amount


@dataclass
class Refund:
    out_refund_no: str
    refund_no: str
    amount: int
    state: RefundState
    created: datetime
    finished: datetime | None = None
    notify_url: str = ""
    calls: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"refund_no": self.refund_no, "amount": self.amount, "state": self.state.value,
                "calls": self.calls}


@dataclass
class Trade:
    out_trade_no: str
    total_amount: int                       # minor units
    currency: str = "CNY"
    trade_no: str = ""
    status: TradeStatus | None = None       # None: requests seen, nothing committed
    subject: str = ""
    notify_url: str = ""
    payment_type: str = ""
    payer: str = ""                          # payer / customer reference the request named
    created: datetime | None = None
    paid: datetime | None = None
    closed: datetime | None = None
    pay_calls: int = 0
    charges: int = 0
    query_calls: int = 0
    cancel_calls: int = 0
    refund_calls: int = 0
    notifies_sent: int = 0
    notifies_acked: int = 0
    refund_list: dict[str, Refund] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)   # channel-specific ids (prepay_id ...)

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def refunded_amount(self) -> int:
        return sum(r.amount for r in self.refund_list.values() if r.state is RefundState.SUCCESS)

    @property
    def committed_refund_amount(self) -> int:
        """Refunded or on its way back: what a new refund may not push past the paid amount."""
        return sum(r.amount for r in self.refund_list.values() if r.state is not RefundState.FAILED)

    @property
    def fully_refunded(self) -> bool:
        return self.status is TradeStatus.PAID and self.refunded_amount >= self.total_amount

    def to_json(self) -> dict[str, Any]:
        return {
            "trade_no": self.trade_no,
            "status": self.status.value if self.status else None,
            "total_amount": self.total_amount, "currency": self.currency,
            "pay_calls": self.pay_calls, "charges": self.charges,
            "refunds": sum(1 for r in self.refund_list.values() if r.state is RefundState.SUCCESS),
            "refunded_amount": self.refunded_amount,
            "refund_list": {k: r.to_json() for k, r in self.refund_list.items()},
            "query_calls": self.query_calls, "cancel_calls": self.cancel_calls,
            "refund_calls": self.refund_calls,
            "notifies_sent": self.notifies_sent, "notifies_acked": self.notifies_acked,
        }


TOTAL_FIELDS = ("pay_calls", "charges", "refunds", "query_calls", "cancel_calls", "refund_calls",
                "notifies_sent", "notifies_acked")


@dataclass(frozen=True)
class StatementRow:
    kind: str                       # "payment" | "refund"
    trade: Trade
    refund: Refund | None
    at: datetime


class Ledger:
    def __init__(self, trades_max: int = TRADES_MAX, trade_no_prefix: str = "42000") -> None:
        assert trades_max > 0
        self.trades_max = trades_max
        self.trade_no_prefix = trade_no_prefix
        self.trades: dict[str, Trade] = {}
        self._seq = 0
        self._refund_seq = 0
        self.notifies_dropped = 0        # by the drop knob, a full queue or exhausted retries
        self.notifies_duplicated = 0     # by the duplicate knob
        self.faults: dict[str, int] = {}  # charges a random fault knob hit, per fault name

    def get(self, out_trade_no: str) -> Trade | None:
        return self.trades.get(out_trade_no)

    def ensure(self, out_trade_no: str, total_amount: int, currency: str = "CNY") -> Trade:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            if len(self.trades) >= self.trades_max:
                raise LedgerFull(f"ledger holds {self.trades_max} trades")
            trade = self.trades[out_trade_no] = Trade(out_trade_no, total_amount, currency)
        return trade

    def open(self, trade: Trade, now: datetime, status: TradeStatus) -> None:
        """Create the channel-side trade (a trade_no) in `status`."""
        if not trade.trade_no:
            self._seq += 1
            trade.trade_no = f"{now:%Y%m%d}{self.trade_no_prefix}{self._seq:015d}"
        trade.created = trade.created or now
        trade.status = status

    def pay(self, trade: Trade, now: datetime) -> None:
        self.open(trade, now, TradeStatus.PAID)
        trade.paid = now
        trade.charges += 1

    def close(self, trade: Trade, now: datetime) -> None:
        self.open(trade, now, TradeStatus.CLOSED)
        trade.closed = now

    def refund(self, trade: Trade, out_refund_no: str, amount: int, now: datetime, *,
               partial_max: int = 50, state: RefundState = RefundState.SUCCESS,
               notify_url: str = "") -> Refund:
        """Record a refund (idempotent on out_refund_no); RefundRefused when the channel says no."""
        existing = trade.refund_list.get(out_refund_no)
        if existing is not None:
            if existing.amount != amount:
                raise RefundRefused(REFUSE_CONFLICT)
            existing.calls += 1
            return existing
        if trade.status is not TradeStatus.PAID:
            raise RefundRefused(REFUSE_NOT_PAID)
        if amount <= 0 or trade.committed_refund_amount + amount > trade.total_amount:
            raise RefundRefused(REFUSE_AMOUNT)
        if len(trade.refund_list) >= partial_max:
            raise RefundRefused(REFUSE_TOO_MANY)
        self._refund_seq += 1
        refund = Refund(out_refund_no, f"5030{now:%Y%m%d}{self._refund_seq:012d}", amount, state,
                        now, now if state is RefundState.SUCCESS else None, notify_url)
        trade.refund_list[out_refund_no] = refund
        return refund

    def finish_refund(self, refund: Refund, now: datetime,
                      state: RefundState = RefundState.SUCCESS) -> None:
        if refund.state is RefundState.PROCESSING:
            refund.state, refund.finished = state, now

    def reverse(self, trade: Trade, now: datetime) -> Refund:
        """Give a paid trade's money back in full and close it (a cancel/reverse of a payment)."""
        assert trade.status is TradeStatus.PAID, trade.status
        rest = trade.total_amount - trade.committed_refund_amount
        refund = self.refund(trade, f"reverse-{trade.out_trade_no}", rest, now,
                             partial_max=1_000_000) if rest > 0 else None
        self.close(trade, now)
        assert refund is not None
        return refund

    def statement(self, day: date) -> list[StatementRow]:
        """What a channel's bill for `day` lists: payments that succeeded that day and refunds
        that finished that day, in time order."""
        rows: list[StatementRow] = []
        for trade in self.trades.values():
            if trade.paid is not None and trade.paid.date() == day and trade.charges:
                rows.extend(StatementRow("payment", trade, None, trade.paid)
                            for _ in range(trade.charges))
            for refund in trade.refund_list.values():
                if (refund.state is RefundState.SUCCESS and refund.finished is not None
                        and refund.finished.date() == day):
                    rows.append(StatementRow("refund", trade, refund, refund.finished))
        rows.sort(key=lambda r: r.at)
        return rows

    def reset(self) -> None:
        self.trades.clear()
        self.notifies_dropped = 0
        self.notifies_duplicated = 0
        self.faults.clear()

    def snapshot(self) -> dict[str, Any]:
        totals: dict[str, Any] = {name: 0 for name in TOTAL_FIELDS}
        trades = {}
        by_currency: dict[str, dict[str, int]] = {}
        for otn, t in self.trades.items():
            row = trades[otn] = t.to_json()
            for name in TOTAL_FIELDS:
                totals[name] += row[name]
            money = by_currency.setdefault(t.currency, {"charged": 0, "refunded": 0})
            money["charged"] += t.total_amount * t.charges
            money["refunded"] += t.refunded_amount
        totals["trades"] = len(self.trades)
        totals["double_charged"] = sum(1 for t in self.trades.values() if t.charges > 1)
        totals["charged_amount"] = sum(m["charged"] for m in by_currency.values())
        totals["refunded_amount"] = sum(m["refunded"] for m in by_currency.values())
        totals["by_currency"] = by_currency
        totals["notifies_dropped"] = self.notifies_dropped
        totals["notifies_duplicated"] = self.notifies_duplicated
        totals["faults"] = dict(self.faults)
        return {"trades": trades, "totals": totals}
