"""OrderShard: owns the orders of one partition (one shard of one SET).

It enforces idempotency on (app_id, out_trade_no), applies the order state machine, writes every
state change to Redis before acknowledging it (group commit in `OrderStore`), and drives each
channel call with a deadline:

  create -> durable PENDING (charge_sent) -> charge, wait up to sync_deadline_ms
     answer in time  -> SUCCEEDED / FAILED (200) or still WAITING (202, then query)
     no answer       -> 202 PENDING; the late answer still counts (rung "sync"), and an unknown
                        outcome goes to the query schedule
  query every query_interval_ms until async_window_ms after creation, then cancel (fences the
  trade number at the channel: a late payment is refused or reversed).

An order that names no channel is routed (channels.routing): the shard's router picks the best
eligible channel and keeps the next ones as failover candidates. Failover happens only when the
channel certainly did not charge (not sent, or declined), and the switch is committed before the
next channel sees the charge; an unknown outcome is never failed over, it goes to the query rung.

The charge is sent at most once per order, ever: a restarted shard finds its open orders in Redis
and only queries them. Memory follows Redis: a record changes in memory only after its commit.

Refunds of the shard's orders are the RefundDesk's (actors/refunds.py): it shares the order
cache, the per-order locks and the follow-up schedule, and gets REFUND notifications.
"""
from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import os
import random
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Protocol

import orjson

from actors.board import TaskBoard
from actors.deadlines import wait_for_sync
from actors.locks import KeyedLocks
from actors.merchant_notify import MerchantNotifier
from actors.reconcile_match import (CLOSED_CODE, REVERSED_CODE, RefundSettlement,
                                    Settlement)
from actors.refunds import QUERY as REFUND_QUERY, RefundDesk, RefundStorePort, refund_reply
from actors.store import KeyTaken
from channels.base import (Capabilities, ChargeRequest, ChannelError, ChannelResult, NotSent,
                           Notification, NotificationKind, OutcomeUnknown, RefundRequest,
                           RefundResult, RefundStatus as ChannelRefundStatus)
from core.clock import Clock, SystemClock
from channels.routing import ChannelsBusy, NoChannel as NoChannelFits, Payment
from core.errors import (IdempotencyConflict, NoChannel, Overloaded, PaycellError, RateLimited,
                         Unavailable)
from core.ids import make_order_id
from core.order import CreateOrder, Order
from core.refund import CreateRefund, RefundStatus
from core.settings import Settings
from core.states import Fact, Outcome, Rung

log = logging.getLogger("paycell.shard")

RECENT_FINAL_MAX = 20_000  # final orders kept in memory for fast idempotent replays
REPLY_KEEP_S = 60.0        # a reply nobody collected (its gateway died) is dropped after this


class ChannelPort(Protocol):
    """Channel calls as the shard sees them (actors.local_channels.LocalChannelPort)."""
    async def charge(self, channel: str, req: ChargeRequest,
                     admitted: bool = False) -> ChannelResult: ...
    async def query(self, channel: str, order_id: str, currency: str) -> ChannelResult: ...
    async def cancel(self, channel: str, order_id: str) -> ChannelResult: ...
    def route(self, payment: Payment, exclude: tuple[str, ...] = ()) -> list[str]: ...
    def takes(self, channel: str, payment: Payment) -> bool: ...
    def admit(self, channel: str) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    async def refund(self, channel: str, req: RefundRequest) -> RefundResult: ...
    async def refund_query(self, channel: str, order_id: str, refund_id: str,
                           currency: str) -> RefundResult: ...
    def capabilities(self, channel: str) -> Capabilities | None: ...


class StorePort(RefundStorePort, Protocol):
    async def get(self, order_id: str) -> Order | None: ...
    async def find(self, app_id: str, out_trade_no: str) -> Order | None: ...
    async def open_ids(self) -> list[str]: ...
    async def commit(self, order: Order, *, new: bool = False) -> None: ...


def reply_for(order: Order) -> dict[str, Any]:
    return {"http": 202 if order.status.value == "PENDING" else 200, "order": order.to_api()}


def error_reply(err: PaycellError) -> dict[str, Any]:
    return {"error": err.code, "detail": err.detail, "retry_after_s": err.retry_after_s}


def reply_board(inflight_max: int, owner: str) -> TaskBoard[str, dict[str, Any]]:
    """The board a shard (or a host of shards) keeps the replies of its batches on."""
    def crashed(ticket: str, exc: BaseException) -> dict[str, Any]:
        log.error("%s: submit crashed (ticket %s): %r", owner, ticket, exc)
        return error_reply(PaycellError("internal error"))

    return TaskBoard(
        inflight_max=inflight_max, keep_s=REPLY_KEEP_S,
        refused=lambda _t: error_reply(Overloaded("too many replies waiting", retry_after_s=1)),
        lost=lambda _t: error_reply(Unavailable(
            "the reply was lost with a shard restart; retry with the same out_trade_no",
            retry_after_s=1)),
        crashed=crashed)


