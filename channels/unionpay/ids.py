"""How paycell ids become UnionPay order ids, and which txnTime each one was sent with.

UnionPay's orderId is 8-40 letters and digits, "不能含‘-’或‘_’", and the merchant reconciliation
file (ZM) holds 32 of them. paycell's order ids contain `_` (``P_local_s0_3_<token>``), so:

* an id that is already 8-32 lowercase letters and digits is sent unchanged;
* any other id of ``[a-z0-9_]`` is packed: read as a base-37 number (with a leading 1 so leading
  symbols survive) and written in base 62, prefixed with "X" (a plain id is lowercase, so it never
  starts with an upper-case letter); a paycell order id ``P_<rest>`` packs its rest, prefixed with
  "W", and a paycell refund id ``R_<rest>`` (core.ids.make_refund_id) the same after a "V".
  A default paycell id (35 characters) becomes 30. Ids that do not fit are refused with
  ValueError before anything is sent.

UnionPay identifies a trade by merId + orderId + txnTime ("三要素唯一确定一笔交易"), and a query
must repeat the trade's txnTime. paycell ids carry their creation time (core.ids: the token's
first 9 base-36 digits are the epoch milliseconds); that instant, in Beijing time, is the txnTime
of the trade, so a query can rebuild it from the id alone, after any restart.
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone

from core.ids import ORDER_ID_RE, REFUND_ID_RE, pack_b62, unpack_b62

BEIJING = timezone(timedelta(hours=8))
TXN_TIME_FORMAT = "%Y%m%d%H%M%S"
WIRE_ID_MIN, WIRE_ID_MAX = 8, 32
PACKED_PREFIX = "X"
PAYCELL_PREFIX, PAYCELL_MARK = "P_", "W"
REFUND_PREFIX, REFUND_MARK = "R_", "V"
CANCEL_PREFIX = "Y"

_PLAIN_RE = re.compile(r"^[0-9a-z]{8,32}$")
_PACKABLE_RE = re.compile(r"^[0-9a-z_]{1,64}$")
_WIRE_RE = re.compile(r"^[0-9A-Za-z]{8,40}$")
_PAYCELL_TOKEN_LENS = (19, 22)   # core.ids now; before 2026-11-25
_PAYCELL_TIME_DIGITS = 9


def to_wire_id(paycell_id: str) -> str:
    """paycell's id as UnionPay's orderId (reversible); ValueError if it cannot be carried."""
    if _PLAIN_RE.match(paycell_id):
        return paycell_id
    mark, rest = PACKED_PREFIX, paycell_id
    if paycell_id.startswith(PAYCELL_PREFIX):
        mark, rest = PAYCELL_MARK, paycell_id[len(PAYCELL_PREFIX):]
    elif paycell_id.startswith(REFUND_PREFIX):
        mark, rest = REFUND_MARK, paycell_id[len(REFUND_PREFIX):]
    if not _PACKABLE_RE.match(rest):
        raise ValueError("unionpay: ids must be [a-z0-9_] (or P_ / R_ and those) to be an "
                         "orderId")
    wire = mark + pack_b62(rest).rjust(WIRE_ID_MIN - 1, "0")
    if len(wire) > WIRE_ID_MAX:
        raise ValueError(f"unionpay: id too long to pack into {WIRE_ID_MAX} characters")
    return wire


def from_wire_id(wire: str) -> str:
    """The paycell id behind an orderId; ValueError for an orderId paycell did not make."""
    if not _WIRE_RE.match(wire):
        raise ValueError("not a UnionPay orderId")
    if not wire.startswith((PACKED_PREFIX, PAYCELL_MARK, REFUND_MARK)):
        return wire
    rest = unpack_b62(wire[1:])
    if rest is None:
        raise ValueError("not a packed paycell id")
    prefixes = {PAYCELL_MARK: PAYCELL_PREFIX, REFUND_MARK: REFUND_PREFIX}
    return prefixes.get(wire[0], "") + rest


def cancel_wire_id(payment_wire_id: str) -> str:
    """The orderId of the 消费撤销 of a payment: its own number, the same on every retry."""
    digest = hashlib.sha256(f"cancel:{payment_wire_id}".encode()).hexdigest()
    return CANCEL_PREFIX + digest[:WIRE_ID_MAX - 1]


def embedded_time(paycell_id: str) -> datetime | None:
    """The creation instant a paycell order or refund id carries (core.ids.make_order_id,
    make_refund_id), or None."""
    m = ORDER_ID_RE.match(paycell_id) or REFUND_ID_RE.match(paycell_id)
    if m is None or len(m.group(4)) not in _PAYCELL_TOKEN_LENS:
        return None
    ms = int(m.group(4)[:_PAYCELL_TIME_DIGITS], 36)
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def txn_time(at: datetime) -> str:
    """An aware instant as UnionPay's txnTime, yyyyMMddHHmmss in Beijing time."""
    assert at.tzinfo is not None, "txnTime needs an aware datetime"
    return at.astimezone(BEIJING).strftime(TXN_TIME_FORMAT)


def parse_txn_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, TXN_TIME_FORMAT).replace(tzinfo=BEIJING)
    except ValueError:
        return None
