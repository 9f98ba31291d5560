"""Merchant events given up on, for operators: list them and put one back on the schedule.

An event is dead when its retry schedule is spent, refused when paycell would not call its
target (actors/merchant_notify.py); both are kept in their shard's dead set (at most
merchant_notify.dead_kept_max per shard) with their record (merchant_notify.event_keep_s). A
replay puts the event back on its shard's due set with its attempts from 0, so the shard that
owns it delivers it again through the whole retry schedule, under the same event id (merchants
deduplicate by it). It is idempotent: an event already on the schedule (due, or waiting for a
retry) or delivered is left alone, and the answer says which.

Reads and replays go straight to Redis, where the shards keep their events (actors/store.py
owns the keys): they work while a shard is restarting, and the shard's notifier takes a replayed
event at its next look (merchant_notify.poll_ms).
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis

from actors.store import OrderStore
from core.clock import rfc3339
from core.errors import NotFound, ValidationError
from core.events import parse_event_id
from core.ids import parse_order_id, parse_refund_id
from core.settings import Settings

LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 1000
EVENT_ID_MAX_CHARS = 100
GIVEN_UP = ("dead", "refused")


def parse_limit(text: str | None) -> int:
    """?limit=: 1..LIST_LIMIT_MAX (default LIST_LIMIT_DEFAULT); ValidationError otherwise."""
    if text is None:
        return LIST_LIMIT_DEFAULT
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= LIST_LIMIT_MAX:
        raise ValidationError(f"limit must be an integer from 1 to {LIST_LIMIT_MAX}",
                              field="limit")
    return int(text)


class DeadEvents:
    """The dead and refused merchant events of one SET's shards."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        o = settings.orders
        self._region, self._set = o.region, o.set_name
        self._stores = [OrderStore(redis, o.set_name, shard,
                                   idempotency_ttl_s=o.idempotency_ttl_s,
                                   commit_batch_max=o.commit_batch_max,
                                   event_keep_s=settings.merchant_notify.event_keep_s)
                        for shard in range(o.shard_count)]

    async def list_dead(self, limit: int) -> dict[str, Any]:
        """The `limit` most recently given up, newest first, and how many each shard keeps.
        An id whose record has expired is not listed (there is nothing left to replay)."""
        per_shard = await asyncio.gather(*(self._shard_dead(i, limit)
                                           for i in range(len(self._stores))))
        counts = await asyncio.gather(*(s.event_counts() for s in self._stores))
        events = sorted((e for shard in per_shard for e in shard),
                        key=lambda e: (e["dead_at_unix"], e["event_id"]), reverse=True)[:limit]
        for e in events:
            e["dead_at"] = rfc3339(e.pop("dead_at_unix"))
        return {"events": events, "count": len(events),
                "kept": sum(dead for _, dead in counts)}

    async def _shard_dead(self, shard: int, limit: int) -> list[dict[str, Any]]:
        store = self._stores[shard]
        ids = await store.dead_events(limit)
        records = await store.get_events([eid for eid, _ in ids])
        out = []
        for (eid, at), rec in zip(ids, records):
            if rec is None:
                continue
            out.append({"event_id": eid, "shard": shard, "state": rec.get("state", ""),
                        "type": _event_type(rec.get("body", "")),
                        "app_id": rec.get("app_id", ""), "url": rec.get("url", ""),
                        "attempts": int(rec.get("attempts", "0")),
                        "last_error": rec.get("last_error", ""),
                        "replays": int(rec.get("replays", "0")), "dead_at_unix": at})
        return out

    async def replay(self, event_id: str, now: float) -> dict[str, Any]:
        """Put the event back on its shard's schedule, or say why nothing changed.
        ValidationError for an id paycell does not make, NotFound for none of this SET's."""
        store = self._store_of(event_id)
        found = await store.replay_event(event_id, now)
        if not found:
            raise NotFound("no such event (or its record expired: merchant_notify.event_keep_s)")
        if found in GIVEN_UP:
            return {"event_id": event_id, "replayed": True, "state": "pending",
                    "previous_state": found,
                    "detail": "back on the schedule: due now, then the whole retry schedule"}
        detail = {"pending": "already on the schedule (due, or waiting for its next retry): "
                             "nothing changed",
                  "delivered": "already delivered: nothing changed"}.get(
                      found, f"state {found}: nothing changed")
        return {"event_id": event_id, "replayed": False, "state": found, "detail": detail}

    def _store_of(self, event_id: str) -> OrderStore:
        parsed = parse_event_id(event_id) if len(event_id) <= EVENT_ID_MAX_CHARS else None
        if parsed is None:
            raise ValidationError("event_id must be an id paycell sends in X-Paycell-Event-Id: "
                                  "ev_<order or refund id>_<succeeded|failed|closed>",
                                  field="event_id")
        object_id = parsed[0]
        ref = parse_order_id(object_id) or parse_refund_id(object_id)
        if ref is None:
            raise ValidationError("event_id must name an order (P_...) or refund (R_...) id",
                                  field="event_id")
        if (ref.region, ref.set_name) != (self._region, self._set) \
                or ref.shard >= len(self._stores):
            raise NotFound("no such event in this SET")
        return self._stores[ref.shard]


def _event_type(body: str) -> str:
    try:
        kind = orjson.loads(body).get("type", "")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return kind if isinstance(kind, str) else ""
