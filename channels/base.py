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

import enum
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Mapping, Protocol

# One refund status for channels and paycell's refund records (re-exported here).
from core.refund import RefundStatus as RefundStatus
from core.states import Fact


class ChannelError(Exception):
    code = "channel_error"


class NotSent(ChannelError):
    code = "channel_not_sent"


class OutcomeUnknown(ChannelError):
    code = "channel_outcome_unknown"


class ProtocolError(OutcomeUnknown):
    code = "channel_protocol_error"


class PaymentType(str, enum.Enum):
    BARCODE = "barcode"    # synchronous deduction with the payer's one-time code (付款码)
    APP = "app"            # prepay data for the channel's app SDK; the payer completes it later
    NATIVE = "native"      # a QR code URL the payer scans; completed later
    CARD = "card"          # off-session charge of a saved card / vaulted payment method


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a channel can take. Amounts in minor units; empty `countries` means any country."""
    currencies: frozenset[str]
    payment_types: frozenset[str]
    countries: frozenset[str] = frozenset()
    amount_min: int = 1
    amount_max: int = 10_000_000_000
    qps: int = 100                      # documented request rate for mutating calls
    refund_window_days: int = 365       # refunds refused this long after payment
    partial_refunds_max: int = 50       # refunds one payment may have

    def accepts(self, amount: int, currency: str, payment_type: str, country: str = "") -> bool:
        return (currency in self.currencies and payment_type in self.payment_types
                and self.amount_min <= amount <= self.amount_max
                and (not country or not self.countries or country in self.countries))


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    order_id: str          # paycell's order id, sent as the channel's merchant trade number
    amount: int            # minor units
    currency: str
    subject: str
    payment_type: str      # a PaymentType value
    auth_code: str = field(default="", repr=False)   # barcode: the payer's one-time code
    notify_url: str = ""
    payer_id: str = ""     # the merchant's user id (customer / payer reference at the channel)
    payment_token: str = field(default="", repr=False)  # card: saved payment method / vault id
    client_ip: str = ""


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
    pay_data: Mapping[str, str] = field(default_factory=dict)  # prepay: what the payer's app needs


@dataclass(frozen=True, slots=True)
class RefundRequest:
    order_id: str              # the payment's merchant trade number at the channel
    refund_id: str             # paycell's refund id, sent as the channel's out_refund_no
    amount: int                # minor units to give back
    total_amount: int          # the payment's amount (several channels require it)
    currency: str
    reason: str = ""
    notify_url: str = ""
    channel_trade_no: str = ""  # the channel's payment id, for channels that refund by it


@dataclass(frozen=True, slots=True)
class RefundResult:
    status: RefundStatus
    refund_id: str
    channel_refund_no: str = ""
    amount: int | None = None
    currency: str = ""
    raw_status: str = ""
    failure_code: str = ""     # FAILED: the channel's reason (amount too large, window over...)
    failure_message: str = ""
    exists: bool = True        # refund_query: False when the channel has no such refund


class NotificationKind(str, enum.Enum):
    PAYMENT = "payment"
    REFUND = "refund"


@dataclass(frozen=True, slots=True)
class Notification:
    order_id: str
    fact: Fact                 # for a refund notification: the payment's fact as far as known
    channel_trade_no: str
    amount: int | None
    currency: str
    notify_id: str
    raw_status: str
    kind: NotificationKind = NotificationKind.PAYMENT
    refund_id: str = ""
    refund_status: RefundStatus | None = None
    refund_amount: int | None = None
    channel: str = ""          # set by the gateway: which channel's endpoint received it


class StatementKind(str, enum.Enum):
    PAYMENT = "payment"
    REFUND = "refund"


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One row of a channel's statement (bill), in paycell's units."""
    kind: StatementKind
    order_id: str              # merchant trade number
    channel_trade_no: str
    amount: int                # minor units, positive for both payments and refunds
    currency: str
    at: datetime               # payment success time / refund time, as the bill states it
    refund_id: str = ""        # refunds: the merchant refund number
    channel_refund_no: str = ""
    fee: int = 0               # the channel's fee, minor units, when the bill states it
    raw_status: str = ""


@dataclass(frozen=True, slots=True)
class Statement:
    channel: str
    day: date
    lines: tuple[StatementLine, ...]
    # The bill's own summary (count of rows, total paid, total refunded): checked against the lines.
    payments_count: int = 0
    payments_total: int = 0
    refunds_total: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    """The HTTP answer a channel expects to a notification, in its own format."""
    status: int
    content_type: str
    body: bytes


class Connector(Protocol):
    """One channel's protocol. Every method maps the channel's answer to paycell's types.

    charge        create the payment and, where the payment type allows, take the money now
    query         the payment's state by merchant trade number (exists=False if unknown)
    cancel        make sure it cannot be paid any more: close an unpaid trade (a fence on the
                  trade number); a trade found paid is reversed where the channel can
                  (action "refund") or reported as PAID (the order then succeeded late)
    refund        give back part or all of a paid payment, idempotent on refund_id
    refund_query  the refund's state by merchant refund number
    parse_notification  verify (the channel's own signature) and read a callback; ProtocolError
                  when it cannot be trusted
    ack           the channel's expected answer to a callback
    statement     download and parse the day's bill
    """
    name: str
    capabilities: Capabilities

    async def charge(self, req: ChargeRequest) -> ChannelResult: ...
    async def query(self, order_id: str, currency: str) -> ChannelResult: ...
    async def cancel(self, order_id: str) -> ChannelResult: ...
    async def refund(self, req: RefundRequest) -> RefundResult: ...
    async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult: ...
    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notification: ...
    def ack(self, accepted: bool) -> Ack: ...
    async def statement(self, day: date) -> Statement: ...
    async def close(self) -> None: ...
