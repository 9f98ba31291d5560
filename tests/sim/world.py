"""One seed's world: the real OrderShard (restarted at random points), the real OrderStore on a
simulated Redis, a simulated channel ledger, the gateway's real batcher, and clients; all on one
virtual-time event loop, every choice from a `random.Random` derived from the seed.

Phases (TigerBeetle's VOPR shape):
  safety    `swarm.safety_s` virtual seconds with the seed's faults on: Redis and channel faults,
            lost/duplicated/reordered notifications, shard crashes; checks run as things happen
            (a final record overwritten, a zombie incarnation acting, a reply naming another
            order than an earlier one for the same key, a final status seen going back).
  liveness  faults off (no more crashes; a pending restart still happens); clients keep retrying
            until answered; the run must converge within `swarm.liveness_max_s`: every client
            answered, every stored order final (or handed to reconciliation by the shard after
            `cancel_attempts_max` failed cancels), nothing in flight at Redis or the channels.
Then the final read (through the shard, and the store itself) and the oracles (tests/sim/oracles).

A crash is a Ray actor restart: the shard object and every task it started are dropped (their
coroutines never run again), commands already sent to Redis or a channel still land, and a new
OrderShard (new OrderStore, new channel port and router) is built on the same Redis after a
restart delay and pinged, as the gateway's keepalive does, so it rebuilds from Redis.
"""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import itertools
import logging
import random
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Coroutine, cast

from actors.shard import OrderShard, error_reply
from actors.store import OrderStore
from channels.base import Notification
from core.errors import PaycellError, Unavailable
from core.order import CreateOrder
from core.settings import Settings, load_settings
from gateway.batcher import ShardBatcher
from tests.sim.channel import SimChannelPort, SimChannels
from tests.sim.loop import (INCARNATION, Deadlock, SimClock, VirtualTimeLoop,
                            run_in_incarnation)
from tests.sim.redis_sim import SimRedis
from tests.sim.swarm import CHANNELS, OPT_IN, Swarm, draw

APPS = ("demo-app", "other-app")
RETRYABLE = frozenset({"unavailable", "overloaded", "rate_limited"})
REPLY_POLL_S = 1.0         # as actors.client.REPLY_POLL_S (not imported: it imports Ray)
KEEPALIVE_S = 1.0          # as gateway.app.SHARD_KEEPALIVE_S
CONVERGE_CHECK_S = 0.25
RAY_HOP_S = (0.0002, 0.002)


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    at: float                  # virtual seconds since the start


@dataclass
class KeySpec:
    app_id: str
    out_trade_no: str
    body: CreateOrder          # what the client means to buy
    other: CreateOrder | None  # a different body sent with the same key (must be refused)
    start_s: float
    twin: bool                 # first send doubled, concurrently
    resend: bool               # sent again, same body, after its answer
    read: bool                 # read back after its answer

    @property
    def key(self) -> tuple[str, str]:
        return (self.app_id, self.out_trade_no)


@dataclass(frozen=True)
class Obs:
    """One answer a client got."""
    sent: float
    at: float
    key: tuple[str, str]
    kind: str                  # "create" | "read"
    amount: int                # the body's amount (creates)
    order: dict[str, Any] | None
    error: str


@dataclass
class Incarnation:
    id: int
    shard: OrderShard
    store: OrderStore
    port: SimChannelPort


@dataclass
class Result:
    seed: int
    violations: list[Violation]
    stats: dict[str, Any]
    faults: Counter[str]
    trace_hash: str
    swarm: Swarm = field(repr=False)

    @property
    def ok(self) -> bool:
        return not self.violations


