"""Events paycell sends to a merchant's `notify_url` when an order or a refund becomes final.

An event is `{"event_id", "type", "created_at", "data"}`, `data` being the order or refund as
the API shows it at the moment it became final. The event id is a function of the object and
its final status only (`ev_<id>_<status>`), so a retried write, a restarted shard or a repeated
final fact can only ever name the same event, and a merchant deduplicates by it.

Signature: `X-Paycell-Signature` = lowercase hex HMAC-SHA256(app secret,
"<X-Paycell-Timestamp>.<raw body>"), the timestamp in Unix seconds; the merchant checks it, and
that the timestamp is recent, with `gateway.client.verify_event`.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import orjson

from core.clock import rfc3339
from core.order import Order
from core.refund import Refund

HEADER_EVENT_ID = "X-Paycell-Event-Id"
HEADER_TIMESTAMP = "X-Paycell-Timestamp"
HEADER_SIGNATURE = "X-Paycell-Signature"
ORDER_TYPES = {"SUCCEEDED": "order.succeeded", "FAILED": "order.failed",
               "CLOSED": "order.closed"}
REFUND_TYPES = {"SUCCEEDED": "refund.succeeded", "FAILED": "refund.failed"}


def event_id(object_id: str, status: str) -> str:
    """Deterministic: one final status of one order or refund is one event."""
    return f"ev_{object_id}_{status.lower()}"


_EVENT_ID_RE = re.compile(r"^ev_([PR]_[a-z0-9_]{1,60})_(succeeded|failed|closed)$")


def parse_event_id(eid: str) -> tuple[str, str] | None:
    """(order or refund id, final status as in the id) of an event id paycell makes, else None
    (the object id is only checked for its shape here: core.ids parses it)."""
    m = _EVENT_ID_RE.match(eid)
    return (m.group(1), m.group(2)) if m else None


def order_event(order: Order) -> tuple[str, bytes]:
    """(event id, body) for a final order."""
    kind = ORDER_TYPES[order.status.value]
    return _event(event_id(order.order_id, order.status.value), kind, order.updated_at,
                  order.to_api())


def refund_event(refund: Refund) -> tuple[str, bytes]:
    """(event id, body) for a final refund."""
    kind = REFUND_TYPES[refund.status.value]
    return _event(event_id(refund.refund_id, refund.status.value), kind, refund.updated_at,
                  refund.to_api())


def _event(eid: str, kind: str, at: float, data: dict[str, Any]) -> tuple[str, bytes]:
    return eid, orjson.dumps({"event_id": eid, "type": kind, "created_at": rfc3339(at),
                              "data": data})


def sign_event(secret: str, timestamp: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256(secret, "<timestamp>.<body>")."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                    hashlib.sha256).hexdigest()


def event_headers(secret: str, eid: str, timestamp: int, body: bytes) -> dict[str, str]:
    ts = str(timestamp)
    return {"Content-Type": "application/json", HEADER_EVENT_ID: eid, HEADER_TIMESTAMP: ts,
            HEADER_SIGNATURE: sign_event(secret, ts, body)}
