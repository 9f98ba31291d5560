"""Order ids embed region, SET and shard so any gateway can route follow-ups; keys map to shards.

Format: ``P_<region>_<set>_<shard>_<token>``; every part is ``[a-z0-9]``, so the id is also a valid
channel-side trade number (Alipay allows letters, digits and underscores, 64 characters).
"""
from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

_PART_RE = re.compile(r"^[a-z0-9]{1,12}$")
ORDER_ID_RE = re.compile(r"^P_([a-z0-9]{1,12})_([a-z0-9]{1,12})_([0-9]{1,4})_([a-z0-9]{8,24})$")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


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


def make_order_id(region: str, set_name: str, shard: int, now_ms: int,
                  rand: int | None = None) -> str:
    """Time-ordered, 64-bit random suffix; `rand` is injected by tests."""
    r = secrets.randbits(64) if rand is None else rand
    token = _b36(now_ms).rjust(9, "0") + _b36(r).rjust(13, "0")
    return f"P_{region}_{set_name}_{shard}_{token}"


def parse_order_id(order_id: str) -> OrderRef | None:
    m = ORDER_ID_RE.match(order_id) if isinstance(order_id, str) else None
    if m is None:
        return None
    return OrderRef(m.group(1), m.group(2), int(m.group(3)))


def shard_for_key(app_id: str, out_trade_no: str, shard_count: int) -> int:
    """Stable partition of the idempotency key (app_id, out_trade_no) over the shards."""
    assert shard_count >= 1
    return zlib.crc32(f"{app_id}\x00{out_trade_no}".encode()) % shard_count
