"""What this gateway knows of orders that are final: enough to recognise a channel notification
that only repeats a final fact, and acknowledge it without an actor call.

A final status never changes (core.states), so "paid, same amount, same currency, same channel
and channel trade number" about an order this gateway has seen SUCCEEDED is a duplicate the shard
would ignore. Refund notifications always go to the shard. Anything else (a contradiction, an order not in the cache) goes to the shard as usual.
The cache is bounded (LRU); a miss only costs the actor call it saves on a hit.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from channels.base import Notification, NotificationKind
from core.states import Fact

_FACT_OF_STATUS = {"SUCCEEDED": Fact.PAID, "CLOSED": Fact.CLOSED}


class FinalOrders:
    def __init__(self, max_entries: int) -> None:
        assert max_entries >= 0
        self._max = max_entries
        self._orders: OrderedDict[str, tuple[Fact, int, str, str, str]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._orders)

    def remember(self, order: dict[str, Any]) -> None:
        """Record an order served to a client, if it is final with a channel-side fact."""
        fact = _FACT_OF_STATUS.get(order["status"])
        if fact is None or self._max == 0:
            return
        self._orders[order["order_id"]] = (fact, order["amount"], order["currency"],
                                           order.get("channel_trade_no") or "",
                                           order.get("channel") or "")
        self._orders.move_to_end(order["order_id"])
        while len(self._orders) > self._max:
            self._orders.popitem(last=False)

    def repeats_known_final(self, note: Notification) -> bool:
        known = self._orders.get(note.order_id)
        if known is None:
            return False
        fact, amount, currency, trade_no, channel = known
        same = (note.kind is NotificationKind.PAYMENT and note.fact is fact
                and note.amount == amount and (not note.channel or note.channel == channel)
                and (not note.currency or note.currency == currency)
                and (not trade_no or note.channel_trade_no == trade_no))
        self.hits += same
        return same
