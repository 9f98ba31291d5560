"""The one interface every channel connector implements, and what its errors say about the money.

Errors are about the money, not the transport:
  * NotSent         the request certainly did not reach the channel: nothing was charged.
  * OutcomeUnknown  it may have reached the channel (timeout, reset, 5xx, "unknown error" codes):
                    resolve only by query or notification, never by retrying the charge.
  * ProtocolError   the channel answered but the answer cannot be trusted (bad signature,
                    unparseable); for money this is also "outcome unknown".
A business decline is not an exception: it is a ChannelResult with Fact.DECLINED.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from core.states import Fact


class ChannelError(Exception):
    code = "channel_error"


class NotSent(ChannelError):
    code = "channel_not_sent"


class OutcomeUnknown(ChannelError):
    code = "channel_outcome_unknown"


class ProtocolError(OutcomeUnknown):
    code = "channel_protocol_error"


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    order_id: str          # paycell's order id, sent as the channel's merchant trade number
    amount: int            # minor units
    currency: str
    subject: str
    payment_type: str      # "barcode" | "app" | ...
    auth_code: str = field(default="", repr=False)
    notify_url: str = ""


@dataclass(frozen=True, slots=True)
class ChannelResult:
    fact: Fact
    channel_trade_no: str = ""
    amount: int | None = None        # minor units the channel reports, when it reports one
    currency: str = ""
    raw_status: str = ""             # the channel's own status word (TRADE_SUCCESS, 40004/ACQ...)
    failure_code: str = ""
    failure_message: str = ""
    action: str = ""                 # cancel: "close" | "refund"
    exists: bool = True              # query: False when the channel has no such trade


@dataclass(frozen=True, slots=True)
class Notification:
    order_id: str
    fact: Fact
    channel_trade_no: str
    amount: int | None
    currency: str
    notify_id: str
    raw_status: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The HTTP answer a channel expects to a notification, in its own format."""
    status: int
    content_type: str
    body: bytes


class Connector(Protocol):
    name: str
    currencies: frozenset[str]
    payment_types: frozenset[str]

    async def charge(self, req: ChargeRequest) -> ChannelResult: ...
    async def query(self, order_id: str, currency: str) -> ChannelResult: ...
    async def cancel(self, order_id: str) -> ChannelResult: ...
    def parse_notification(self, body: bytes, content_type: str) -> Notification: ...
    def ack(self, accepted: bool) -> Ack: ...