class World:
    def __init__(self, seed: int, *, bugs: frozenset[str] = frozenset(),
                 with_faults: frozenset[str] = frozenset(),
                 without: frozenset[str] = frozenset()) -> None:
        self.seed = seed
        self.bugs = bugs        # bugs injected into the simulated parts (checker self-tests)
        # Rates of opt-in kinds not asked for, and of `without`, are 0 after the draw: the rest
        # of the seed is the same.
        off: dict[str, Any] = {k: 0.0 for k in (OPT_IN - with_faults) | without}
        self.swarm = replace(draw(random.Random(f"swarm-{seed}")), **off)
        self.rng = random.Random(f"world-{seed}")
        sw = self.swarm
        self.settings: Settings = load_settings(env={}, overrides={
            "orders": sw.orders, "routing": sw.routing,
            "gateway": {"shard_call_timeout_ms": 3000, "shard_reply_wait_ms": 50,
                        "batch_max_orders": 8}})
        self.loop = VirtualTimeLoop()
        self.loop.set_exception_handler(self._on_loop_error)
        self.clock = SimClock(self.loop)
        self.redis = SimRedis(self, random.Random(f"redis-{seed}"), fence="no_fence" not in bugs,
                              amnesia="amnesia" in bugs,
                              final_guard="no_final_guard" not in bugs,
                              one_way_guard="no_one_way_guard" not in bugs)
        self.channels = SimChannels(self, random.Random(f"channels-{seed}"),
                                    double_charge="double_charge" in bugs)
        self.faults_on = sw.faulty
        self.live: Incarnation | None = None
        self._incarnations = itertools.count(1)
        self.crashes = 0
        self.faults: Counter[str] = Counter()
        self.violations: list[Violation] = []
        self.observations: list[Obs] = []
        self.specs = self._workload()
        self.waiting: dict[int, str] = {}          # requests not answered yet
        self.clients: dict[int, str] = {}          # clients not done yet
        self._client_ids = itertools.count()
        self.acked: dict[tuple[str, str], str] = {}        # key -> first order id answered
        self._final_seen: dict[str, tuple[str, float]] = {}  # order id -> (final status, when)
        self.final_reads: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.converged_at: float | None = None
        self.loop_errors: list[str] = []
        self._trace: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        g = self.settings.gateway
        self.batcher: ShardBatcher[CreateOrder, dict[str, Any]] = ShardBatcher(
            lambda _lane, tickets, _shards, cmds: self.call("submit", cmds, tickets,
                                                            g.shard_reply_wait_ms / 1000),
            1, lambda _shard: 0, batch_max=g.batch_max_orders, linger_us=g.batch_linger_us,
            inflight_max=g.shard_calls_inflight_max, queue_max=g.shard_queue_max_orders,
            collect=lambda _s, tickets: self.call("await_replies", tickets, REPLY_POLL_S))
        self.notify_batcher: ShardBatcher[Notification, bool] = ShardBatcher(
            lambda _lane, _tickets, _shards, notes: self.call("notify_many", notes),
            1, lambda _shard: 0, batch_max=g.batch_max_orders, linger_us=g.batch_linger_us,
            inflight_max=g.shard_calls_inflight_max, queue_max=g.shard_queue_max_orders)

    # ------------------------------------------------------------------ workload
    def _workload(self) -> list[KeySpec]:
        sw, rng = self.swarm, self.rng
        specs = []
        for i in range(sw.keys):
            app = APPS[1] if rng.random() < sw.p_second_app else APPS[0]
            # The second app reuses the first app's trade numbers: another key, another order.
            out_trade_no = f"K{i:04d}" if app == APPS[0] else f"K{rng.randrange(sw.keys):04d}"
            routed = rng.random() < sw.p_routed
            ptype = rng.choice(("app", "native", "card")) if routed else \
                rng.choice(("barcode", "app", "native", "card"))
            body = CreateOrder(
                app_id=app, out_trade_no=out_trade_no, user_id=f"u{rng.randrange(1000)}",
                amount=rng.randint(1, 100_000), currency="CNY", subject="gems",
                channel="" if routed else rng.choice(CHANNELS), payment_type=ptype,
                auth_code="28763443825664394" if ptype == "barcode" else "",
                payment_token="pm_sim" if ptype == "card" else "")
            other = replace(body, amount=body.amount + 1) if rng.random() < sw.p_conflict else None
            specs.append(KeySpec(app, out_trade_no, body, other, rng.uniform(0.0, sw.load_s),
                                 twin=rng.random() < sw.p_twin, resend=rng.random() < sw.p_resend,
                                 read=rng.random() < sw.p_read))
        seen: set[tuple[str, str]] = set()
        unique = []
        for s in specs:              # one spec per key (a drawn duplicate key is dropped)
            if s.key not in seen:
                seen.add(s.key)
                unique.append(s)
        return unique

    # ------------------------------------------------------------------ bookkeeping
    def fault(self, kind: str) -> None:
        self.faults[kind] += 1
        self._trace.append(f"{self.loop.time():.6f} fault {kind}")

    def note(self, text: str) -> None:
        """One line of the run's trace (printed by `python -m tests.sim --seed N --trace`)."""
        self._trace.append(f"{self.loop.time():.6f} {text}")

    def trace_lines(self) -> list[str]:
        """The run's events, virtual seconds from the start first."""
        start = self.loop.start
        return [f"{float(t) - start:10.6f} {rest}" for t, rest in
                (line.split(" ", 1) for line in self._trace)]

    def violation(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, detail, round(self.clock.elapsed(), 6)))
        self._trace.append(f"{self.loop.time():.6f} violation {kind} {detail}")

    def incarnation_id(self) -> int:
        return INCARNATION.get()

    def check_caller_alive(self, what: str) -> None:
        inc = INCARNATION.get()
        if inc and (self.live is None or inc != self.live.id):
            self.violation("zombie", f"dead incarnation {inc} made a {what}")

    def in_redis_outage(self) -> bool:
        t = self.clock.elapsed()
        return any(start <= t < start + length for start, length in self.swarm.redis_outages)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task of the world (clients, channels, gateway), never of a shard incarnation, even
        when started from a callback a shard's call scheduled."""
        task = self.loop.create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.loop_errors.append(f"{context.get('message')}: {exc!r} "
                                f"({context.get('future') or context.get('handle')!r:.300})")

    # ------------------------------------------------------------------ the shard's lives
    def _start_incarnation(self) -> None:
        inc_id = next(self._incarnations)
        s = self.settings
        store = OrderStore(cast(Any, self.redis), s.orders.set_name, 0,
                           idempotency_ttl_s=s.orders.idempotency_ttl_s,
                           commit_batch_max=s.orders.commit_batch_max)
        port = SimChannelPort(self.channels, s, self.clock,
                              random.Random(f"router-{self.seed}-{inc_id}"), self.swarm.qps,
                              self.swarm.fallback_order)
        shard = OrderShard(s, 0, store=store, channels=port, clock=self.clock,
                           rng=random.Random(f"shard-{self.seed}-{inc_id}"))
        self.live = Incarnation(inc_id, shard, store, port)
        self._trace.append(f"{self.loop.time():.6f} start {inc_id}")
        self.spawn(self._ping())

    def crash(self) -> None:
        inc = self.live
        if inc is None:
            return                  # already down, restart pending
        self.live = None
        self.crashes += 1
        killed = self.loop.kill_incarnation(inc.id)
        self._trace.append(f"{self.loop.time():.6f} crash {inc.id} ({killed} tasks)")
        self.loop.call_later(self.rng.uniform(*self.swarm.restart_delay_s),
                             self._start_incarnation)

    async def call(self, method: str, *args: Any) -> Any:
        """An actor call as actors.client.ShardClient makes it: errors of the actor (dead,
        restarting, too slow) are Unavailable; the shard's work goes on if the caller gives up."""
        await asyncio.sleep(self.rng.uniform(*RAY_HOP_S))
        inc = self.live
        if inc is None:
            raise Unavailable("shard 0 unavailable (RayActorError)", retry_after_s=1)
        fn: Callable[..., Coroutine[Any, Any, Any]] = getattr(inc.shard, method)
        task = run_in_incarnation(inc.id, fn(*args))
        done, _ = await asyncio.wait({task},
                                     timeout=self.settings.gateway.shard_call_timeout_ms / 1000)
        if not done:
            raise Unavailable("shard 0 did not answer in time", retry_after_s=1)
        if task.cancelled():
            raise Unavailable("shard 0 unavailable (actor died)", retry_after_s=1)
        exc = task.exception()
        if exc is not None:
            if not isinstance(exc, PaycellError):
                self.violation("shard_exception", f"{method}: {exc!r}")
            raise Unavailable(f"shard 0 unavailable ({type(exc).__name__})", retry_after_s=1)
        await asyncio.sleep(self.rng.uniform(*RAY_HOP_S))
        return task.result()

    async def _ping(self) -> None:
        try:
            await self.call("ping")
        except PaycellError:
            pass

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            await self._ping()

    async def deliver_notification(self, note: Notification) -> bool:
        try:
            accepted = await self.notify_batcher.submit(0, note)
        except PaycellError:
            return False
        return accepted is True

    # ------------------------------------------------------------------ clients
    async def _client(self, spec: KeySpec) -> None:
        cid = next(self._client_ids)
        self.clients[cid] = f"{spec.key}"
        await asyncio.sleep(spec.start_s)
        if spec.twin:
            self.spawn(self._send(spec, spec.body))
        await self._send(spec, spec.body)
        if spec.resend:
            await asyncio.sleep(self.rng.uniform(0.0, 3.0))
            await self._send(spec, spec.body)
        if spec.read:
            await asyncio.sleep(self.rng.uniform(0.0, 2.0))
            await self._read(spec)
        del self.clients[cid]

    async def _conflicting(self, spec: KeySpec) -> None:
        assert spec.other is not None
        cid = next(self._client_ids)
        self.clients[cid] = f"{spec.key} other body"
        await asyncio.sleep(self.rng.uniform(0.0, self.swarm.load_s + 2.0))
        await self._send(spec, spec.other)
        del self.clients[cid]

    async def _send(self, spec: KeySpec, body: CreateOrder) -> None:
        """Send until answered with an order or a 409, retrying what says 'retry'."""
        cid = next(self._client_ids)
        self.waiting[cid] = f"{spec.key} amount {body.amount}"
        while True:
            sent = self.clock.elapsed()
            try:
                reply = await self.batcher.submit(0, replace(body, received_at=self.clock.time()))
            except PaycellError as e:
                reply = error_reply(e)
            self._observe(Obs(sent, self.clock.elapsed(), spec.key, "create", body.amount,
                              reply.get("order"), reply.get("error") or ""))
            if "order" in reply or reply.get("error") == "idempotency_conflict":
                break
            if reply.get("error") not in RETRYABLE:
                self.violation("unexpected_error", f"{spec.key}: {reply}")
                break
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))
        del self.waiting[cid]

    async def _read(self, spec: KeySpec) -> None:
        sent = self.clock.elapsed()
        try:
            order = await self.call("find", *spec.key)
        except PaycellError:
            return
        self._observe(Obs(sent, self.clock.elapsed(), spec.key, "read", 0, order, ""))
        if order is None and spec.key in self.acked:
            self.violation("acked_order_not_found",
                           f"{spec.key}: read after {self.acked[spec.key]} was answered")

    def _observe(self, obs: Obs) -> None:
        """Safety checks on each answer as it arrives."""
        self.observations.append(obs)
        order = obs.order
        self._trace.append(f"{self.loop.time():.6f} {obs.kind} {obs.key} "
                           f"{order['order_id'] + ' ' + order['status'] if order else obs.error}")
        if order is None:
            return
        first = self.acked.setdefault(obs.key, order["order_id"])
        if order["order_id"] != first:
            self.violation("reply_names_other_order",
                           f"{obs.key}: {order['order_id']} after {first}")
        if obs.kind == "create" and order["amount"] != obs.amount:
            self.violation("conflict_not_refused",
                           f"{obs.key}: a body of amount {obs.amount} was answered with "
                           f"{order['order_id']} of amount {order['amount']}")
        seen = self._final_seen.get(order["order_id"])
        if seen is not None and obs.sent > seen[1] and order["status"] != seen[0]:
            self.violation("final_status_not_stable",
                           f"{order['order_id']}: {seen[0]} seen at {seen[1]:.3f}s, then "
                           f"{order['status']} for a request sent at {obs.sent:.3f}s")
        if order["status"] != "PENDING" and seen is None:
            self._final_seen[order["order_id"]] = (order["status"], obs.at)

    # ------------------------------------------------------------------ phases
    def open_ids(self) -> list[str]:
        return [oid for members in self.redis.sets.values() for oid in members]

    def given_up(self, order_id: str) -> bool:
        """The shard's cancels of this order failed `cancel_attempts_max` times in its current
        life: it left the order PENDING for the reconciler (by design; a restart or the
        reconciler resolves it). Counted from the channel's side, as the shard counts: every
        cancel answered with an error, not only consecutive ones."""
        if self.live is None:
            return False
        failed = sum(1 for a in self.channels.cancels.get(order_id, [])
                     if a.incarnation == self.live.id and a.ok is False)
        return failed >= self.settings.orders.cancel_attempts_max

    def _converged(self) -> bool:
        if self.waiting or self.clients or self.live is None or self.redis.outstanding \
                or self.channels.outstanding:
            return False
        return all(self.given_up(oid) for oid in self.open_ids())

    async def _main(self) -> None:
        sw = self.swarm
        self._start_incarnation()
        self.spawn(self._keepalive())
        for t in sw.crash_times:
            self.loop.call_at(self.loop.start + t, self.crash)
        for spec in self.specs:
            self.spawn(self._client(spec))
            if spec.other is not None:
                self.spawn(self._conflicting(spec))
        await asyncio.sleep(sw.safety_s)
        self.faults_on = False
        self._trace.append(f"{self.loop.time():.6f} faults off")
        while self.clock.elapsed() < sw.safety_s + sw.liveness_max_s:
            await asyncio.sleep(CONVERGE_CHECK_S)
            if self._converged():
                self.converged_at = self.clock.elapsed()
                break
        if self.live is not None:         # the final read, through the shard
            for spec in self.specs:
                try:
                    self.final_reads[spec.key] = await self.call("find", *spec.key)
                except PaycellError as e:
                    self.violation("final_read_failed", f"{spec.key}: {e.code}")

    def run(self) -> Result:
        from tests.sim import oracles
        paycell_log = logging.getLogger("paycell")
        level = paycell_log.level
        paycell_log.setLevel(logging.CRITICAL + 1)   # the shard's error logs are expected here
        try:
            self.loop.run_until_complete(self._main())
        except Deadlock as e:
            self.violation("deadlock", str(e))
        except Exception:
            self.violation("simulator_exception", traceback.format_exc())
        finally:
            try:
                self._teardown()
            finally:
                paycell_log.setLevel(level)
        oracles.check(self)
        return Result(self.seed, self.violations, self._stats(), self.faults,
                      hashlib.sha256("\n".join(self._trace).encode()).hexdigest()[:16],
                      self.swarm)

    def _teardown(self) -> None:
        if self.live is not None:
            self.loop.kill_incarnation(self.live.id)
        for _ in range(10):
            tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            if not tasks:
                break
            for t in tasks:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    def _stats(self) -> dict[str, Any]:
        records = self.redis.records()
        return {
            "keys": len(self.specs),
            "orders": len(records),
            "statuses": Counter(r["status"] for r in records),
            "resolved_by": Counter(r["resolved_by"] or "-" for r in records),
            "crashes": self.crashes,
            "given_up": sum(1 for oid in self.open_ids() if self.given_up(oid)),
            "converged_at_s": self.converged_at,
            "virtual_s": round(self.clock.elapsed(), 3),
            "loop_jumps": self.loop.iterations,
            "answers": len(self.observations),
            "conflicts_409": sum(1 for o in self.observations
                                 if o.error == "idempotency_conflict"),
            "charges": sum(self.channels.charge_requests.values()),
            "paid": sum(1 for t in self.channels.ledger.values() if t.state == "PAID"),
            "reversed": sum(1 for t in self.channels.ledger.values() if t.state == "REVERSED"),
            "loop_errors": len(self.loop_errors),
        }


def run_seed(seed: int, *, bugs: frozenset[str] = frozenset(),
             with_faults: frozenset[str] = frozenset(),
             without: frozenset[str] = frozenset()) -> Result:
    return World(seed, bugs=bugs, with_faults=with_faults, without=without).run()
