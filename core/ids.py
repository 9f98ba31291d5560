"""Order ids embed region, SET and shard so any gateway can route follow-ups; keys map to shards.

Format: ``P_<region>_<set>_<shard>_<token>``; every part is ``[a-z0-9]``, so the id is also a valid
channel-side trade number (Alipay allows letters, digits and underscores, 64 characters).
Refund ids have the same form with ``R_`` (``R_<region>_<set>_<shard>_<token>``): the refund's
shard is its order's, and the id is the channel's merchant refund number.
"""
from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

_PART_RE = re.compile(r"^[a-z0-9]{1,12}$")
ORDER_ID_RE = re.compile(r"^P_([a-z0-9]{1,12})_([a-z0-9]{1,12})_([0-9]{1,4})_([a-z0-9]{8,24})$")
REFUND_ID_RE = re.compile(r"^R_([a-z0-9]{1,12})_([a-z0-9]{1,12})_([0-9]{1,4})_([a-z0-9]{8,24})$")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
RANDOM_DIGITS = 10
RANDOM_SPACE = 36 ** RANDOM_DIGITS


def check_part(name: str, value: str) -> str:
    if not _PART_RE.match(value):
        raise ValueError(f"{name} must be 1-12 of [a-z0-9], got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class OrderRef:
    region: str
    set_name: str
    shard: int


def _b36(n: int) -> str:
    out = []
    while True:
        n, r = divmod(n, 36)
        out.append(_B36[r])
        if n == 0:
            return "".join(reversed(out))


def _token(now_ms: int, rand: int | None) -> str:
    r = (secrets.randbits(64) if rand is None else rand) % RANDOM_SPACE
    return _b36(now_ms).rjust(9, "0") + _b36(r).rjust(RANDOM_DIGITS, "0")


def make_order_id(region: str, set_name: str, shard: int, now_ms: int,
                  rand: int | None = None) -> str:
    """Time-ordered: 9 base-36 digits of epoch milliseconds, then 10 random ones (51 bits, per
    shard and millisecond); `rand` is injected by tests. The default SET's ids are 32 characters,
    what WeChat Pay and QQ Wallet take as a merchant trade number."""
    return f"P_{region}_{set_name}_{shard}_{_token(now_ms, rand)}"


def make_refund_id(region: str, set_name: str, shard: int, now_ms: int,
                   rand: int | None = None) -> str:
    """A refund id: as an order id with ``R_``, on its order's shard. The default SET's are 32
    characters, what QQ Wallet takes as a merchant refund number (longer ones are packed by
    to_wire_id, like order ids). Its creation time is part of it (UnionPay's txnTime)."""
    return f"R_{region}_{set_name}_{shard}_{_token(now_ms, rand)}"


def parse_order_id(order_id: str) -> OrderRef | None:
    m = ORDER_ID_RE.match(order_id) if isinstance(order_id, str) else None
    if m is None:
        return None
    return OrderRef(m.group(1), m.group(2), int(m.group(3)))


def parse_refund_id(refund_id: str) -> OrderRef | None:
    """Where a refund id's order lives (region, SET, shard), or None for no refund id of ours."""
    m = REFUND_ID_RE.match(refund_id) if isinstance(refund_id, str) else None
    if m is None:
        return None
    return OrderRef(m.group(1), m.group(2), int(m.group(3)))


def shard_for_key(app_id: str, out_trade_no: str, shard_count: int) -> int:
    """Stable partition of the idempotency key (app_id, out_trade_no) over the shards."""
    assert shard_count >= 1
    return zlib.crc32(f"{app_id}\x00{out_trade_no}".encode()) % shard_count


# ---- merchant trade numbers for channels that allow 32 characters (WeChat Pay, QQ Wallet) ----
# A paycell order id is up to 2 + 12 + 1 + 12 + 1 + 4 + 1 + 22 characters, but several channels
# take a merchant trade number of at most 32. An id that fits is sent as it is; a longer paycell
# id is packed: its part after "P_" read as a base-37 number (with a leading 1 so that leading
# symbols survive) and written in base 62 after a "W". The default id (35 characters) packs to
# 30. A packed number has no "_", a paycell id always has one, so the two never collide.
# Refund ids ("R_...") pack the same way after a "V" (merchant refund numbers).

WIRE_ID_MAX = 32
_WIRE_MARKS = {"P_": ("W", ORDER_ID_RE), "R_": ("V", REFUND_ID_RE)}
_ID_DIGITS = "_0123456789abcdefghijklmnopqrstuvwxyz"
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B62_RE = re.compile(r"^[WV][0-9A-Za-z]{1,40}$")


def to_wire_id(paycell_id: str, max_len: int = WIRE_ID_MAX) -> str:
    """An order or refund id as a merchant trade / refund number of at most `max_len`
    characters (reversible by from_wire_id); ValueError when even the packed form is longer."""
    if len(paycell_id) <= max_len:
        return paycell_id
    entry = _WIRE_MARKS.get(paycell_id[:2])
    if entry is None or not entry[1].match(paycell_id):
        raise ValueError(f"{paycell_id!r} is longer than {max_len} and not a paycell id")
    wire = entry[0] + pack_b62(paycell_id[2:])
    if len(wire) > max_len:
        raise ValueError(f"{paycell_id!r} does not pack into {max_len} characters")
    return wire


def from_wire_id(wire: str) -> str:
    """The order or refund id behind a number made by to_wire_id (any other text as is)."""
    if not _B62_RE.match(wire):
        return wire
    rest = unpack_b62(wire[1:])
    prefix, pattern = (("P_", ORDER_ID_RE) if wire[0] == "W" else ("R_", REFUND_ID_RE))
    paycell_id = prefix + (rest or "")
    return paycell_id if rest is not None and pattern.match(paycell_id) else wire


def pack_b62(text: str) -> str:
    """`text` of [_0-9a-z] as base-62 digits: read as a base-37 number with a leading 1 (so
    leading symbols survive). Reversed by unpack_b62; leading "0" digits change nothing."""
    n = 1
    for ch in text:
        n = n * len(_ID_DIGITS) + _ID_DIGITS.index(ch)
    digits = []
    while n:
        n, r = divmod(n, 62)
        digits.append(_B62[r])
    return "".join(reversed(digits))


def unpack_b62(digits: str) -> str | None:
    """The text pack_b62 made these digits from, or None when they are no such packing."""
    n = 0
    for ch in digits:
        n = n * 62 + _B62.index(ch)
    out = []
    while n > 1:
        n, r = divmod(n, len(_ID_DIGITS))
        out.append(_ID_DIGITS[r])
    return "".join(reversed(out)) if n == 1 else None


def longest_order_id(region: str, set_name: str, shard_count: int) -> str:
    """The longest id this SET can make (for checking channel limits at start)."""
    return f"P_{region}_{set_name}_{shard_count - 1}_" + "z" * (9 + RANDOM_DIGITS)
