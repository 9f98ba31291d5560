"""The sandbox's in-memory ledger: the money truth that tests and chaos runs check paycell against.

One Trade per out_trade_no. `charges` counts every time money was taken for it (more than one is a
double charge), `refunds` every time it was given back.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TRADES_MAX = 2_000_000


class TradeStatus(str, enum.Enum):
    WAIT_BUYER_PAY = "WAIT_BUYER_PAY"
    TRADE_SUCCESS = "TRADE_SUCCESS"
    TRADE_CLOSED = "TRADE_CLOSED"


class LedgerFull(Exception):
    pass


@dataclass
class Trade:
    out_trade_no: str
    total_amount: int                       # fen
    trade_no: str = ""
    status: TradeStatus | None = None       # None: requests seen, nothing committed
    subject: str = ""
    notify_url: str = ""
    gmt_create: datetime | None = None
    gmt_payment: datetime | None = None
    gmt_close: datetime | None = None
    pay_calls: int = 0
    charges: int = 0
    refunds: int = 0
    query_calls: int = 0
    cancel_calls: int = 0
    notifies_sent: int = 0
    notifies_acked: int = 0
    notify_ids: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.status is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "trade_no": self.trade_no,
            "status": self.status.value if self.status else None,
            "total_amount": self.total_amount,
            "pay_calls": self.pay_calls, "charges": self.charges, "refunds": self.refunds,
            "query_calls": self.query_calls, "cancel_calls": self.cancel_calls,
            "notifies_sent": self.notifies_sent, "notifies_acked": self.notifies_acked,
        }


TOTAL_FIELDS = ("pay_calls", "charges", "refunds", "query_calls", "cancel_calls",
                "notifies_sent", "notifies_acked")


class Ledger:
    def __init__(self, trades_max: int = TRADES_MAX) -> None:
        assert trades_max > 0
        self.trades_max = trades_max
        self.trades: dict[str, Trade] = {}
        self._seq = 0
        self.notifies_dropped = 0        # by the drop knob, a full queue or exhausted retries

    def get(self, out_trade_no: str) -> Trade | None:
        return self.trades.get(out_trade_no)

    def ensure(self, out_trade_no: str, total_amount: int) -> Trade:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            if len(self.trades) >= self.trades_max:
                raise LedgerFull(f"ledger holds {self.trades_max} trades")
            trade = self.trades[out_trade_no] = Trade(out_trade_no, total_amount)
        return trade

    def open(self, trade: Trade, now: datetime, status: TradeStatus) -> None:
        """Create the channel-side trade (a trade_no) in `status`."""
        if not trade.trade_no:
            self._seq += 1
            trade.trade_no = f"{now:%Y%m%d}22001{self._seq:015d}"
        trade.gmt_create = trade.gmt_create or now
        trade.status = status

    def pay(self, trade: Trade, now: datetime) -> None:
        self.open(trade, now, TradeStatus.TRADE_SUCCESS)
        trade.gmt_payment = now
        trade.charges += 1

    def close(self, trade: Trade, now: datetime) -> None:
        self.open(trade, now, TradeStatus.TRADE_CLOSED)
        trade.gmt_close = now

    def refund(self, trade: Trade, now: datetime) -> None:
        assert trade.status is TradeStatus.TRADE_SUCCESS, trade.status
        trade.refunds += 1
        self.close(trade, now)

    def reset(self) -> None:
        self.trades.clear()
        self.notifies_dropped = 0

    def snapshot(self) -> dict[str, Any]:
        totals: dict[str, int] = {name: 0 for name in TOTAL_FIELDS}
        trades = {}
        for otn, t in self.trades.items():
            trades[otn] = t.to_json()
            for name in TOTAL_FIELDS:
                totals[name] += getattr(t, name)
        totals["trades"] = len(self.trades)
        totals["double_charged"] = sum(1 for t in self.trades.values() if t.charges > 1)
        totals["charged_amount"] = sum(t.total_amount * t.charges for t in self.trades.values())
        totals["refunded_amount"] = sum(t.total_amount * t.refunds for t in self.trades.values())
        totals["notifies_dropped"] = self.notifies_dropped
        return {"trades": trades, "totals": totals}