class OrderShard:
    def __init__(self, settings: Settings, shard: int, *, store: StorePort,
                 channels: ChannelPort, clock: Clock | None = None, notify_url: str = "",
                 rng: random.Random | None = None,
                 notifier: MerchantNotifier | None = None,
                 replies: TaskBoard[str, dict[str, Any]] | None = None) -> None:
        self._s = settings.orders
        self._shard = shard
        self._store = store
        self._channels = channels
        self._clock = clock or SystemClock()
        # Injected by the simulation (tests/sim) so that a seed replays: the random part of order
        # ids and the restart spread. None: order ids from `secrets`, the spread from `random`.
        self._rng = rng
        self._notify_url = notify_url
        # Merchant events (actors/merchant_notify.py): the store writes them with the final
        # state; this delivers them, from the shard's own loop, once the shard has started.
        self._notifier = notifier
        # Orders not final yet. None: known open, record not loaded (after a restart the shard
        # rebuilds which orders are open and their schedule; each record is read when needed).
        self._open: dict[str, Order | None] = {}
        self._recent: OrderedDict[str, Order] = OrderedDict()
        self._by_key: dict[tuple[str, str], str] = {}
        self._creating: dict[tuple[str, str], asyncio.Future[Order | None]] = {}
        self._sync_done: dict[str, asyncio.Event] = {}
        self._locks = KeyedLocks()     # per order: its facts, failover and refunds in turn
        self._due: list[tuple[float, str, str]] = []   # (unix time, order_id, "query"|"cancel")
        self._cancel_attempts: dict[str, int] = {}
        self._channel_slots = asyncio.Semaphore(self._s.channel_calls_inflight_max)
        self._started: asyncio.Future[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._followups = 0
        self._local_tickets = itertools.count()
        # The board of replies a batch had not ready: the shard's own, or the one its host
        # shares among the shards it runs (actors/host.py), so one long poll serves them all.
        self._replies = replies if replies is not None else reply_board(
            self._s.open_orders_max, f"shard {shard}")
        self._refunds = RefundDesk(self._s, shard, store=store, channels=channels,
                                   orders=_ShardOrders(self), locks=self._locks,
                                   clock=self._clock, channel_slots=self._channel_slots,
                                   notify_url=notify_url)
        self.counters = {"submit_calls": 0, "submitted": 0, "notify_calls": 0, "created": 0, "replayed": 0, "conflicts": 0, "late_sync": 0,
                         "queries": 0, "cancels": 0, "notifies": 0, "fact_conflicts": 0,
                         "failovers": 0, "stale_channel_notifies": 0, "paid_after_cancel": 0}

    # ------------------------------------------------------------------ lifecycle
    async def ensure_started(self) -> None:
        """Rebuild open orders from Redis once, before serving anything (retried if Redis is down)."""
        if self._started is None or (self._started.done() and self._started.exception()):
            self._started = asyncio.get_running_loop().create_future()
            try:
                await self._rebuild()
            except BaseException as e:
                self._started.set_exception(e)
                self._started.exception()  # mark retrieved; the next call retries
                raise
            self._started.set_result(None)
            self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())
            if self._notifier is not None:
                self._notifier.start()   # takes the events a previous incarnation left due
        await asyncio.shield(self._started)

    async def _rebuild(self) -> None:
        """Before serving: which orders are open, and a query for each (the charge may or may
        not have reached the channel), spread over one interval so that 100,000 open orders are
        not one burst at the channel. Records are read from Redis when a query or a request needs
        them; idempotency never depends on memory (a key not held here is looked up in Redis)."""
        ids = await self._store.open_ids()
        now = self._clock.time()
        spread_s = self._s.query_interval_ms / 1000
        for oid in ids:
            if oid not in self._open:
                self._open[oid] = None
                self._schedule(now + (self._rng or random).random() * spread_s, oid, "query")
        refunds = await self._refunds.rebuild()
        if ids or refunds:
            log.info("shard %d rebuilt %d open orders and %d open refunds", self._shard,
                     len(ids), refunds, extra={"shard": self._shard})

    node_id = ""              # set by the Ray wrapper (actors.factory): the node it runs on

    async def ping(self) -> dict[str, Any]:
        await self.ensure_started()
        return {"shard": self._shard, "pid": os.getpid(), "open": len(self._open),
                "node": self.node_id}

    async def stats(self) -> dict[str, Any]:
        await self.ensure_started()
        return {"shard": self._shard, "pid": os.getpid(), "open": len(self._open),
                "recent": len(self._recent), "due": len(self._due), **self.counters,
                "open_refunds": self._refunds.open_count, **self._refunds.counters,
                **(await self._notifier.stats() if self._notifier is not None else {}),
                "channels": self._channels.stats()}

    def _ctx(self, order_id: str, channel: str) -> dict[str, Any]:
        return {"order_id": order_id, "shard": self._shard, "channel": channel}

    # ------------------------------------------------------------------ memory
    def _remember(self, o: Order) -> None:
        self._by_key[(o.app_id, o.out_trade_no)] = o.order_id
        if o.status.is_final:
            self._open.pop(o.order_id, None)
            self._recent[o.order_id] = o
            self._recent.move_to_end(o.order_id)
            while len(self._recent) > RECENT_FINAL_MAX:
                old_id, old = self._recent.popitem(last=False)
                if self._by_key.get((old.app_id, old.out_trade_no)) == old_id:
                    del self._by_key[(old.app_id, old.out_trade_no)]
        else:
            self._open[o.order_id] = o

    def _adopt(self, o: Order) -> None:
        """Remember a record read from Redis. An open order this life of the shard has not put
        on its schedule is one whose create landed although the commit's reply was lost (the
        client was told 503 and retried): its charge was never sent from here, and it must not
        be now, so the query ladder resolves it like any unknown outcome (query, cancel at
        the window's end). Without this it stayed PENDING until the next restart."""
        unscheduled = not o.status.is_final and o.order_id not in self._open
        self._remember(o)
        if unscheduled:
            self._schedule_query(o.order_id)

    def _forget(self, order_id: str) -> None:
        """After a commit that failed: it may have landed all the same (its reply was lost),
        so the record in memory may be behind Redis. Drop it: the next use reads Redis. (An
        order kept as a stale PENDING was cancelled after Redis had it FAILED or SUCCEEDED, and
        read back as PENDING by clients while Redis had it final.)"""
        if order_id in self._open:
            self._open[order_id] = None
        self._recent.pop(order_id, None)

    def _cached(self, order_id: str) -> Order | None:
        return self._open.get(order_id) or self._recent.get(order_id)

    async def _load(self, order_id: str) -> Order | None:
        o = self._cached(order_id)
        if o is None:
            o = await self._store.get(order_id)
            if o is not None:
                self._adopt(o)
        return o

    # ------------------------------------------------------------------ reads
    async def get(self, app_id: str, order_id: str) -> dict[str, Any] | None:
        await self.ensure_started()
        o = await self._load(order_id)
        return o.to_api() if o is not None and o.app_id == app_id else None

    async def find(self, app_id: str, out_trade_no: str) -> dict[str, Any] | None:
        await self.ensure_started()
        o = await self._existing(app_id, out_trade_no)
        return o.to_api() if o is not None else None

    async def _existing(self, app_id: str, out_trade_no: str) -> Order | None:
        key = (app_id, out_trade_no)
        oid = self._by_key.get(key)
        if oid is not None:
            o = self._cached(oid)
            if o is not None:
                return o
        pending = self._creating.get(key)
        if pending is not None:
            created = await asyncio.shield(pending)
            if created is not None:
                return created
            # That create failed (None), which says nothing about the key: an earlier create
            # may have landed. Redis answers (or fails: 503, never a false "no such order").
        o = await self._store.find(app_id, out_trade_no)
        if o is not None:
            self._adopt(o)
        return o

    # ------------------------------------------------------------------ refunds (actors/refunds.py)
    async def create_refund(self, cmd: CreateRefund) -> dict[str, Any]:
        """Create (or replay) a refund of one of this shard's orders: {"http", "refund"} or an
        error reply."""
        try:
            await self.ensure_started()
            return refund_reply(await self._refunds.create(cmd))
        except PaycellError as e:
            return error_reply(e)

    async def list_refunds(self, app_id: str, order_id: str) -> dict[str, Any] | None:
        """The order's refunds (None: no such order for this app)."""
        await self.ensure_started()
        return await self._refunds.list_refunds(app_id, order_id)

    # ------------------------------------------------------------------ create and pay
    async def submit(self, cmds: list[CreateOrder], tickets: list[str] | None = None,
                     wait_s: float | None = None) -> list[dict[str, Any] | None]:
        """A batch of create-and-pay commands; one reply per command, in order.

        With `wait_s`, replies not ready by then are None and wait on the board under the
        caller's `tickets`, for `await_replies` (so one slow order does not hold the batch).
        """
        self.counters["submit_calls"] += 1
        self.counters["submitted"] += len(cmds)
        try:
            await self.ensure_started()
        except PaycellError as e:
            return [error_reply(e)] * len(cmds)
        if tickets is None:
            tickets = [f"local-{self._shard}-{next(self._local_tickets)}" for _ in cmds]
        assert len(tickets) == len(cmds)
        return await self._replies.run_many(
            [(t, functools.partial(self._submit_one, c)) for t, c in zip(tickets, cmds)], wait_s)

    async def await_replies(self, tickets: list[str], wait_s: float) -> dict[str, dict[str, Any]]:
        """Long poll for replies that were not ready when their batch answered."""
        return await self._replies.collect(tickets, wait_s)

    async def _submit_one(self, cmd: CreateOrder) -> dict[str, Any]:
        try:
            order = await self._create_or_replay(cmd)
            await wait_for_sync(self._sync_done.get(order.order_id),
                                cmd.received_at or order.created_at,
                                self._s.sync_deadline_ms / 1000, self._clock)
            current = self._cached(order.order_id) or order
            return reply_for(current)
        except PaycellError as e:
            return error_reply(e)

    async def _create_or_replay(self, cmd: CreateOrder) -> Order:
        key = (cmd.app_id, cmd.out_trade_no)
        while True:
            oid = self._by_key.get(key)
            existing = self._cached(oid) if oid is not None else None
            if existing is None:
                creating = self._creating.get(key)
                if creating is None:
                    # _create registers the key before its first await: no second create races in.
                    return await self._create(cmd)
                existing = await asyncio.shield(creating)
                if existing is None:
                    continue  # that create failed (e.g. Redis down): try again ourselves
            self._check_same(existing, cmd)
            self.counters["replayed"] += 1
            return existing

    def _check_same(self, existing: Order, cmd: CreateOrder) -> None:
        if existing.fingerprint != cmd.fingerprint():
            self.counters["conflicts"] += 1
            raise IdempotencyConflict(
                f"out_trade_no {cmd.out_trade_no!r} was used for a different request")

    async def _create(self, cmd: CreateOrder) -> Order:
        """A key this shard does not hold in memory is created without asking Redis first (no
        round trip on the hot path): the commit script refuses a key that names an order
        already (an earlier incarnation's, or one whose reply was lost), and then that order is
        read and replayed. A create refused before its commit (limits, routing) first checks
        that the key is not an order already: a retry is answered as ever, whatever the limits."""
        key = (cmd.app_id, cmd.out_trade_no)
        fut: asyncio.Future[Order | None] = asyncio.get_running_loop().create_future()
        self._creating[key] = fut
        try:
            try:
                if len(self._open) >= self._s.open_orders_max:
                    raise Overloaded("too many open orders on this shard", retry_after_s=1)
                candidates = self._candidates(cmd)
            except PaycellError:
                stored = await self._store.find(*key)
                if stored is None:
                    raise
                return self._replayed(stored, cmd, fut)
            now = self._clock.time()
            oid = make_order_id(self._s.region, self._s.set_name, self._shard, int(now * 1000),
                                None if self._rng is None else self._rng.getrandbits(64))
            order = replace(Order.new(oid, cmd, now), charge_sent=True,
                            channel=candidates[0], routed=not cmd.channel)
            try:
                await self._store.commit(order, new=True)  # durable before the channel sees it
            except KeyTaken:  # the key names an order already (see above): replay it
                stored = await self._store.find(*key)
                if stored is None:
                    raise Unavailable("idempotency key in flux; retry", retry_after_s=1) from None
                return self._replayed(stored, cmd, fut)
            self._remember(order)
            self.counters["created"] += 1
            self._sync_done[oid] = asyncio.Event()
            fut.set_result(order)
            self._spawn(self._charge(order, cmd, candidates[1:]))
            return order
        except BaseException:
            if not fut.done():
                fut.set_result(None)
            raise
        finally:
            self._creating.pop(key, None)

    def _replayed(self, stored: Order, cmd: CreateOrder,
                  fut: asyncio.Future[Order | None]) -> Order:
        """A create whose key names a stored order: that order is the answer (or a conflict)."""
        self._adopt(stored)
        fut.set_result(stored)
        self._check_same(stored, cmd)
        self.counters["replayed"] += 1
        return stored

    def _candidates(self, cmd: CreateOrder) -> list[str]:
        """[the channel to charge, then failover candidates]: the named one, or routed. The
        first one's rate-limit token is taken here, so an order the channel cannot take now is
        refused before anything is stored."""
        payment = Payment(cmd.amount, cmd.currency, cmd.payment_type, cmd.country, cmd.auth_code)
        if cmd.channel:
            if not self._channels.takes(cmd.channel, payment):
                raise NoChannel(f"{cmd.channel} does not take {cmd.currency} {cmd.payment_type} "
                                f"payments of {cmd.amount} (see its capabilities)")
            if not self._channels.admit(cmd.channel):
                raise RateLimited(f"{cmd.channel} is at its rate limit or its circuit is open",
                                  retry_after_s=1)
            return [cmd.channel]
        try:
            candidates = self._channels.route(payment)
        except NoChannelFits as e:
            raise NoChannel(str(e)) from None
        except ChannelsBusy as e:
            raise Unavailable(str(e), retry_after_s=1) from None
        for i, channel in enumerate(candidates):
            if self._channels.admit(channel):
                return candidates[i:]
        raise Unavailable("every channel for this payment is at its rate limit", retry_after_s=1)

    async def _charge(self, order: Order, cmd: CreateOrder, failover: list[str]) -> None:
        """The one charge of this order (per channel, and on another channel only after the
        first certainly did not charge); its answer is applied as soon as it comes (a slow
        charge holds up no other order), and the client's reply waits for it up to the sync
        deadline."""
        req = ChargeRequest(order_id=order.order_id, amount=order.amount, currency=order.currency,
                            subject=order.subject, payment_type=order.payment_type,
                            auth_code=cmd.auth_code, notify_url=self._notify_url,
                            payer_id=order.user_id, payment_token=cmd.payment_token)
        res: ChannelResult | ChannelError
        admitted = True           # the first channel's token was taken at create (_candidates)
        while True:
            try:
                res = await self._channels.charge(order.channel, req, admitted)
            except ChannelError as e:
                res = e
            admitted = False
            certainly_not_charged = isinstance(res, NotSent) or (
                isinstance(res, ChannelResult) and res.fact is Fact.DECLINED)
            if not (order.routed and certainly_not_charged and failover):
                break
            switched = await self._fail_over(order, failover.pop(0), res)
            if switched is None:
                break
            order = switched
        await self._on_charge_answer(order, res)

    async def _fail_over(self, order: Order, channel: str,
                         res: ChannelResult | ChannelError) -> Order | None:
        """Commit the move to `channel` (so a restart queries the right channel) before it is
        charged; None when the order is no longer there to move."""
        oid = order.order_id
        async with self._locks.hold(oid):
            try:
                current = await self._load(oid)   # (reads Redis when memory let it go)
                if current is None or current.status.is_final \
                        or current.channel != order.channel:
                    return None
                tried = ",".join(filter(None, [current.tried_channels, current.channel]))
                moved = replace(current, channel=channel, tried_channels=tried,
                                updated_at=self._clock.time())
                await self._store.commit(moved)
            except PaycellError:
                return None           # not durable: answer with the first channel's result
            self._remember(moved)
        self.counters["failovers"] += 1
        reason = type(res).__name__ if isinstance(res, ChannelError) else res.failure_code
        log.info("order %s: %s certainly did not charge (%s); failing over to %s", oid,
                 order.channel, reason, channel, extra=self._ctx(oid, channel))
        return moved

    async def _on_charge_answer(self, order: Order, res: ChannelResult | ChannelError) -> None:
        oid = order.order_id
        try:
            if isinstance(res, NotSent):
                await self._learn(oid, Fact.DECLINED, Rung.SYNC, failure_code="channel_unavailable",
                                  failure_message=str(res)[:200])
            elif isinstance(res, ChannelError):
                log.info("order %s charge outcome unknown: %s", oid, type(res).__name__,
                         extra=self._ctx(oid, order.channel))
                self._schedule_query(oid)
            else:
                if self._clock.time() > order.created_at + self._s.sync_deadline_ms / 1000:
                    self.counters["late_sync"] += 1
                await self._learn(oid, res.fact, Rung.SYNC, result=res)
                if res.fact is Fact.WAITING:
                    self._schedule_query(oid)
        except PaycellError:  # the answer could not be made durable: the query ladder retries
            self._schedule_query(oid)
        finally:
            ev = self._sync_done.pop(oid, None)
            if ev is not None:
                ev.set()

    def _schedule_query(self, order_id: str) -> None:
        self._schedule(self._clock.time() + self._s.query_first_delay_ms / 1000, order_id, "query")

    # ------------------------------------------------------------------ facts
    async def _learn(self, order_id: str, fact: Fact, rung: Rung, *, channel: str = "",
                     result: ChannelResult | None = None, failure_code: str = "",
                     failure_message: str = "") -> Order | None:
        """Apply one channel fact under the order's lock; commit before memory changes. With
        `channel` (a notification's), a fact from a channel the order has left is not applied."""
        async with self._locks.hold(order_id):
            return await self._learn_locked(order_id, fact, rung, channel=channel, result=result,
                                            failure_code=failure_code,
                                            failure_message=failure_message)

    async def _learn_locked(self, order_id: str, fact: Fact, rung: Rung, *, channel: str = "",
                            result: ChannelResult | None = None, failure_code: str = "",
                            failure_message: str = "", cancel_answer: bool = False
                            ) -> Order | None:
        """_learn, for a caller that holds the order's lock; ``cancel_answer``: the fact is
        what the order's cancel answered (it decides)."""
        order = await self._load(order_id)
        if order is None:
            return None
        if channel and channel != order.channel:
            # Checked here, under the lock, on the current record: a failover committed while
            # this fact waited for the lock makes it a fact about a channel the order left.
            self._stale_channel_fact(order, channel, fact)
            return order
        if fact is Fact.PAID and order.cancel_sent and not order.status.is_final \
                and not cancel_answer:
            # Once a cancel may have reached the channel, only its answer decides: this payment
            # is one the cancel reverses (or reversed already, the notification being late).
            self.counters["paid_after_cancel"] += 1
            log.warning("order %s: paid via %s after its cancel was sent; the cancel decides",
                        order_id, rung.value, extra=self._ctx(order_id, order.channel))
            return order
        if result is not None and fact is Fact.PAID and result.amount is not None \
                and result.amount != order.amount:
            log.error("order %s: channel amount %s != %s; not applied",
                      order_id, result.amount, order.amount,
                      extra=self._ctx(order_id, order.channel))
            self.counters["fact_conflicts"] += 1
            return order
        new, decision = order.learn(
            fact, rung, self._clock.time(),
            channel_trade_no=result.channel_trade_no if result else "",
            pay_data=orjson.dumps(dict(result.pay_data)).decode()
            if result is not None and result.pay_data else "",
            failure_code=failure_code or (result.failure_code if result else ""),
            failure_message=failure_message or (result.failure_message if result else ""))
        if decision.outcome is Outcome.CONFLICT:
            self.counters["fact_conflicts"] += 1
            log.error("order %s: %s via %s contradicts %s; reported, not applied",
                      order_id, fact.value, rung.value, order.status.value,
                      extra=self._ctx(order_id, order.channel))
        if new is not order:
            try:
                await self._store.commit(new)
            except PaycellError:
                self._forget(order_id)
                raise
            self._remember(new)
        if new.status.is_final:
            waiting = self._sync_done.get(order_id)
            if waiting is not None:  # final by another rung: answer the client now
                waiting.set()
        return new

    async def notify_many(self, notes: list[Notification]) -> list[bool]:
        """A batch of verified channel notifications (one actor call from the gateway)."""
        await self.ensure_started()
        self.counters["notify_calls"] += 1
        results = await asyncio.gather(*(self.notify(n) for n in notes), return_exceptions=True)
        for note, r in zip(notes, results):
            if isinstance(r, BaseException) and not isinstance(r, PaycellError):
                log.error("notification for %s crashed: %r", note.order_id, r,
                          extra=self._ctx(note.order_id, ""))
        return [r is True for r in results]  # False: the channel will deliver it again

    def _stale_channel_fact(self, order: Order, channel: str, fact: Fact) -> None:
        """A fact from a channel this order failed over from: that channel declined or never got
        the charge. A payment it reports now is money to give back (reconciliation)."""
        self.counters["stale_channel_notifies"] += 1
        level = logging.ERROR if fact is Fact.PAID else logging.INFO
        log.log(level, "order %s: %s from %s, which it left for %s", order.order_id,
                fact.value, channel, order.channel, extra=self._ctx(order.order_id, channel))

    async def notify(self, note: Notification) -> bool:
        """A verified channel notification; True when it was applied or already known."""
        await self.ensure_started()
        self.counters["notifies"] += 1
        if note.kind is NotificationKind.REFUND:
            return await self._refunds.notify(note)
        order = await self._load(note.order_id)
        if order is None:
            return False
        if note.channel and note.channel != order.channel:
            self._stale_channel_fact(order, note.channel, note.fact)
            return True
        if note.amount is not None and (note.amount != order.amount
                                        or (note.currency and note.currency != order.currency)):
            log.error("order %s: notified amount %s %s differs; rejected",
                      note.order_id, note.amount, note.currency,
                      extra=self._ctx(note.order_id, order.channel))
            self.counters["fact_conflicts"] += 1
            return False
        result = ChannelResult(fact=note.fact, channel_trade_no=note.channel_trade_no,
                               amount=note.amount, raw_status=note.raw_status)
        await self._learn(note.order_id, note.fact, Rung.NOTIFY, channel=note.channel,
                          result=result)
        return True

    # ------------------------------------------------------------------ async rung: the schedule
    def _schedule(self, at: float, order_id: str, kind: str) -> None:
        heapq.heappush(self._due, (at, order_id, kind))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tick_loop(self) -> None:
        """Start due follow-ups, never more at once than there are channel-call slots."""
        while True:
            await asyncio.sleep(self._s.scheduler_tick_ms / 1000)
            now = self._clock.time()
            while (self._due and self._due[0][0] <= now
                   and self._followups < self._s.channel_calls_inflight_max):
                _, order_id, kind = heapq.heappop(self._due)
                self._followups += 1
                self._spawn(self._follow_up(order_id, kind))

    async def _follow_up(self, order_id: str, kind: str) -> None:
        try:
            if kind == REFUND_QUERY:
                await self._refunds.follow_up(order_id, kind)  # a refund id
            else:
                await self._follow_up_once(order_id, kind)
        finally:
            self._followups -= 1

    async def _follow_up_once(self, order_id: str, kind: str) -> None:
        if order_id not in self._open:
            return  # final by now
        if order_id in self._sync_done:  # the sync call is still running: look again later
            self._schedule(self._clock.time() + self._s.query_interval_ms / 1000, order_id, kind)
            return
        try:
            # Read, not cached: an open order nobody asks about costs only its id in memory.
            order = self._open[order_id] or await self._store.get(order_id)
            if order is None:
                log.error("order %s is open but has no record; left for reconciliation",
                          order_id, extra=self._ctx(order_id, ""))
                self._open.pop(order_id, None)
                return
            if order.status.is_final:
                self._remember(order)  # memory was behind Redis (a commit's reply was lost)
                return
            async with self._channel_slots:
                if kind == "query" and not order.cancel_sent:
                    await self._query(order)
                else:
                    await self._cancel(order)
        except PaycellError as e:  # Redis down while reading or committing: stays open
            log.warning("order %s follow-up failed: %s", order_id, e.code,
                        extra=self._ctx(order_id, ""))
            self._schedule(self._clock.time() + self._s.query_interval_ms / 1000, order_id, kind)

    async def _query(self, order: Order) -> None:
        self.counters["queries"] += 1
        try:
            result = await self._channels.query(order.channel, order.order_id, order.currency)
        except (OutcomeUnknown, NotSent, PaycellError):
            result = None
        if result is not None and result.fact is not Fact.WAITING:
            await self._learn(order.order_id, result.fact, Rung.QUERY, result=result)
            return
        now = self._clock.time()
        if now >= order.created_at + self._s.async_window_ms / 1000:
            self._schedule(now, order.order_id, "cancel")
        else:
            self._schedule(now + self._s.query_interval_ms / 1000, order.order_id, "query")

    async def _cancel(self, order: Order) -> None:
        oid = order.order_id
        # Under the order's lock, from the check to the cancel's answer: a cancel reverses a
        # payment the channel took, so it is sent only for an order still PENDING, and a fact
        # that arrives meanwhile (the payer's late payment, notified) waits for the cancel's
        # answer. Without the lock a PAID notification could make the order SUCCEEDED while
        # the cancel, already sent, gave the money back. `cancel_sent`, committed first, keeps
        # that rule when the cancel's answer cannot be committed or the shard restarts.
        async with self._locks.hold(oid):
            current = await self._load(oid)
            if current is None or current.status.is_final:
                self._cancel_attempts.pop(oid, None)
                return
            if not current.cancel_sent:   # durable before the channel sees it, as charge_sent
                fenced = replace(current, cancel_sent=True, updated_at=self._clock.time())
                try:
                    await self._store.commit(fenced)
                except PaycellError:
                    self._forget(oid)
                    raise                 # the follow-up tries again later
                self._remember(fenced)
                current = fenced
            self.counters["cancels"] += 1
            try:
                result = await self._channels.cancel(current.channel, oid)
            except (OutcomeUnknown, NotSent, PaycellError):
                result = None
            if result is not None and result.fact is Fact.CLOSED:
                code = "reversed_after_window" if result.action == "refund" else "closed_unpaid"
                await self._learn_locked(oid, Fact.CLOSED, Rung.QUERY, result=result,
                                         failure_code=code)
                self._cancel_attempts.pop(oid, None)
                return
            if result is not None and result.fact is Fact.PAID:
                # A payment this channel cannot reverse (Stripe's succeeded PaymentIntent): the
                # cancel's answer decides, as in reconcile_close; nothing is left to retry.
                await self._learn_locked(oid, Fact.PAID, Rung.QUERY, result=result,
                                         cancel_answer=True)
                self._cancel_attempts.pop(oid, None)
                return
        attempts = self._cancel_attempts.get(order.order_id, 0) + 1
        self._cancel_attempts[order.order_id] = attempts
        if attempts < self._s.cancel_attempts_max:
            self._schedule(self._clock.time() + self._s.cancel_retry_interval_ms / 1000,
                           order.order_id, "cancel")
        else:
            log.error("order %s: cancel failed %d times; left PENDING for reconciliation",
                      order.order_id, attempts, extra=self._ctx(order.order_id, order.channel))

    # ------------------------------------------------------------------ batch rung: reconciliation
    async def settle(self, facts: list[Settlement]) -> list[dict[str, Any]]:
        """Payments the reconciler found on a channel's statement, applied with rung
        `reconcile` through the same state machine: each under its order's lock, committed
        before memory changes. One answer per fact: `outcome` moved, noop (already so, e.g.
        resolved meanwhile by another rung), conflict (contradicts a final status or the
        order's amount: reported, not applied), unknown (no such order) or unavailable (not
        durable; the next run tries again)."""
        await self.ensure_started()
        return list(await asyncio.gather(*(self._settle_one(f) for f in facts)))

    async def reconcile_close(self, order_ids: list[str]) -> list[dict[str, Any]]:
        """Close orders the reconciler found unpaid past their window: under the order's lock,
        the channel's cancel (the fence on the trade number), then what it says, with rung
        `reconcile` (CLOSED, reversed_after_window when a payment was given back, or PAID
        when the channel reports it paid). The lock is held across the cancel, so neither the
        close notification the channel sends at once nor a late payment notification can
        resolve the order in between. Answers as `settle`, plus `left_open` (the cancel did not
        answer CLOSED or PAID: the next run tries again); an order already final is a noop."""
        await self.ensure_started()
        return list(await asyncio.gather(*(self._reconcile_close_one(oid) for oid in order_ids)))

    async def _settle_one(self, f: Settlement) -> dict[str, Any]:
        oid = f.order_id
        try:
            async with self._locks.hold(oid):
                return await self._settle_locked(f)
        except PaycellError as e:
            return {"order_id": oid, "outcome": "unavailable", "detail": e.code}

    async def _reconcile_close_one(self, oid: str) -> dict[str, Any]:
        try:
            async with self._locks.hold(oid):
                order = await self._load(oid)
                if order is None:
                    return {"order_id": oid, "outcome": "unknown"}
                if order.status.is_final:
                    return self._settled_answer(order, Outcome.NOOP)
                if not order.cancel_sent:    # durable before the channel sees it (as _cancel)
                    fenced = replace(order, cancel_sent=True, updated_at=self._clock.time())
                    await self._commit_or_forget(fenced)
                try:
                    async with self._channel_slots:
                        res = await self._channels.cancel(order.channel, oid)
                except (ChannelError, ValueError) as e:
                    return {"order_id": oid, "outcome": "left_open",
                            "detail": f"cancel: {type(e).__name__}"}
                if res.fact is Fact.CLOSED:
                    code = REVERSED_CODE if res.action == "refund" else CLOSED_CODE
                    fact = Settlement(oid, Fact.CLOSED, res.channel_trade_no, failure_code=code)
                elif res.fact is Fact.PAID:
                    fact = Settlement(oid, Fact.PAID, res.channel_trade_no, res.amount,
                                      res.currency)
                else:
                    return {"order_id": oid, "outcome": "left_open",
                            "detail": f"cancel answered {res.fact.value} {res.raw_status}"}
                answer = await self._settle_locked(fact, cancel_answer=True)
                return {**answer, "fact": fact.fact.value, "action": res.action}
        except PaycellError as e:
            return {"order_id": oid, "outcome": "unavailable", "detail": e.code}

    async def _settle_locked(self, f: Settlement, *, cancel_answer: bool = False
                             ) -> dict[str, Any]:
        """Apply one reconciled fact; the caller holds the order's lock. Once a cancel may
        have reached the channel only the cancel's answer decides (as in _learn_locked): a
        payment on the statement of such an order is answered `cancel_sent`, for the
        reconciler to close it (reconcile_close), whose answer is then applied."""
        oid = f.order_id
        order = await self._load(oid)
        if order is None:
            return {"order_id": oid, "outcome": "unknown"}
        if f.fact is Fact.PAID and order.cancel_sent and not order.status.is_final \
                and not cancel_answer:
            return {"order_id": oid, "outcome": "cancel_sent", "status": order.status.value}
        if f.fact is Fact.PAID and ((f.amount is not None and f.amount != order.amount)
                                    or (f.currency and f.currency != order.currency)):
            self.counters["fact_conflicts"] += 1
            log.error("order %s: reconciled payment %s %s differs; not applied", oid,
                      f.amount, f.currency, extra=self._ctx(oid, order.channel))
            return self._settled_answer(order, Outcome.CONFLICT)
        new, decision = order.learn(f.fact, Rung.RECONCILE, self._clock.time(),
                                    channel_trade_no=f.channel_trade_no,
                                    failure_code=f.failure_code)
        if decision.outcome is Outcome.CONFLICT:
            self.counters["fact_conflicts"] += 1
            log.error("order %s: reconciled %s contradicts %s; reported, not applied",
                      oid, f.fact.value, order.status.value, extra=self._ctx(oid, order.channel))
        if new is not order:
            await self._commit_or_forget(new)
        if new.status.is_final:
            self._cancel_attempts.pop(oid, None)
            waiting = self._sync_done.get(oid)
            if waiting is not None:
                waiting.set()
        if decision.outcome is Outcome.MOVED:
            self.counters["reconciled"] = self.counters.get("reconciled", 0) + 1
        return self._settled_answer(new, decision.outcome)

    async def settle_refunds(self, facts: list[RefundSettlement]) -> list[dict[str, Any]]:
        """Final statuses the reconciler established for paycell's refunds (a refund line on
        the statement, or the channel's refund query after the refund's window), applied by
        the refund desk with rung `reconcile`: under the order's lock, the refund and its
        order's refund sums committed together. Answers as `settle`."""
        await self.ensure_started()
        return list(await asyncio.gather(*(self._settle_refund(f) for f in facts)))

    async def _settle_refund(self, f: RefundSettlement) -> dict[str, Any]:
        answer: dict[str, Any] = {"refund_id": f.refund_id, "order_id": f.order_id}
        try:
            before = await self._refunds._load(f.refund_id)
            result = RefundResult(ChannelRefundStatus(f.status.value), f.refund_id,
                                  f.channel_refund_no, failure_code=f.failure_code)
            after = await self._refunds._learn(f.refund_id, f.status, Rung.RECONCILE,
                                               result=result)
        except PaycellError as e:
            return {**answer, "outcome": "unavailable", "detail": e.code}
        if before is None or after is None or after.order_id != f.order_id:
            return {**answer, "outcome": "unknown"}
        if after.status is not f.status:
            outcome = Outcome.CONFLICT
        elif before.status is RefundStatus.PENDING and after.resolved_by is Rung.RECONCILE:
            outcome = Outcome.MOVED
        else:
            outcome = Outcome.NOOP
        return {**answer, "outcome": outcome.value, "status": after.status.value,
                "resolved_by": after.resolved_by.value if after.resolved_by else None}

    async def _commit_or_forget(self, order: Order) -> None:
        """Commit, then remember; a failed commit may have landed, so memory lets go."""
        try:
            await self._store.commit(order)
        except PaycellError:
            self._forget(order.order_id)
            raise
        self._remember(order)

    @staticmethod
    def _settled_answer(order: Order, outcome: Outcome) -> dict[str, Any]:
        return {"order_id": order.order_id, "outcome": outcome.value,
                "status": order.status.value,
                "resolved_by": order.resolved_by.value if order.resolved_by else None}


class _ShardOrders:
    """What the refund desk uses of its shard (actors.refunds.OrderAccess)."""

    def __init__(self, shard: OrderShard) -> None:
        self._shard = shard

    async def load_order(self, order_id: str) -> Order | None:
        return await self._shard._load(order_id)

    def remember_order(self, order: Order) -> None:
        self._shard._remember(order)

    def schedule(self, at: float, key: str, kind: str) -> None:
        self._shard._schedule(at, key, kind)

    def spawn(self, coro: Any) -> None:
        self._shard._spawn(coro)
