"""Reconciler: the batch rung. Fetches a channel's statement for a day (in the channel's own
format, parsed by its connector), matches it against paycell's orders (actors/reconcile_match.py)
and settles what it can; every mismatch goes into the day's report.

One run of (channel, day):
  statement  connector.statement(day); the statement covers trades until
             min(end of day, fetch time - reconcile.statement_lag_s)
  orders     the records the lines name (MGET), then every order of the day (actors/reconcile_store)
  settle     PENDING orders the statement shows paid -> PAID through their shard (rung reconcile)
  close      PENDING orders past their async window with no payment the statement covers: their
             shard cancels each at the channel (the fence on the trade number) under the order's
             lock and commits what the cancel says (so the close notification the channel sends
             at once cannot resolve the order in between)
  confirm    SUCCEEDED orders with no payment line: the channel is queried (paid on another day?)
  verify     FAILED / CLOSED orders the statement shows paid: queried, then refunded if still paid
  refund     extra payments (and the verified ones): each refund id is deterministic, written to
             the refund log before the channel sees it, and answered from the log on a rerun
  report     saved to Redis while running (progress) and at the end

Every write to an order goes through the shard that owns it (OrderShard.settle: its lock, the
state machine, commit before memory). Each step is idempotent, so a run interrupted anywhere is
finished by running it again, and a second run of a settled day changes nothing: its report lists
the same mismatches and counts the settled orders as already settled.

Runs start on demand (`start`: the ops endpoint, `paycell reconcile`) and on a schedule: daily at
reconcile.run_at_utc for the reconcile.days_back days before today, and every
reconcile.interval_s for today when set (for channels whose statement covers the day in progress,
as the sandboxes' do). One run per (channel, day) at a time; at most reconcile.runs_inflight_max.
Days are UTC days (the sandboxes' too; a channel whose bill day is another zone's still matches
line by line, only the orders without a line are picked by their UTC creation day).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, TypeVar

from actors.reconcile_match import (Finding, Kind, MatchContext, Matcher, RefundPlan,
                                    RefundSettlement, Settlement, Verify, covered_until,
                                    group_lines)
from actors.reconcile_report import Run, RunTotals
from channels.base import (ChannelError, ChannelResult, Connector, RefundRequest, RefundResult,
                           RefundStatus, StatementKind)
from core.clock import Clock, SystemClock
from core.errors import NotFound, Overloaded, PaycellError, ValidationError
from core.ids import parse_order_id
from core.order import Order
from core.refund import Refund, RefundStatus as PaycellRefundStatus
from core.settings import Settings
from core.states import Fact

log = logging.getLogger("paycell.reconciler")
SCHEDULER_NAP_S = 60.0     # the scheduler looks at the clock at least this often
SLOT_WAIT_S = 1.0          # a scheduled run waits this long between tries for a free run slot
T = TypeVar("T")


class SettlePort(Protocol):
    async def settle(self, shard: int, facts: list[Settlement]) -> list[dict[str, Any]]: ...
    async def settle_refunds(self, shard: int, facts: list[RefundSettlement]
                             ) -> list[dict[str, Any]]: ...
    async def reconcile_close(self, shard: int, order_ids: list[str]
                              ) -> list[dict[str, Any]]: ...


class OrderSource(Protocol):
    async def get_many(self, order_ids: list[str]) -> dict[str, Order | None]: ...
    def day_orders(self, day: date) -> AsyncIterator[Order]: ...
    async def get_refunds(self, refund_ids: list[str]) -> dict[str, Refund | None]: ...
    def day_refunds(self, day: date) -> AsyncIterator[Refund]: ...


class ReportPort(Protocol):
    async def load(self, channel: str, day: str) -> dict[str, Any] | None: ...
    async def save(self, report: dict[str, Any]) -> None: ...
    async def running(self) -> list[tuple[str, str]]: ...


class RefundPort(Protocol):
    async def get_many(self, refund_ids: list[str]) -> dict[str, dict[str, Any]]: ...
    async def put(self, record: dict[str, Any]) -> None: ...


def reconciled_channels(settings: Settings, enabled: list[str]) -> list[str]:
    named = [c for c in settings.reconcile.channels.split(",") if c]
    return [c for c in enabled if not named or c in named]


def parse_day(text: str, today: date) -> date:
    """A YYYY-MM-DD day that has begun (ValidationError otherwise)."""
    try:
        day = datetime.strptime(text, "%Y-%m-%d").date() if len(text) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise ValidationError("date must be YYYY-MM-DD", field="date")
    if day > today:
        raise ValidationError("date is in the future: its statement does not exist yet",
                              field="date")
    return day


class Reconciler:
    def __init__(self, settings: Settings, *, channels: list[str], shards: SettlePort,
                 orders: OrderSource, reports: ReportPort, refunds: RefundPort,
                 connector_for: Callable[[str], Connector], clock: Clock | None = None) -> None:
        self._settings = settings
        self._rc = settings.reconcile
        self._channels = channels
        self._shards = shards
        self._orders = orders
        self._reports = reports
        self._refunds = refunds
        self._connector_for = connector_for
        self._clock = clock or SystemClock()
        self._runs: dict[tuple[str, str], tuple[Run, asyncio.Task[dict[str, Any]]]] = {}
        self._start_lock = asyncio.Lock()
        self._starting = asyncio.Lock()
        self._started = False
        self._scheduler: asyncio.Task[None] | None = None
        self._saved_at = 0.0
        self.totals = RunTotals()      # counters since this actor started (/metrics)

    # ------------------------------------------------------------------ lifecycle
    async def ensure_started(self) -> None:
        """Once: mark runs a previous incarnation left unfinished, start the schedule."""
        async with self._start_lock:
            if self._started:
                return
            for channel, day in await self._reports.running():
                if (channel, day) in self._runs:
                    continue
                report = await self._reports.load(channel, day)
                if report is not None and report["status"] == "running":
                    report["status"] = "interrupted"
                    await self._reports.save(report)
            self._started = True
            if self._rc.enabled:
                self._scheduler = asyncio.get_running_loop().create_task(self._schedule_loop())

    async def ping(self) -> dict[str, Any]:
        await self.ensure_started()
        return {"reconciler": self._settings.orders.set_name, "runs": len(self._runs),
                "scheduled": self._scheduler is not None}

    async def stats(self) -> dict[str, Any]:
        """Counters since this actor started (actors.reconcile_report.RunTotals) and the runs
        in progress; from memory only, so /metrics gets them while Redis is down too."""
        return {"runs_inflight": len(self._runs), **self.totals.to_json()}

    # ------------------------------------------------------------------ runs
    async def start(self, channel: str, day_text: str) -> dict[str, Any]:
        """Start the run of (channel, day), or join the one in progress; the report so far.
        Refusals come back as {"error": code, "detail": ...} (they cross a process boundary)."""
        try:
            await self.ensure_started()
            run, _ = await self._start(channel, day_text)
        except PaycellError as e:
            return {"error": e.code, "detail": e.detail, "retry_after_s": e.retry_after_s}
        return run.to_json()

    async def run(self, channel: str, day_text: str) -> dict[str, Any]:
        """Start (or join) the run and wait for its final report."""
        try:
            await self.ensure_started()
            _, task = await self._start(channel, day_text)
        except PaycellError as e:
            return {"error": e.code, "detail": e.detail, "retry_after_s": e.retry_after_s}
        return await asyncio.shield(task)

    async def _start(self, channel: str, day_text: str
                     ) -> tuple[Run, asyncio.Task[dict[str, Any]]]:
        if channel not in self._channels:
            raise NotFound(f"no enabled channel {channel!r} (enabled: {self._channels})")
        day = parse_day(day_text, self._clock.now().date())
        key = (channel, day.isoformat())
        async with self._starting:
            current = self._runs.get(key)
            if current is not None:
                return current
            if len(self._runs) >= self._rc.runs_inflight_max:
                raise Overloaded(f"{len(self._runs)} reconciliation runs in progress",
                                 retry_after_s=5)
            previous = await self._reports.load(*key)
            o = self._settings.orders
            run = Run(channel, day, o.region, o.set_name, (previous or {}).get("run", 0) + 1,
                      self._clock.time(), self._rc.report_items_max)
            await self._save(run)     # "running" is stored before anyone hears of the run
            task = asyncio.get_running_loop().create_task(self._run(run))
            self._runs[key] = (run, task)
            task.add_done_callback(lambda _t: self._runs.pop(key, None))
            return run, task

    async def _run(self, run: Run) -> dict[str, Any]:
        try:
            await self._execute(run)
        except PaycellError as e:    # Redis or a shard unreachable: the next run picks it up
            run.fail(f"{e.code}: {e.detail}", self._clock.time())
        except Exception as e:   # a bug must not kill the actor: the run is failed and logged
            log.exception("reconciliation of %s %s crashed", run.channel, run.day,
                          extra={"channel": run.channel})
            run.fail(f"internal error: {type(e).__name__}", self._clock.time())
        else:
            if run.status == "running":
                run.finish(self._clock.time())
        self.totals.add(run)
        await self._save(run)
        report = run.to_json()
        log.info("reconciliation of %s %s: %s, %d mismatches, %d errors", run.channel, run.day,
                 run.status, run.counts["mismatches"], run.counts["errors"],
                 extra={"channel": run.channel})
        return report

    async def _save(self, run: Run) -> None:
        try:
            await self._reports.save(run.to_json())
        except PaycellError as e:
            log.warning("reconciliation report of %s %s not saved: %s", run.channel, run.day,
                        e.code, extra={"channel": run.channel})
        self._saved_at = self._clock.monotonic()

    async def _progress(self, run: Run, phase: str | None = None) -> None:
        if phase is not None:
            run.phase = phase
        if phase is not None or (self._clock.monotonic() - self._saved_at
                                 >= self._rc.progress_interval_ms / 1000):
            await self._save(run)

    async def _execute(self, run: Run) -> None:
        connector = self._connector_for(run.channel)
        try:
            statement = await connector.statement(run.day)
        except (ChannelError, ValueError) as e:
            run.fail(f"statement unavailable: {type(e).__name__}: {e}", self._clock.time())
            return
        covered = covered_until(run.day, self._clock.time(), self._rc.statement_lag_s)
        run.saw_statement(statement, covered)
        await self._progress(run, "matching")
        groups = group_lines(statement)
        refund_ids = [x.refund_id for x in statement.lines
                      if x.kind is StatementKind.REFUND and x.refund_id]
        own = frozenset(await self._refunds.get_many(refund_ids))
        o = self._settings.orders
        m = Matcher(MatchContext(run.channel, run.day, o.region, o.set_name,
                                 o.async_window_ms / 1000, covered, own,
                                 o.refund_async_window_ms / 1000))
        mine = [oid for oid in groups if parse_order_id(oid) is not None]
        records = await self._orders.get_refunds([r for r in refund_ids if r not in own])
        m.add_lines(groups, await self._orders.get_many(mine), records)
        await self._progress(run, "orders")
        async for order in self._orders.day_orders(run.day):
            m.add_day_order(order)
        async for refund in self._orders.day_refunds(run.day):
            m.add_day_refund(refund)
        plan = m.plan
        run.took_plan(plan)
        calls = _Budget(self._rc.actions_max, self._rc.channel_calls_inflight_max)
        await self._progress(run, "settling")
        fenced = await self._settle(run, plan.settle)
        await self._progress(run, "closing")
        closing = [o.order_id for o in plan.close]
        await self._close(run, closing + [oid for oid in fenced if oid not in closing], calls)
        await self._progress(run, "checking")
        await self._confirm(run, m, connector, plan.confirm, calls)
        refund_facts = plan.settle_refunds + await self._check_refunds(
            run, connector, plan.refund_checks, calls)
        await self._settle_refunds(run, refund_facts)
        refunds = list(plan.refunds) + await self._verify(run, connector, plan.verify, calls)
        await self._progress(run, "refunding")
        await self._refund(run, connector, refunds, plan.findings, calls)
        run.count("deferred", calls.deferred)

    # ------------------------------------------------------------------ steps
    async def _settle(self, run: Run, facts: list[Settlement]) -> list[str]:
        """Each shard applies its orders' payments, in batches; the shards work at once. The
        orders a cancel was sent for meanwhile come back, to be closed (the cancel decides)."""
        size = self._rc.settle_batch_max
        fenced: list[str] = []

        async def shard_settles(shard: int, items: list[Settlement]) -> None:
            for i in range(0, len(items), size):
                batch = items[i:i + size]
                try:
                    answers = await self._shards.settle(shard, batch)
                except PaycellError as e:
                    for f in batch:
                        self._unreached(run, "settle", shard, e, f.order_id)
                    continue
                for f, a in zip(batch, answers):
                    if a["outcome"] == "cancel_sent":
                        fenced.append(f.order_id)
                    else:
                        self._settled(run, "settle", f.fact.value, a)
                await self._progress(run)
        await asyncio.gather(*(shard_settles(shard, items) for shard, items
                               in sorted(_by_shard(facts, lambda f: f.order_id).items())))
        return fenced

    async def _close(self, run: Run, order_ids: list[str], calls: _Budget) -> None:
        """Each shard closes its orders at the channel, a few at a time (each close is a
        channel call; channel_calls_inflight_max in all), the shards at once."""
        groups = sorted(_by_shard(order_ids, lambda oid: oid).items())
        size = max(1, self._rc.channel_calls_inflight_max // max(1, len(groups)))

        async def shard_closes(shard: int, items: list[str]) -> None:
            ids = items[:calls.take(len(items))]
            for i in range(0, len(ids), size):
                batch = ids[i:i + size]
                try:
                    answers = await self._shards.reconcile_close(shard, batch)
                except PaycellError as e:
                    for oid in batch:
                        self._unreached(run, "close", shard, e, oid)
                    continue
                for a in answers:
                    self._settled(run, "close", a.get("fact", "CLOSED"), a)
                await self._progress(run)
        await asyncio.gather(*(shard_closes(shard, items) for shard, items in groups))

    @staticmethod
    def _unreached(run: Run, step: str, shard: int, e: PaycellError, order_id: str) -> None:
        run.error(step, f"shard {shard}: {e.code}; the next run retries", order_id)
        run.count("left_open")

    @staticmethod
    def _settled(run: Run, step: str, fact: str, a: dict[str, Any]) -> None:
        outcome, status, oid = a["outcome"], a.get("status", ""), a["order_id"]
        if outcome == "moved":
            run.add_settled(oid, fact, "settled", status)
        elif outcome == "noop":
            run.add_settled(oid, fact, "resolved_meanwhile", status)
        else:
            run.error(step, f"{fact}: {outcome} ({status or a.get('detail', '')})", oid)
            if outcome in ("unavailable", "left_open"):
                run.count("left_open")

    async def _check_refunds(self, run: Run, connector: Connector, refunds: list[Refund],
                             calls: _Budget) -> list[RefundSettlement]:
        """paycell's refunds PENDING past their window and not on the statement: the channel's
        refund query; a final answer settles them, anything else leaves them pending."""
        async def query(r: Refund) -> RefundResult | None:
            try:
                return await connector.refund_query(r.order_id, r.refund_id, r.currency)
            except (ChannelError, ValueError) as e:
                run.error("refund_check", f"{r.refund_id}: {type(e).__name__}", r.order_id)
                return None
        out: list[RefundSettlement] = []
        for r, res in zip(refunds, await calls.each(refunds, query)):
            if res is None or not res.exists or res.status is RefundStatus.PENDING:
                run.count("refunds_left_pending")
            elif res.amount is not None and res.amount != r.amount:
                run.add_finding(Finding(
                    Kind.REFUND_MISMATCH, r.order_id,
                    f"refund {r.refund_id}: channel {res.amount}, paycell {r.amount}: for "
                    "review", {"refund_id": r.refund_id, "amount": r.amount},
                    {"amount": res.amount, "status": res.status.value}))
            else:
                out.append(RefundSettlement(r.refund_id, r.order_id,
                                            PaycellRefundStatus(res.status.value),
                                            res.channel_refund_no, res.failure_code))
        return out

    async def _settle_refunds(self, run: Run, facts: list[RefundSettlement]) -> None:
        size = self._rc.settle_batch_max
        for shard, items in sorted(_by_shard(facts, lambda f: f.order_id).items()):
            for i in range(0, len(items), size):
                batch = items[i:i + size]
                try:
                    answers = await self._shards.settle_refunds(shard, batch)
                except PaycellError as e:
                    for f in batch:
                        run.error("refund_settle", f"{f.refund_id}: shard {shard}: {e.code}; "
                                                   "the next run retries", f.order_id)
                    continue
                for f, a in zip(batch, answers):
                    if a["outcome"] == "moved":
                        run.count("refunds_settled")
                        run.settled_refund(f.refund_id, f.order_id, f.status.value)
                    elif a["outcome"] == "noop":
                        run.count("refunds_matched")
                    else:
                        run.error("refund_settle", f"{f.refund_id} {f.status.value}: "
                                                   f"{a['outcome']} ({a.get('status', '')})",
                                  f.order_id)

    async def _confirm(self, run: Run, m: Matcher, connector: Connector, orders: list[Order],
                       calls: _Budget) -> None:
        """SUCCEEDED orders with no payment line: paid on the channel on another day?"""
        async def query(order: Order) -> ChannelResult | None:
            try:
                return await connector.query(order.order_id, order.currency)
            except (ChannelError, ValueError) as e:
                run.error("confirm", f"query: {type(e).__name__}", order.order_id)
                return None
        for order, res in zip(orders, await calls.each(orders, query)):
            if res is None:
                continue
            if res.fact is Fact.PAID:
                run.count("paid_other_day")
            else:
                before = len(m.plan.findings)
                m.missing_on_channel(order, f"{res.fact.value} {res.raw_status}".strip())
                for f in m.plan.findings[before:]:
                    run.add_finding(f)

    async def _verify(self, run: Run, connector: Connector, items: list[Verify],
                      calls: _Budget) -> list[RefundPlan]:
        """Unpaid orders the statement shows paid: refund only what the channel still holds."""
        async def query(v: Verify) -> ChannelResult | None:
            try:
                return await connector.query(v.order.order_id, v.order.currency)
            except (ChannelError, ValueError) as e:
                run.error("verify", f"query: {type(e).__name__}; refund waits for the next run",
                          v.order.order_id)
                return None
        out: list[RefundPlan] = []
        for v, res in zip(items, await calls.each(items, query)):
            if res is None:
                continue
            if res.fact is Fact.PAID:
                v.finding.refunds = v.refunds
                out += v.refunds
            else:
                v.finding.detail += (f"; the channel now shows it {res.fact.value} "
                                     f"({res.raw_status}): nothing to refund")
        return out

    async def _refund(self, run: Run, connector: Connector, plans: list[RefundPlan],
                      findings: list[Finding], calls: _Budget) -> None:
        results: dict[str, str] = {}
        log_ = await self._refunds.get_many([p.refund_id for p in plans])
        todo: list[RefundPlan] = []
        for p in plans:
            rec = log_.get(p.refund_id)
            if rec is not None and rec["status"] in ("SUCCEEDED", "FAILED"):
                results[p.refund_id] = rec["status"]
                run.count("refunds_already_done" if rec["status"] == "SUCCEEDED"
                          else "refunds_failed")
            else:
                todo.append(p)

        async def refund(p: RefundPlan) -> None:
            results[p.refund_id] = await self._refund_one(run, connector, p,
                                                          log_.get(p.refund_id))
        await calls.each(todo, refund)
        for f in findings:
            f.refund_results.update({r.refund_id: results.get(r.refund_id, "deferred")
                                     for r in f.refunds})

    async def _refund_one(self, run: Run, connector: Connector, p: RefundPlan,
                          rec: dict[str, Any] | None) -> str:
        record = rec or {"refund_id": p.refund_id, "order_id": p.order_id,
                         "channel": run.channel, "day": run.day.isoformat(), "kind": p.kind.value,
                         "line": p.line_no, "amount": p.amount, "currency": p.currency,
                         "status": "SENDING", "created_at": self._clock.time()}
        if rec is None:     # durable before the channel sees it
            await self._refunds.put(record)
        req = RefundRequest(order_id=p.order_id, refund_id=p.refund_id, amount=p.amount,
                            total_amount=p.total_amount, currency=p.currency,
                            reason=f"paycell reconciliation: {p.kind.value}",
                            channel_trade_no=p.channel_trade_no)
        try:
            res: RefundResult = await connector.refund(req)
        except ValueError as e:      # the connector cannot refund this at all
            res = RefundResult(RefundStatus.FAILED, p.refund_id, failure_code="refused",
                               failure_message=str(e)[:200])
        except ChannelError as e:
            run.error("refund", f"{p.refund_id}: {type(e).__name__}; sent again (same id) by "
                                "the next run", p.order_id)
            return "UNKNOWN"
        await self._refunds.put({**record, "status": res.status.value,
                                 "channel_refund_no": res.channel_refund_no,
                                 "failure_code": res.failure_code,
                                 "updated_at": self._clock.time()})
        if res.status is RefundStatus.FAILED:
            run.count("refunds_failed")
            run.error("refund", f"{p.refund_id} refused: {res.failure_code} "
                                f"{res.failure_message}".strip(), p.order_id)
        else:
            run.count("refunds_sent")
        return res.status.value

    # ------------------------------------------------------------------ schedule
    def _next_daily(self, after: float) -> float:
        hh, mm = (int(x) for x in self._rc.run_at_utc.split(":"))
        now = datetime.fromtimestamp(after, timezone.utc)
        at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if at.timestamp() <= after:
            at += timedelta(days=1)
        return at.timestamp()

    async def _schedule_loop(self) -> None:
        now = self._clock.time()
        next_daily = self._next_daily(now)
        interval = self._rc.interval_s
        next_interval = now + interval if interval else float("inf")
        while True:
            now = self._clock.time()
            await asyncio.sleep(max(0.0, min(next_daily, next_interval, now + SCHEDULER_NAP_S)
                                    - now))
            now = self._clock.time()
            today = self._clock.now().date()
            if now >= next_daily:
                next_daily = self._next_daily(now)
                for back in range(self._rc.days_back, 0, -1):
                    await self._scheduled(today - timedelta(days=back))
            if now >= next_interval:
                next_interval = now + interval
                await self._scheduled(today)

    async def _scheduled(self, day: date) -> None:
        for channel in reconciled_channels(self._settings, self._channels):
            while True:
                report = await self.run(channel, day.isoformat())
                if report.get("error") != Overloaded.code:
                    break
                await asyncio.sleep(SLOT_WAIT_S)
            if "error" in report:
                log.error("scheduled reconciliation of %s %s refused: %s", channel, day,
                          report.get("detail"), extra={"channel": channel})


def _by_shard(items: list[T], order_id: Callable[[T], str]) -> dict[int, list[T]]:
    out: dict[int, list[T]] = {}
    for item in items:
        ref = parse_order_id(order_id(item))
        assert ref is not None, order_id(item)
        out.setdefault(ref.shard, []).append(item)
    return out


class _Budget:
    """Channel calls of one run: at most `total`, `inflight` at once; the rest are deferred."""

    def __init__(self, total: int, inflight: int) -> None:
        self._left = total
        self._slots = asyncio.Semaphore(inflight)
        self.deferred = 0

    def take(self, n: int) -> int:
        """How many of `n` calls the budget allows (the others are counted deferred)."""
        allowed = max(0, min(n, self._left))
        self._left -= allowed
        self.deferred += n - allowed
        return allowed

    async def each(self, items: list[T], call: Callable[[T], Awaitable[Any]]) -> list[Any]:
        """call(item) for the items the budget allows (None for the deferred ones), in order."""
        allowed = items[:self.take(len(items))]

        async def one(item: T) -> Any:
            async with self._slots:
                return await call(item)
        done = await asyncio.gather(*(one(i) for i in allowed))
        return list(done) + [None] * (len(items) - len(allowed))

