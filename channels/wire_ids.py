"""Merchant trade numbers for channels that take at most 32 characters (WeChat Pay, QQ Wallet).

WireIdConnector wraps such a channel's connector: paycell order and refund ids go out through
core.ids.to_wire_id (as they are when they fit, packed when longer) and come back, in
notifications and statements, through core.ids.from_wire_id. The factory checks at start that the
longest id this SET can make fits, so no call can fail on it later.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Mapping

from channels.base import (Ack, ChannelResult, ChargeRequest, Connector, Notification,
                           RefundRequest, RefundResult, Statement)
from core.errors import ConfigError
from core.ids import from_wire_id, longest_order_id, to_wire_id
from core.settings import Settings


def check_fits(name: str, settings: Settings, max_len: int) -> None:
    o = settings.orders
    try:
        to_wire_id(longest_order_id(o.region, o.set_name, o.shard_count), max_len)
    except ValueError:
        raise ConfigError(f"{name} takes merchant trade numbers of at most {max_len} characters: "
                          "shorten orders.region / orders.set_name") from None


class WireIdConnector:
    def __init__(self, inner: Connector, max_len: int) -> None:
        self._inner, self._max = inner, max_len
        self.name = inner.name
        self.capabilities = inner.capabilities

    @property
    def inner(self) -> Connector:
        return self._inner

    def _out(self, order_id: str) -> str:
        return to_wire_id(order_id, self._max)

    async def charge(self, req: ChargeRequest) -> ChannelResult:
        return await self._inner.charge(replace(req, order_id=self._out(req.order_id)))

    async def query(self, order_id: str, currency: str) -> ChannelResult:
        return await self._inner.query(self._out(order_id), currency)

    async def cancel(self, order_id: str) -> ChannelResult:
        return await self._inner.cancel(self._out(order_id))

    async def refund(self, req: RefundRequest) -> RefundResult:
        res = await self._inner.refund(replace(req, order_id=self._out(req.order_id),
                                               refund_id=self._out(req.refund_id)))
        return replace(res, refund_id=req.refund_id)

    async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
        res = await self._inner.refund_query(self._out(order_id), self._out(refund_id), currency)
        return replace(res, refund_id=refund_id)

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notification:
        note = self._inner.parse_notification(body, headers)
        return replace(note, order_id=from_wire_id(note.order_id),
                       refund_id=from_wire_id(note.refund_id))

    def ack(self, accepted: bool) -> Ack:
        return self._inner.ack(accepted)

    async def statement(self, day: date) -> Statement:
        st = await self._inner.statement(day)
        return replace(st, lines=tuple(replace(line, order_id=from_wire_id(line.order_id),
                                               refund_id=from_wire_id(line.refund_id))
                                       for line in st.lines))

    async def close(self) -> None:
        await self._inner.close()
