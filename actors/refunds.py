"""RefundDesk: the refunds of one shard's orders, on the same ladder as payments.

  create -> checks under the order's lock (SUCCEEDED, the channel's refund window and refund
            count, the amount left) -> durable PENDING refund + the amount reserved on the order
            (one atomic write; the commit script checks the reservation again) -> the channel's
            refund call, waited for up to refund_sync_deadline_ms
     answer in time  -> SUCCEEDED / FAILED (200) or PENDING at the channel (202, then query)
     no answer       -> 202 PENDING; a late answer still counts (rung "sync"); an unknown
                        outcome goes to the refund-query schedule
  query every refund_query_interval_ms until refund_async_window_ms after creation; a channel
  REFUND notification resolves it too; after the window the refund stays PENDING (in the open
  refunds set) for batch reconciliation.

Never two refunds at the channel for one refund: the channel's merchant refund number is
paycell's refund id, fixed when the refund is created, and every call for it reuses it. A query
that finds no such refund at the channel (the first call never arrived, or the shard crashed
between the commit and the call) resends the refund with that same id, at most
refund_resends_max times: channels keep one refund per merchant refund number, so a resend can
only create the refund the first call did not, never a second one. A refund the channel has
answered for (accepted, PENDING) is not resent: some channels (Alipay) show an unfinished
refund as "no such refund" to a query.

Memory follows Redis: a refund record (and its order's refund sums) change in memory only after
their commit. The desk is owned by an OrderShard, whose order cache, order locks and follow-up
schedule it shares.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from typing import Any, Awaitable, Protocol

from actors.deadlines import wait_for_sync
from actors.locks import KeyedLocks
from actors.store import RefundBase, RefundRefused
from channels.base import (Capabilities, ChannelError, Notification, NotSent, RefundRequest,
                           RefundResult)
from core.clock import Clock
from core.errors import (IdempotencyConflict, NotFound, OrderNotRefundable, Overloaded,
                         PaycellError, RefundExceedsPaid, RefundWindowClosed, TooManyRefunds,
                         Unavailable)
from core.ids import make_refund_id
from core.order import Order
from core.refund import CreateRefund, Refund, RefundStatus, reserve, settle
from core.settings import OrderSettings
from core.states import Outcome, OrderStatus, Rung

log = logging.getLogger("paycell.refunds")

QUERY = "refund_query"             # the follow-up kind on the shard's schedule
RECENT_FINAL_MAX = 5_000           # final refunds kept in memory for fast idempotent replays
DAY_S = 86_400
WRITE_TRIES_MAX = 2                # a refused (stale) write is retried once on fresh records


class RefundStorePort(Protocol):
    async def get(self, order_id: str) -> Order | None: ...
    async def get_refund(self, refund_id: str) -> Refund | None: ...
    async def find_refund(self, order_id: str, out_refund_no: str) -> Refund | None: ...
    async def refunds_of(self, order_id: str) -> list[Refund]: ...
    async def open_refund_ids(self) -> list[str]: ...
    async def commit_refund(self, order: Order, refund: Refund, *, base: RefundBase,
                            new: bool = False) -> None: ...


class RefundChannelPort(Protocol):
    async def refund(self, channel: str, req: RefundRequest) -> RefundResult: ...
    async def refund_query(self, channel: str, order_id: str, refund_id: str,
                           currency: str) -> RefundResult: ...
    def capabilities(self, channel: str) -> Capabilities | None: ...


class OrderAccess(Protocol):
    """What the desk uses of its shard: the order cache and the follow-up schedule."""
    async def load_order(self, order_id: str) -> Order | None: ...
    def remember_order(self, order: Order) -> None: ...
    def schedule(self, at: float, key: str, kind: str) -> None: ...
    def spawn(self, coro: Awaitable[Any]) -> None: ...


def refund_reply(refund: Refund) -> dict[str, Any]:
    return {"http": 202 if refund.status is RefundStatus.PENDING else 200,
            "refund": refund.to_api()}


class RefundDesk:
    def __init__(self, s: OrderSettings, shard: int, *, store: RefundStorePort,
                 channels: RefundChannelPort, orders: OrderAccess, locks: KeyedLocks,
                 clock: Clock, channel_slots: asyncio.Semaphore, notify_url: str = "") -> None:
        self._s = s
        self._shard = shard
        self._store = store
        self._channels = channels
        self._orders = orders
        self._locks = locks
        self._clock = clock
        self._slots = channel_slots
        self._notify_url = notify_url
        # Refunds not final yet. None: known open, record not loaded (after a restart).
        self._open: dict[str, Refund | None] = {}
        self._recent: OrderedDict[str, Refund] = OrderedDict()
        self._by_key: dict[tuple[str, str], str] = {}
        self._sync_done: dict[str, asyncio.Event] = {}
        self._resends: dict[str, int] = {}
        self._accepted: set[str] = set()   # open refunds the channel has answered for
        self.counters = {"refunds_created": 0, "refunds_replayed": 0, "refund_conflicts": 0,
                         "refund_queries": 0, "refund_resends": 0, "refund_notifies": 0,
                         "refund_fact_conflicts": 0, "refunds_left_for_reconcile": 0,
                         "unknown_refund_notifies": 0}

    @property
    def open_count(self) -> int:
        return len(self._open)

    def _ctx(self, refund_id: str, channel: str) -> dict[str, Any]:
        return {"order_id": refund_id, "shard": self._shard, "channel": channel}

    # ------------------------------------------------------------------ memory
    def _remember(self, r: Refund) -> None:
        self._by_key[(r.order_id, r.out_refund_no)] = r.refund_id
        if r.status.is_final:
            self._open.pop(r.refund_id, None)
            self._resends.pop(r.refund_id, None)
            self._accepted.discard(r.refund_id)
            self._recent[r.refund_id] = r
            self._recent.move_to_end(r.refund_id)
            while len(self._recent) > RECENT_FINAL_MAX:
                _, old = self._recent.popitem(last=False)
                if self._by_key.get((old.order_id, old.out_refund_no)) == old.refund_id:
                    del self._by_key[(old.order_id, old.out_refund_no)]
        else:
            self._open[r.refund_id] = r

    def _cached(self, refund_id: str) -> Refund | None:
        return self._open.get(refund_id) or self._recent.get(refund_id)

    async def _load(self, refund_id: str) -> Refund | None:
        r = self._cached(refund_id)
        if r is None:
            r = await self._store.get_refund(refund_id)
            if r is not None:
                self._remember(r)
        return r

    async def _existing(self, order_id: str, out_refund_no: str) -> Refund | None:
        rid = self._by_key.get((order_id, out_refund_no))
        r = self._cached(rid) if rid is not None else None
        if r is None:
            r = await self._store.find_refund(order_id, out_refund_no)
            if r is not None:
                self._remember(r)
        return r

    async def _fresh_order(self, order_id: str) -> Order | None:
        """The order as stored (after a write was refused as stale)."""
        order = await self._store.get(order_id)
        if order is not None:
            self._orders.remember_order(order)
        return order

    # ------------------------------------------------------------------ lifecycle and reads
    async def rebuild(self) -> int:
        """Open refunds from Redis, each queried within one interval (the call may or may not
        have reached the channel); records are read when needed."""
        ids = await self._store.open_refund_ids()
        now = self._clock.time()
        spread_s = self._s.refund_query_interval_ms / 1000
        for rid in ids:
            if rid not in self._open:
                self._open[rid] = None
                self._orders.schedule(now + random.random() * spread_s, rid, QUERY)
        return len(ids)

    async def list_refunds(self, app_id: str, order_id: str) -> dict[str, Any] | None:
        order = await self._orders.load_order(order_id)
        if order is None or order.app_id != app_id:
            return None
        refunds = await self._store.refunds_of(order_id)
        return {"order_id": order_id, "amount": order.amount, "currency": order.currency,
                "refunded_amount": order.refunded_amount,
                "refunds": [r.to_api() for r in refunds]}

    # ------------------------------------------------------------------ create
    async def create(self, cmd: CreateRefund) -> Refund:
        """The refund for `cmd` (created, or the same one replayed) as it is once its first
        call answered or the sync deadline passed; PaycellError when refused."""
        refund = await self._create_or_replay(cmd)
        await wait_for_sync(self._sync_done.get(refund.refund_id),
                            cmd.received_at or refund.created_at,
                            self._s.refund_sync_deadline_ms / 1000, self._clock)
        return self._cached(refund.refund_id) or refund

    async def _create_or_replay(self, cmd: CreateRefund) -> Refund:
        order = await self._orders.load_order(cmd.order_id)
        if order is None or order.app_id != cmd.app_id:
            raise NotFound("no such order")
        async with self._locks.hold(cmd.order_id):
            existing = await self._existing(cmd.order_id, cmd.out_refund_no)
            if existing is not None:
                return self._replay(existing, cmd)
            for _ in range(WRITE_TRIES_MAX):
                order = await self._orders.load_order(cmd.order_id)
                assert order is not None
                refunds = await self._store.refunds_of(cmd.order_id)
                self._check_refundable(order, cmd, refunds)
                if len(self._open) >= self._s.open_refunds_max:
                    raise Overloaded("too many open refunds on this shard", retry_after_s=1)
                now = self._clock.time()
                rid = make_refund_id(self._s.region, self._s.set_name, self._shard,
                                     int(now * 1000))
                refund = Refund.new(rid, cmd, order, now)
                reserved = reserve(order, cmd.amount)
                try:
                    await self._store.commit_refund(
                        reserved, refund, new=True,
                        base=RefundBase(order.refund_reserved, order.refunded_amount))
                except RefundRefused as e:
                    if e.reason == "taken":   # an earlier create landed, its reply was lost
                        stored = await self._store.find_refund(cmd.order_id, cmd.out_refund_no)
                        if stored is None:
                            raise Unavailable("refund key in flux; retry",
                                              retry_after_s=1) from None
                        self._remember(stored)
                        return self._replay(stored, cmd)
                    log.warning("order %s: refund write refused (%s); rereading the order",
                                cmd.order_id, e.reason, extra=self._ctx(rid, order.channel))
                    await self._fresh_order(cmd.order_id)
                    continue
                self._orders.remember_order(reserved)
                self._remember(refund)
                self.counters["refunds_created"] += 1
                self._sync_done[rid] = asyncio.Event()
                self._orders.spawn(self._first_call(refund, reserved))
                return refund
            raise Unavailable("the order changed while refunding; retry", retry_after_s=1)

    def _replay(self, existing: Refund, cmd: CreateRefund) -> Refund:
        if existing.fingerprint != cmd.fingerprint():
            self.counters["refund_conflicts"] += 1
            raise IdempotencyConflict(
                f"out_refund_no {cmd.out_refund_no!r} was used for a different refund")
        self.counters["refunds_replayed"] += 1
        return existing

    def _check_refundable(self, order: Order, cmd: CreateRefund, refunds: list[Refund]) -> None:
        if order.status is not OrderStatus.SUCCEEDED:
            raise OrderNotRefundable(f"the order is {order.status.value}; only a SUCCEEDED "
                                     "order can be refunded")
        caps = self._channels.capabilities(order.channel)
        if caps is None:
            raise Unavailable(f"channel {order.channel} is not enabled", retry_after_s=1)
        paid_at = order.paid_at or order.updated_at
        if self._clock.time() > paid_at + caps.refund_window_days * DAY_S:
            raise RefundWindowClosed(f"{order.channel} refunds payments for "
                                     f"{caps.refund_window_days} days after payment")
        live = [r for r in refunds if r.status is not RefundStatus.FAILED]
        per_order_max = self._s.refunds_per_order_max
        if len(live) >= caps.partial_refunds_max or len(refunds) >= per_order_max:
            raise TooManyRefunds(f"{order.channel} allows {caps.partial_refunds_max} refunds per "
                                 f"payment; paycell keeps {per_order_max} per order")
        held = sum(r.amount for r in live)
        if held != order.refund_reserved:   # a bug: the two are written together
            log.error("order %s: refunds hold %d but the order reserves %d", order.order_id,
                      held, order.refund_reserved, extra=self._ctx(order.order_id, order.channel))
        reserved = max(held, order.refund_reserved)
        left = order.amount - reserved
        if cmd.amount > left:
            raise RefundExceedsPaid(f"amount {cmd.amount} exceeds what is left to refund: {left} "
                                    f"of {order.amount} (refunded {order.refunded_amount}, "
                                    f"pending {reserved - order.refunded_amount})")

    # ------------------------------------------------------------------ channel calls
    async def _first_call(self, refund: Refund, order: Order) -> None:
        """The refund's first call; the client's reply waits for its answer up to the sync
        deadline, and a late answer still counts (rung sync)."""
        try:
            await self._call(refund, order, Rung.SYNC, first=True)
        finally:
            ev = self._sync_done.pop(refund.refund_id, None)
            if ev is not None:
                ev.set()

    async def _call(self, refund: Refund, order: Order, rung: Rung, *, first: bool) -> None:
        req = RefundRequest(order_id=order.order_id, refund_id=refund.refund_id,
                            amount=refund.amount, total_amount=order.amount,
                            currency=refund.currency, reason=refund.reason,
                            notify_url=self._notify_url, channel_trade_no=order.channel_trade_no)
        res: RefundResult | ChannelError
        try:
            res = await self._channels.refund(refund.channel, req)
        except ChannelError as e:
            res = e
        rid = refund.refund_id
        try:
            if isinstance(res, NotSent) and first:
                # Certainly never reached the channel (and nothing earlier could have): no
                # money moved, the reservation is given back.
                await self._learn(rid, RefundStatus.FAILED, rung,
                                  failure_code="channel_unavailable",
                                  failure_message=str(res)[:200])
            elif isinstance(res, ChannelError):
                log.info("refund %s outcome unknown: %s", rid, type(res).__name__,
                         extra=self._ctx(rid, refund.channel))
                self._schedule_query(rid, first)
            elif res.status is RefundStatus.PENDING or not self._amount_ok(refund, res):
                self._accepted.add(rid)
                self._schedule_query(rid, first)
            else:
                await self._learn(rid, res.status, rung, result=res)
        except PaycellError:  # the answer could not be made durable: the query ladder retries
            self._schedule_query(rid, first)

    def _schedule_query(self, refund_id: str, first: bool) -> None:
        s = self._s
        delay_ms = s.refund_query_first_delay_ms if first else s.refund_query_interval_ms
        self._orders.schedule(self._clock.time() + delay_ms / 1000, refund_id, QUERY)

    def _amount_ok(self, refund: Refund, res: RefundResult) -> bool:
        if res.status is not RefundStatus.SUCCEEDED or res.amount is None \
                or res.amount == refund.amount:
            return True
        self.counters["refund_fact_conflicts"] += 1
        log.error("refund %s: channel reports %s refunded, not %s; not applied",
                  refund.refund_id, res.amount, refund.amount,
                  extra=self._ctx(refund.refund_id, refund.channel))
        return False

    # ------------------------------------------------------------------ facts
    async def _learn(self, refund_id: str, status: RefundStatus, rung: Rung, *,
                     result: RefundResult | None = None, failure_code: str = "",
                     failure_message: str = "") -> Refund | None:
        """Apply what the channel reports, under the order's lock; the refund and its order's
        refund sums are committed together before memory changes."""
        first = await self._load(refund_id)
        if first is None:
            return None
        async with self._locks.hold(first.order_id):
            for _ in range(WRITE_TRIES_MAX):
                refund = await self._load(refund_id)
                assert refund is not None
                new, decision = refund.learn(
                    status, rung, self._clock.time(),
                    channel_refund_no=result.channel_refund_no if result else "",
                    failure_code=failure_code or (result.failure_code if result else ""),
                    failure_message=failure_message or (result.failure_message if result else ""))
                if decision.outcome is Outcome.CONFLICT:
                    self.counters["refund_fact_conflicts"] += 1
                    log.error("refund %s: %s via %s contradicts %s; reported, not applied",
                              refund_id, status.value, rung.value, refund.status.value,
                              extra=self._ctx(refund_id, refund.channel))
                if new is refund:
                    return refund
                order = await self._orders.load_order(refund.order_id)
                if order is None:
                    log.error("refund %s: its order %s has no record", refund_id,
                              refund.order_id, extra=self._ctx(refund_id, refund.channel))
                    return refund
                settled = settle(order, new, self._clock.time())
                try:
                    await self._store.commit_refund(
                        settled, new, base=RefundBase(order.refund_reserved,
                                                      order.refunded_amount))
                except RefundRefused as e:  # another writer was first: read both again
                    log.warning("refund %s: write refused (%s); rereading", refund_id,
                                e.reason, extra=self._ctx(refund_id, refund.channel))
                    self._open.pop(refund_id, None)
                    self._recent.pop(refund_id, None)
                    fresh = await self._store.get_refund(refund_id)
                    if fresh is not None:
                        self._remember(fresh)
                    await self._fresh_order(refund.order_id)
                    continue
                self._orders.remember_order(settled)
                self._remember(new)
                waiting = self._sync_done.get(refund_id)
                if waiting is not None:  # final by another rung: answer the client now
                    waiting.set()
                return new
        return None

    async def notify(self, note: Notification) -> bool:
        """A verified REFUND notification; True when applied, already known or not ours."""
        self.counters["refund_notifies"] += 1
        refund = await self._load(note.refund_id) if note.refund_id else None
        if refund is None or refund.order_id != note.order_id \
                or (note.channel and note.channel != refund.channel):
            self.counters["unknown_refund_notifies"] += 1
            log.warning("refund notification for %s / %s, which is no refund of paycell's",
                        note.order_id, note.refund_id,
                        extra=self._ctx(note.refund_id, note.channel))
            return True
        if note.refund_status is None:
            return True
        if note.refund_amount is not None and note.refund_amount != refund.amount:
            self.counters["refund_fact_conflicts"] += 1
            log.error("refund %s: notified amount %s differs from %s; rejected",
                      refund.refund_id, note.refund_amount, refund.amount,
                      extra=self._ctx(refund.refund_id, refund.channel))
            return False
        await self._learn(refund.refund_id, note.refund_status, Rung.NOTIFY)
        return True

    # ------------------------------------------------------------------ async rung
    async def follow_up(self, refund_id: str, kind: str) -> None:
        assert kind == QUERY, kind
        if refund_id not in self._open:
            return  # final by now
        if refund_id in self._sync_done:  # the first call is still running: look again later
            self._schedule_query(refund_id, False)
            return
        try:
            refund = self._open[refund_id] or await self._store.get_refund(refund_id)
            if refund is None:
                log.error("refund %s is open but has no record; left for reconciliation",
                          refund_id, extra=self._ctx(refund_id, ""))
                self._open.pop(refund_id, None)
                return
            self._remember(refund)
            if refund.status.is_final:
                return
            async with self._slots:
                await self._query(refund)
        except PaycellError as e:  # Redis down while reading or committing: stays open
            log.warning("refund %s follow-up failed: %s", refund_id, e.code,
                        extra=self._ctx(refund_id, ""))
            self._schedule_query(refund_id, False)

    async def _query(self, refund: Refund) -> None:
        self.counters["refund_queries"] += 1
        rid = refund.refund_id
        try:
            res: RefundResult | None = await self._channels.refund_query(
                refund.channel, refund.order_id, rid, refund.currency)
        except ChannelError:
            res = None
        if res is not None and not res.exists:
            if rid not in self._accepted and await self._resend(refund):
                return
        elif res is not None and res.status.is_final and self._amount_ok(refund, res):
            await self._learn(rid, res.status, Rung.QUERY, result=res)
            return
        self._next_query(refund)

    async def _resend(self, refund: Refund) -> bool:
        """The channel has no such refund: send it again under the same refund id (bounded).
        False when no resend is left."""
        rid = refund.refund_id
        sent = self._resends.get(rid, 0)
        if sent >= self._s.refund_resends_max:
            return False
        order = await self._orders.load_order(refund.order_id)
        if order is None:
            return False
        self._resends[rid] = sent + 1
        self.counters["refund_resends"] += 1
        log.info("refund %s unknown at %s; resending it (same refund id, %d of %d)", rid,
                 refund.channel, sent + 1, self._s.refund_resends_max,
                 extra=self._ctx(rid, refund.channel))
        await self._call(refund, order, Rung.QUERY, first=False)
        return True

    def _next_query(self, refund: Refund) -> None:
        now = self._clock.time()
        if now >= refund.created_at + self._s.refund_async_window_ms / 1000:
            self.counters["refunds_left_for_reconcile"] += 1
            log.warning("refund %s still PENDING after the async window; left for batch "
                        "reconciliation", refund.refund_id,
                        extra=self._ctx(refund.refund_id, refund.channel))
            return
        self._orders.schedule(now + self._s.refund_query_interval_ms / 1000, refund.refund_id,
                              QUERY)
