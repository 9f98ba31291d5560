"""The Reconciler without Ray or Redis: real OrderShards on an in-memory store settle what it
finds; a scripted connector plays the channel and counts every call."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import date, datetime, timezone
from typing import Any, AsyncIterator

import pytest

from actors.reconcile_match import Settlement, day_bounds, refund_id_for
from actors.reconcile_report import render_text
from actors.reconciler import Reconciler, parse_day
from actors.shard import OrderShard
from channels.base import (ChannelResult, Notification, OutcomeUnknown, RefundRequest,
                           RefundResult, RefundStatus, Statement, StatementKind, StatementLine)
from core.clock import FakeClock
from core.errors import Unavailable
from core.ids import make_order_id, parse_order_id
from core.ids import make_refund_id
from core.order import CreateOrder, Order
from core.refund import CreateRefund, Refund, RefundStatus as PaycellRefundStatus, reserve
from core.settings import load_settings
from core.states import Fact, OrderStatus, Rung

DAY = date(2026, 11, 25)
START, END = day_bounds(DAY)


def settings(**reconcile: Any) -> Any:
    return load_settings(env={}, overrides={
        "orders": {"shard_count": 2, "async_window_ms": 30_000, "query_interval_ms": 600_000,
                   "query_first_delay_ms": 600_000},
        "reconcile": {"enabled": False, **reconcile}})


class MemStore:
    def __init__(self) -> None:
        self.records: dict[str, Order] = {}
        self.refunds: dict[str, Refund] = {}
        self.commits = 0
        self.down = False

    async def get(self, order_id: str) -> Order | None:
        return self.records.get(order_id)

    async def find(self, app_id: str, out_trade_no: str) -> Order | None:
        return None

    async def open_ids(self) -> list[str]:
        return [o.order_id for o in self.records.values() if not o.status.is_final]

    async def commit(self, order: Order, *, new: bool = False) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise Unavailable("store down")
        self.commits += 1
        self.records[order.order_id] = order

    # ---- refunds: records and the order's sums, committed together ----
    async def get_refund(self, refund_id: str) -> Refund | None:
        return self.refunds.get(refund_id)

    async def find_refund(self, order_id: str, out_refund_no: str) -> Refund | None:
        return next((r for r in self.refunds.values()
                     if (r.order_id, r.out_refund_no) == (order_id, out_refund_no)), None)

    async def refunds_of(self, order_id: str) -> list[Refund]:
        return [r for r in self.refunds.values() if r.order_id == order_id]

    async def open_refund_ids(self) -> list[str]:
        return [r.refund_id for r in self.refunds.values() if not r.status.is_final]

    async def commit_refund(self, order: Order, refund: Refund, *, base: Any,
                            new: bool = False) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise Unavailable("store down")
        stored = self.records[order.order_id]
        assert (stored.refund_reserved, stored.refunded_amount) == (base.reserved, base.refunded)
        self.commits += 1
        self.records[order.order_id] = order
        self.refunds[refund.refund_id] = refund


class ShardChannels:
    """The shard's own channel port: cancels reach the scripted channel; the shard's query
    schedule never fires on the fake clock."""

    def __init__(self) -> None:
        self.channel: Channel | None = None

    async def query(self, channel: str, order_id: str, currency: str) -> ChannelResult:
        return ChannelResult(Fact.WAITING)

    async def cancel(self, channel: str, order_id: str) -> ChannelResult:
        assert self.channel is not None
        return await self.channel.cancel(order_id)

    def stats(self) -> dict[str, Any]:
        return {}


class Shards:
    """SettlePort over real OrderShards sharing one in-memory store."""

    def __init__(self, s: Any, store: MemStore, clock: FakeClock) -> None:
        self.ports = ShardChannels()
        self.shards = [OrderShard(s, i, store=store, channels=self.ports,  # type: ignore[arg-type]
                                  clock=clock) for i in range(s.orders.shard_count)]
        self.calls = 0
        self.down = False

    async def settle(self, shard: int, facts: list[Settlement]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.down:
            raise Unavailable("shard down")
        return await self.shards[shard].settle(facts)

    async def settle_refunds(self, shard: int, facts: list[Any]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.down:
            raise Unavailable("shard down")
        return await self.shards[shard].settle_refunds(facts)

    async def reconcile_close(self, shard: int, order_ids: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.down:
            raise Unavailable("shard down")
        return await self.shards[shard].reconcile_close(order_ids)


class Orders:
    def __init__(self, store: MemStore) -> None:
        self.store = store

    async def get_many(self, order_ids: list[str]) -> dict[str, Order | None]:
        return {oid: self.store.records.get(oid) for oid in order_ids}

    async def day_orders(self, day: date) -> AsyncIterator[Order]:
        start, end = day_bounds(day)
        for o in list(self.store.records.values()):
            if start <= o.created_at < end:
                yield o

    async def get_refunds(self, refund_ids: list[str]) -> dict[str, Refund | None]:
        return {rid: self.store.refunds.get(rid) for rid in refund_ids}

    async def day_refunds(self, day: date) -> AsyncIterator[Refund]:
        start, end = day_bounds(day)
        for r in list(self.store.refunds.values()):
            if start <= r.created_at < end and not r.status.is_final:
                yield r


class Reports:
    def __init__(self) -> None:
        self.saved: dict[tuple[str, str], dict[str, Any]] = {}
        self.saves: list[str] = []

    async def load(self, channel: str, day: str) -> dict[str, Any] | None:
        return self.saved.get((channel, day))

    async def save(self, report: dict[str, Any]) -> None:
        self.saved[(report["channel"], report["day"])] = report
        self.saves.append(report["phase"])

    async def running(self) -> list[tuple[str, str]]:
        return [k for k, r in self.saved.items() if r["status"] == "running"]


class Refunds:
    def __init__(self) -> None:
        self.log: dict[str, dict[str, Any]] = {}

    async def get_many(self, refund_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {r: self.log[r] for r in refund_ids if r in self.log}

    async def put(self, record: dict[str, Any]) -> None:
        self.log[record["refund_id"]] = record


class Channel:
    """A channel: its statement lines, each trade's state, and every call made."""
    name = "alipay"

    def __init__(self) -> None:
        self.lines: list[StatementLine] = []
        self.trades: dict[str, str] = {}          # order id -> PAID | WAITING | CLOSED
        self.cancels: list[str] = []
        self.queries: list[str] = []
        self.refunds: list[RefundRequest] = []
        self.refunded: dict[str, RefundRequest] = {}
        self.fail: set[str] = set()               # calls that answer OutcomeUnknown
        self.refund_states: dict[str, RefundStatus] = {}   # paycell's refunds at the channel
        self.reverses = True

    def paid(self, order_id: str, amount: int = 600, times: int = 1,
             currency: str = "CNY") -> None:
        self.trades[order_id] = "PAID"
        for i in range(times):
            self.lines.append(StatementLine(
                StatementKind.PAYMENT, order_id, "T" + order_id[-5:], amount, currency,
                datetime.fromtimestamp(START + 3600 + i, timezone.utc)))

    async def statement(self, day: date) -> Statement:
        if "statement" in self.fail:
            raise OutcomeUnknown("bill download reset")
        return Statement("alipay", day, tuple(self.lines))

    async def cancel(self, order_id: str) -> ChannelResult:
        self.cancels.append(order_id)
        if "cancel" in self.fail:
            raise OutcomeUnknown("timeout")
        if self.trades.get(order_id) == "PAID":
            if not self.reverses:
                return ChannelResult(Fact.PAID, "T" + order_id[-5:], 600, "CNY")
            self.trades[order_id] = "CLOSED"
            return ChannelResult(Fact.CLOSED, action="refund")
        self.trades[order_id] = "CLOSED"
        return ChannelResult(Fact.CLOSED, action="close")

    async def query(self, order_id: str, currency: str) -> ChannelResult:
        self.queries.append(order_id)
        state = self.trades.get(order_id)
        if state == "PAID":
            return ChannelResult(Fact.PAID, raw_status="TRADE_SUCCESS")
        return ChannelResult(Fact.CLOSED, raw_status="TRADE_CLOSED", exists=state is not None)

    async def refund_query(self, order_id: str, refund_id: str, currency: str) -> RefundResult:
        self.queries.append(refund_id)
        state = self.refund_states.get(refund_id)
        if state is None:
            return RefundResult(RefundStatus.PENDING, refund_id, exists=False)
        return RefundResult(state, refund_id, "RQ-" + refund_id[-4:])

    async def refund(self, req: RefundRequest) -> RefundResult:
        self.refunds.append(req)
        if "refund" in self.fail:
            raise OutcomeUnknown("reset")
        if req.refund_id not in self.refunded:
            self.refunded[req.refund_id] = req
            self.lines.append(StatementLine(
                StatementKind.REFUND, req.order_id, req.channel_trade_no, req.amount,
                req.currency, datetime.fromtimestamp(START + 80_000, timezone.utc),
                refund_id=req.refund_id))
        return RefundResult(RefundStatus.SUCCEEDED, req.refund_id, "RF1", req.amount)


class World:
    def __init__(self, **reconcile: Any) -> None:
        self.settings = settings(**reconcile)
        self.clock = FakeClock(END + 3 * 3600)    # the next morning: the day is covered
        self.store = MemStore()
        self.shards = Shards(self.settings, self.store, self.clock)
        self.channel = Channel()
        self.shards.ports.channel = self.channel
        self.reports = Reports()
        self.refunds = Refunds()
        self.reconciler = Reconciler(
            self.settings, channels=["alipay", "wechatpay"], shards=self.shards,
            orders=Orders(self.store), reports=self.reports, refunds=self.refunds,
            connector_for=lambda ch: self.channel,  # type: ignore[arg-type,return-value]
            clock=self.clock)
        self._n = 0

    def order(self, status: OrderStatus = OrderStatus.PENDING, amount: int = 600,
              at: float = START + 3000, **kw: Any) -> Order:
        self._n += 1
        oid = make_order_id("local", "s0", self._n % 2, int(at * 1000), rand=self._n)
        cmd = CreateOrder("demo-app", f"k{self._n}", "u1", amount, "CNY", "gems", "alipay",
                          "barcode")
        o = replace(Order.new(oid, cmd, at), status=status, charge_sent=True, **kw)
        if status is not OrderStatus.PENDING:
            o = replace(o, resolved_by=Rung.SYNC)
        self.store.records[oid] = o
        return o

    async def run(self, day: str = DAY.isoformat()) -> dict[str, Any]:
        return await self.reconciler.run("alipay", day)


def rec(w: World, o: Order) -> Order:
    return w.store.records[o.order_id]


# ---- one run -------------------------------------------------------------------------------------

async def test_a_run_settles_closes_refunds_and_reports() -> None:
    w = World()
    pending_paid = w.order()                         # paid, answer and notification lost
    w.channel.paid(pending_paid.order_id)
    never_paid = w.order()                           # waiting payer, never confirmed
    w.channel.trades[never_paid.order_id] = "WAITING"
    twice = w.order(OrderStatus.SUCCEEDED)
    w.channel.paid(twice.order_id, times=2)
    ok = w.order(OrderStatus.SUCCEEDED)
    w.channel.paid(ok.order_id)
    off = w.order()
    w.channel.paid(off.order_id, amount=601)
    lost = make_order_id("local", "s0", 1, int((START + 10) * 1000), rand=999)
    w.channel.paid(lost)

    report = await w.run()

    assert report["status"] == "complete" and report["run"] == 1
    got = rec(w, pending_paid)
    assert (got.status, got.resolved_by, got.channel_trade_no) == (
        OrderStatus.SUCCEEDED, Rung.RECONCILE, "T" + pending_paid.order_id[-5:])
    closed = rec(w, never_paid)
    assert (closed.status, closed.resolved_by, closed.failure_code) == (
        OrderStatus.CLOSED, Rung.RECONCILE, "closed_unpaid")
    assert w.channel.cancels == [never_paid.order_id]
    assert w.channel.trades[never_paid.order_id] == "CLOSED"           # fenced
    assert [(r.order_id, r.refund_id, r.amount) for r in w.channel.refunds] == [
        (twice.order_id, refund_id_for("alipay", twice.order_id, 2), 600)]
    assert rec(w, off).status is OrderStatus.PENDING                   # for review, not applied
    assert rec(w, ok) == ok
    c = report["counts"]
    assert (c["lines_parsed"], c["matched"], c["settled_paid"], c["settled_closed"],
            c["refunds_sent"], c["mismatches"], c["errors"]) == (6, 2, 1, 1, 1, 3, 0)
    assert report["mismatches_by_kind"] == {"amount_mismatch": 1, "missing_in_paycell": 1,
                                            "paid_twice": 1}
    dup = next(m for m in report["mismatches"] if m["kind"] == "paid_twice")
    assert dup["refunds"] == [{"refund_id": refund_id_for("alipay", twice.order_id, 2),
                               "line": 2, "amount": 600, "currency": "CNY",
                               "status": "SUCCEEDED"}]
    assert sorted((s["order_id"], s["fact"], s["outcome"]) for s in report["settled"]) == sorted(
        [(pending_paid.order_id, "PAID", "settled"), (never_paid.order_id, "CLOSED", "settled")])
    assert w.refunds.log[dup["refunds"][0]["refund_id"]]["status"] == "SUCCEEDED"
    assert w.reports.saved[("alipay", DAY.isoformat())] == report
    assert w.reports.saves[0] == "statement" and w.reports.saves[-1] == "done"


async def test_a_second_run_changes_nothing_and_reports_the_same() -> None:
    w = World()
    a = w.order()
    w.channel.paid(a.order_id)
    b = w.order()
    twice = w.order(OrderStatus.SUCCEEDED)
    w.channel.paid(twice.order_id, times=2)
    w.channel.paid("foreign-1")
    first = await w.run()
    commits, calls = w.store.commits, (len(w.channel.cancels), len(w.channel.refunds))
    records = dict(w.store.records)

    second = await w.run()

    assert w.store.records == records and w.store.commits == commits
    assert (len(w.channel.cancels), len(w.channel.refunds)) == calls == (1, 1)
    assert second["mismatches"] == first["mismatches"]
    assert second["run"] == 2 and second["status"] == "complete"
    c1, c2 = first["counts"], second["counts"]
    assert (c1["settled_paid"], c1["settled_closed"], c1["already_settled"]) == (1, 1, 0)
    assert (c2["settled_paid"], c2["settled_closed"], c2["already_settled"]) == (0, 0, 2)
    assert (c1["refunds_sent"], c2["refunds_sent"], c2["refunds_already_done"]) == (1, 0, 1)
    assert c2["own_refund_lines"] == 1       # the refund it made is on the statement now
    assert {s["order_id"]: s["outcome"] for s in second["settled"]} == {
        a.order_id: "already_settled", b.order_id: "already_settled"}
    text = render_text(second)
    assert "already settled" in text and "paid_twice" in text and "run 2" in text


async def test_an_open_order_the_statement_does_not_cover_waits() -> None:
    w = World()
    w.clock = FakeClock(START + 4000)          # today, fetched 1000 s after the order
    w.reconciler._clock = w.clock
    young = w.order(at=START + 3800)           # window 30 s + lag 300 s: not covered yet
    old = w.order(at=START + 3000)
    report = await w.run()
    assert w.channel.cancels == [old.order_id]
    assert rec(w, young).status is OrderStatus.PENDING
    assert report["counts"]["not_due"] == 1


async def test_a_close_the_channel_answers_paid_settles_paid() -> None:
    w = World()
    w.channel.reverses = False
    o = w.order()
    w.channel.trades[o.order_id] = "PAID"      # paid after the bill was cut: not on it
    await w.run()
    assert (rec(w, o).status, rec(w, o).resolved_by) == (OrderStatus.SUCCEEDED, Rung.RECONCILE)


async def test_a_close_that_reverses_records_it() -> None:
    w = World()
    o = w.order()
    w.channel.trades[o.order_id] = "PAID"
    await w.run()
    assert (rec(w, o).status, rec(w, o).failure_code) == (OrderStatus.CLOSED,
                                                          "reversed_after_window")


async def test_a_failed_close_leaves_the_order_open_for_the_next_run() -> None:
    w = World()
    o = w.order()
    w.channel.fail.add("cancel")
    report = await w.run()
    assert rec(w, o).status is OrderStatus.PENDING
    assert (report["counts"]["left_open"], report["counts"]["errors"]) == (1, 1)
    assert report["errors"][0]["step"] == "close"
    w.channel.fail.clear()
    again = await w.run()
    assert rec(w, o).status is OrderStatus.CLOSED and again["counts"]["settled_closed"] == 1


async def test_status_mismatch_refunds_only_what_the_channel_still_holds() -> None:
    w = World()
    held = w.order(OrderStatus.FAILED)
    w.channel.paid(held.order_id)
    gone = w.order(OrderStatus.CLOSED, failure_code="closed_unpaid")
    w.channel.paid(gone.order_id)
    w.channel.trades[gone.order_id] = "CLOSED"   # reversed on a later day
    report = await w.run()
    assert [r.order_id for r in w.channel.refunds] == [held.order_id]
    assert rec(w, held).status is OrderStatus.FAILED     # final states never flip
    found = {m["order_id"]: m for m in report["mismatches"]}
    assert found[held.order_id]["refunds"][0]["status"] == "SUCCEEDED"
    assert found[gone.order_id]["refunds"] == []
    assert "nothing to refund" in found[gone.order_id]["detail"]


async def test_succeeded_orders_without_a_payment_line_are_queried() -> None:
    w = World()
    other_day = w.order(OrderStatus.SUCCEEDED)
    w.channel.trades[other_day.order_id] = "PAID"
    missing = w.order(OrderStatus.SUCCEEDED)
    report = await w.run()
    assert sorted(w.channel.queries) == sorted([other_day.order_id, missing.order_id])
    assert report["counts"]["paid_other_day"] == 1
    assert [(m["kind"], m["order_id"]) for m in report["mismatches"]] == [
        ("missing_on_channel", missing.order_id)]


async def test_an_unknown_refund_outcome_is_sent_again_with_the_same_id() -> None:
    w = World()
    o = w.order(OrderStatus.SUCCEEDED)
    w.channel.paid(o.order_id, times=2)
    w.channel.fail.add("refund")
    first = await w.run()
    rid = refund_id_for("alipay", o.order_id, 2)
    assert w.refunds.log[rid]["status"] == "SENDING"     # written before the channel saw it
    assert first["mismatches"][0]["refunds"][0]["status"] == "UNKNOWN"
    w.channel.fail.clear()
    second = await w.run()
    assert [r.refund_id for r in w.channel.refunds] == [rid, rid]
    assert len(w.channel.refunded) == 1 and w.refunds.log[rid]["status"] == "SUCCEEDED"
    assert second["counts"]["refunds_sent"] == 1
    await w.run()
    assert len(w.channel.refunds) == 2                    # done: never sent again


async def test_channel_calls_past_the_budget_wait_for_the_next_run() -> None:
    w = World(actions_max=1)
    first, second = w.order(), w.order()
    report = await w.run()
    assert len(w.channel.cancels) == 1 and report["counts"]["deferred"] == 1
    assert {rec(w, first).status, rec(w, second).status} == {OrderStatus.CLOSED,
                                                             OrderStatus.PENDING}
    await w.run()
    assert rec(w, first).status is rec(w, second).status is OrderStatus.CLOSED


async def test_a_shard_that_cannot_be_reached_is_retried_by_the_next_run() -> None:
    w = World()
    o = w.order()
    w.channel.paid(o.order_id)
    w.shards.down = True
    report = await w.run()
    assert rec(w, o).status is OrderStatus.PENDING
    assert report["counts"]["left_open"] == 1 and report["errors"][0]["step"] == "settle"
    w.shards.down = False
    assert (await w.run())["counts"]["settled_paid"] == 1


async def test_a_statement_that_cannot_be_fetched_fails_the_run() -> None:
    w = World()
    o = w.order()
    w.channel.fail.add("statement")
    report = await w.run()
    assert report["status"] == "failed" and report["finished_at"] is not None
    assert "statement unavailable: OutcomeUnknown" in report["errors"][0]["detail"]
    assert w.channel.cancels == [] and rec(w, o).status is OrderStatus.PENDING
    assert "failed" in render_text(report)


# ---- starting runs -------------------------------------------------------------------------------

async def test_start_refuses_unknown_channels_and_bad_days() -> None:
    w = World()
    assert (await w.reconciler.start("paypal", "2026-11-25"))["error"] == "not_found"
    for bad in ("2026-13-01", "25/11/2026", "2026-11-25x", "2026-11-27"):
        assert (await w.reconciler.start("alipay", bad))["error"] == "invalid_request", bad
    assert w.reports.saved == {}


async def test_concurrent_starts_join_one_run_and_a_third_day_waits() -> None:
    w = World(runs_inflight_max=2)
    gate = asyncio.Event()
    real = w.channel.statement

    async def slow(day: date) -> Statement:
        await gate.wait()
        return await real(day)
    w.channel.statement = slow  # type: ignore[method-assign]
    a = await w.reconciler.start("alipay", "2026-11-25")
    b = await w.reconciler.start("alipay", "2026-11-25")
    assert a["status"] == b["status"] == "running" and a["run"] == b["run"] == 1
    await w.reconciler.start("alipay", "2026-11-24")
    refused = await w.reconciler.start("alipay", "2026-11-23")
    assert (refused["error"], refused["retry_after_s"]) == ("overloaded", 5)
    gate.set()
    final = await w.run()
    assert final["status"] == "complete" and final["run"] == 1


async def test_a_run_a_dead_actor_left_running_is_marked_interrupted() -> None:
    w = World()
    w.reports.saved[("alipay", "2026-11-20")] = {"channel": "alipay", "day": "2026-11-20",
                                                 "status": "running", "phase": "closing",
                                                 "run": 3}
    await w.reconciler.ping()
    assert w.reports.saved[("alipay", "2026-11-20")]["status"] == "interrupted"


def test_parse_day() -> None:
    assert parse_day("2026-11-25", date(2026, 11, 25)) == DAY


def test_the_daily_run_time() -> None:
    w = World(run_at_utc="02:30")
    at = w.reconciler._next_daily(END + 3 * 3600)          # 03:00 the next day
    assert at == END + 86_400 + 2.5 * 3600
    assert w.reconciler._next_daily(END + 3600) == END + 2.5 * 3600


async def test_the_schedule_runs_the_days_back_for_each_channel() -> None:
    w = World(enabled=True, run_at_utc="02:30", days_back=2, channels="alipay")
    w.clock = FakeClock(END + 2.5 * 3600 - 1)               # a second before the daily run
    w.reconciler._clock = w.clock
    ran: list[tuple[str, str]] = []

    async def run(channel: str, day: str) -> dict[str, Any]:
        ran.append((channel, day))
        return {}
    w.reconciler.run = run  # type: ignore[method-assign,assignment]
    await w.reconciler.ping()
    await asyncio.sleep(0.01)
    assert ran == []
    w.clock.advance(1)
    for _ in range(100):
        if len(ran) == 2:
            break
        await asyncio.sleep(0.01)
    assert ran == [("alipay", "2026-11-24"), ("alipay", "2026-11-25")]
    assert w.reconciler._scheduler is not None
    w.reconciler._scheduler.cancel()


# ---- the shard's side ----------------------------------------------------------------------------

async def test_the_shard_applies_settlements_with_rung_reconcile() -> None:
    w = World()
    pending, done, other = w.order(), w.order(OrderStatus.SUCCEEDED), w.order()
    shard = w.shards.shards[parse_order_id(pending.order_id).shard]  # type: ignore[union-attr]
    facts = [Settlement(pending.order_id, Fact.PAID, "T9", 600, "CNY"),
             Settlement(done.order_id, Fact.CLOSED, failure_code="closed_unpaid"),
             Settlement(other.order_id, Fact.PAID, "T8", 599, "CNY"),
             Settlement("P_local_s0_0_0mwvf2cg00000000777", Fact.PAID)]
    answers = await shard.settle(facts)
    assert [(a["outcome"], a.get("status")) for a in answers] == [
        ("moved", "SUCCEEDED"), ("conflict", "SUCCEEDED"), ("conflict", "PENDING"),
        ("unknown", None)]
    assert answers[0]["resolved_by"] == "reconcile"
    assert rec(w, pending).history[-1].rung == "reconcile"
    assert rec(w, done).conflicts == 1 and rec(w, other).status is OrderStatus.PENDING
    again = await shard.settle(facts[:1])
    assert again[0]["outcome"] == "noop"


async def test_the_shard_answers_unavailable_when_it_cannot_commit() -> None:
    w = World()
    o = w.order()
    shard = w.shards.shards[parse_order_id(o.order_id).shard]  # type: ignore[union-attr]
    w.store.down = True
    (answer,) = await shard.settle([Settlement(o.order_id, Fact.CLOSED)])
    assert answer == {"order_id": o.order_id, "outcome": "unavailable", "detail": "unavailable"}
    assert rec(w, o).status is OrderStatus.PENDING
    w.store.down = False
    (answer,) = await shard.settle([Settlement(o.order_id, Fact.CLOSED)])
    assert answer["outcome"] == "moved"


@pytest.mark.parametrize("name,value,message", [
    ("run_at_utc", "2:30", "reconcile.run_at_utc"), ("run_at_utc", "24:00", "reconcile.run_at"),
    ("days_back", 0, "reconcile.days_back"), ("channels", "alipay,visa", "reconcile.channels"),
    ("actions_max", 0, "reconcile.actions_max")])
def test_reconcile_settings_are_checked(name: str, value: Any, message: str) -> None:
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match=message):
        settings(**{name: value})


def test_operator_credentials_are_checked() -> None:
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match="ops.operator_id"):
        load_settings(env={}, overrides={"ops": {"operator_id": "demo-app"}})
    with pytest.raises(ConfigError, match="ops.operator_secret"):
        load_settings(env={}, overrides={"ops": {"operator_secret": "short"}})
    s = load_settings(env={"PAYCELL_OPS__OPERATOR_SECRET": "an-operator-secret-0123"})
    assert s.ops.operator_secret.reveal() == "an-operator-secret-0123"
    assert "an-operator" not in repr(s.ops)


async def test_the_text_summary_reads_the_report() -> None:
    w = World()
    o = w.order(OrderStatus.SUCCEEDED, amount=1200)
    w.channel.paid(o.order_id, amount=1200, times=2)
    w.channel.lines.append(replace(w.channel.lines[0], fee=7))
    w.channel.fail.add("refund")
    text = render_text(await w.run())
    lines = text.splitlines()
    assert lines[0] == ("Reconciliation of alipay for 2026-11-25 (region local, SET s0): "
                        "complete, run 1")
    assert lines[2] == ("  statement: 3 lines (3 payments, 0 refunds); "
                        "CNY: paid 36.00, refunded 0.00, fees 0.07")
    assert "  mismatches: 1 (paid_twice 1)" in lines
    rid2, rid3 = (refund_id_for("alipay", o.order_id, n) for n in (2, 3))
    assert (f"    paid_twice             {o.order_id}  3 payments for one order: the extra 2 "
            f"refunded [refund {rid2} 12.00 CNY UNKNOWN] [refund {rid3} 12.00 CNY UNKNOWN]"
            ) in lines
    assert "  errors: 2" in lines and text.endswith("\n")


async def test_the_shard_holds_the_order_across_its_close() -> None:
    """The close notification the channel sends the moment it closes a trade waits for the
    shard's own commit: the order is resolved by the reconciler, the notification is a noop."""
    w = World()
    o = w.order()
    w.channel.trades[o.order_id] = "WAITING"
    shard = w.shards.shards[parse_order_id(o.order_id).shard]  # type: ignore[union-attr]
    gate, cancelled = asyncio.Event(), asyncio.Event()
    real = w.channel.cancel

    async def slow_cancel(order_id: str) -> ChannelResult:
        res = await real(order_id)
        cancelled.set()
        await gate.wait()                  # the answer is on its way back
        return res
    w.channel.cancel = slow_cancel  # type: ignore[method-assign]
    closing = asyncio.create_task(shard.reconcile_close([o.order_id]))
    await asyncio.wait_for(cancelled.wait(), 5)
    note = asyncio.create_task(shard.notify(Notification(
        o.order_id, Fact.CLOSED, "", None, "", "n1", "TRADE_CLOSED")))
    await asyncio.sleep(0.05)
    assert not note.done() and rec(w, o).status is OrderStatus.PENDING
    gate.set()
    (answer,) = await closing
    assert await note is True
    assert (answer["outcome"], answer["fact"], answer["action"]) == ("moved", "CLOSED", "close")
    got = rec(w, o)
    assert (got.status, got.resolved_by, got.failure_code) == (
        OrderStatus.CLOSED, Rung.RECONCILE, "closed_unpaid")


async def test_the_shard_leaves_open_what_its_cancel_cannot_close() -> None:
    w = World()
    final, unknown, waiting = w.order(OrderStatus.SUCCEEDED), w.order(), w.order()
    shard = w.shards.shards[0]
    ids = [x.order_id for x in (final, unknown, waiting)]
    assert {parse_order_id(i).shard for i in ids} == {0, 1}  # type: ignore[union-attr]
    real = w.channel.cancel

    async def cancel(order_id: str) -> ChannelResult:
        if order_id == unknown.order_id:
            raise OutcomeUnknown("timeout")
        if order_id == waiting.order_id:
            return ChannelResult(Fact.WAITING, raw_status="USERPAYING")
        return await real(order_id)
    w.channel.cancel = cancel  # type: ignore[method-assign]
    answers = {a["order_id"]: a for a in await shard.reconcile_close(ids)}
    assert answers[final.order_id]["outcome"] == "noop"
    assert answers[unknown.order_id] == {"order_id": unknown.order_id, "outcome": "left_open",
                                         "detail": "cancel: OutcomeUnknown"}
    assert answers[waiting.order_id]["outcome"] == "left_open"
    assert w.channel.cancels == []           # never called for the final one
    assert rec(w, unknown).status is rec(w, waiting).status is OrderStatus.PENDING



def pending_refund(w: World, o: Order, amount: int, at: float = START + 4000) -> Refund:
    """A refund paycell created and the channel accepted, still PENDING (its order reserved)."""
    shard = parse_order_id(o.order_id).shard  # type: ignore[union-attr]
    rid = make_refund_id("local", "s0", shard, int(at * 1000), rand=len(w.store.refunds) + 1)
    r = Refund.new(rid, CreateRefund(o.app_id, o.order_id, f"rf{rid[-4:]}", amount), o, at)
    w.store.records[o.order_id] = reserve(w.store.records[o.order_id], amount)
    w.store.refunds[rid] = r
    return r


async def test_a_pending_refund_the_statement_shows_is_settled_once() -> None:
    w = World()
    o = w.order(OrderStatus.SUCCEEDED, amount=1200)
    w.channel.paid(o.order_id, amount=1200)
    r = pending_refund(w, o, 500)
    w.channel.lines.append(StatementLine(
        StatementKind.REFUND, o.order_id, "T1", 500, "CNY",
        datetime.fromtimestamp(START + 5000, timezone.utc), refund_id=r.refund_id,
        channel_refund_no="RF77"))
    first = await w.run()
    got = w.store.refunds[r.refund_id]
    assert (got.status, got.resolved_by, got.channel_refund_no) == (
        PaycellRefundStatus.SUCCEEDED, Rung.RECONCILE, "RF77")
    assert (rec(w, o).refunded_amount, rec(w, o).refund_reserved) == (500, 500)
    assert (first["counts"]["refunds_settled"], first["mismatches"]) == (1, [])
    second = await w.run()
    assert (second["counts"]["refunds_settled"], second["counts"]["refunds_already_settled"]) \
        == (0, 1)
    assert rec(w, o).refunded_amount == 500


async def test_pending_refunds_past_their_window_are_asked_for() -> None:
    w = World()
    o = w.order(OrderStatus.SUCCEEDED, amount=1200)
    w.channel.paid(o.order_id, amount=1200)
    done, refused, unknown = (pending_refund(w, o, 100), pending_refund(w, o, 200),
                              pending_refund(w, o, 300))
    w.channel.refund_states = {done.refund_id: RefundStatus.SUCCEEDED,
                               refused.refund_id: RefundStatus.FAILED}
    report = await w.run()
    assert sorted(w.channel.queries) == sorted([done.refund_id, refused.refund_id,
                                                unknown.refund_id])
    status = {rid: w.store.refunds[rid].status for rid in w.store.refunds}
    assert status == {done.refund_id: PaycellRefundStatus.SUCCEEDED,
                      refused.refund_id: PaycellRefundStatus.FAILED,
                      unknown.refund_id: PaycellRefundStatus.PENDING}
    assert (rec(w, o).refunded_amount, rec(w, o).refund_reserved) == (100, 400)
    c = report["counts"]
    assert (c["refunds_settled"], c["refunds_left_pending"]) == (2, 1)


@pytest.mark.parametrize("reverses,status,code", [
    (True, OrderStatus.CLOSED, "reversed_after_window"), (False, OrderStatus.SUCCEEDED, "")])
async def test_a_paid_order_whose_cancel_was_sent_is_decided_by_the_cancel(
        reverses: bool, status: OrderStatus, code: str) -> None:
    w = World()
    w.channel.reverses = reverses
    o = w.order(cancel_sent=True)           # the shard's cancel went out; its answer was lost
    w.channel.paid(o.order_id)
    report = await w.run()
    got = rec(w, o)
    assert (got.status, got.resolved_by, got.failure_code) == (status, Rung.RECONCILE, code)
    assert w.channel.cancels == [o.order_id]
    assert report["counts"]["settled_" + ("closed" if reverses else "paid")] == 1


async def test_a_cancel_sent_after_the_snapshot_still_decides() -> None:
    """The matcher saw the order without cancel_sent; the shard refuses the statement's payment
    and the same run closes it."""
    w = World()
    o = w.order()
    w.channel.paid(o.order_id)
    w.store.records[o.order_id] = replace(o, cancel_sent=True)   # the shard's cancel, meanwhile
    stale = Orders(w.store)

    async def get_many(order_ids: list[str]) -> dict[str, Order | None]:
        return {oid: (o if oid == o.order_id else w.store.records.get(oid)) for oid in order_ids}
    stale.get_many = get_many  # type: ignore[method-assign]
    w.reconciler._orders = stale
    report = await w.run()
    assert w.channel.cancels == [o.order_id]
    assert (rec(w, o).status, rec(w, o).failure_code) == (OrderStatus.CLOSED,
                                                          "reversed_after_window")
    assert report["counts"]["settled_closed"] == 1 and report["counts"]["errors"] == 0


async def test_the_close_is_marked_sent_before_the_channel_sees_it() -> None:
    w = World()
    o = w.order()
    seen: list[bool] = []
    real = w.channel.cancel

    async def cancel(order_id: str) -> ChannelResult:
        seen.append(w.store.records[order_id].cancel_sent)
        return await real(order_id)
    w.channel.cancel = cancel  # type: ignore[method-assign]
    await w.run()
    assert seen == [True] and rec(w, o).status is OrderStatus.CLOSED


# ---- counters for /metrics ----------------------------------------------------------------------

async def test_stats_count_runs_settlements_mismatches_and_the_last_run() -> None:
    w = World()
    pending_paid = w.order()
    w.channel.paid(pending_paid.order_id)
    never_paid = w.order()
    w.channel.trades[never_paid.order_id] = "WAITING"
    twice = w.order(OrderStatus.SUCCEEDED)
    w.channel.paid(twice.order_id, times=2)
    w.channel.paid(make_order_id("local", "s0", 1, int((START + 10) * 1000), rand=999))
    fetch = w.channel.statement

    async def slow_statement(day: date) -> Statement:
        w.clock.advance(7.5)                       # the run takes 7.5 s of the clock
        return await fetch(day)
    w.channel.statement = slow_statement           # type: ignore[method-assign]
    assert await w.reconciler.stats() == {"runs_inflight": 0, "runs": {}, "settled": {},
                                          "mismatches": {}, "last_run": {}}
    started = w.clock.time()
    first = await w.run()
    second = await w.run()                         # settles nothing, reports the same
    w.channel.fail.add("statement")
    failed = await w.run()

    assert (first["status"], second["status"], failed["status"]) == (
        "complete", "complete", "failed")
    s = await w.reconciler.stats()
    assert s["runs"] == {"alipay": {"complete": 2, "failed": 1}}
    assert s["settled"] == {"alipay": {"paid": 1, "closed": 1, "refunded": 1,
                                       "refund_settled": 0}}
    assert s["mismatches"] == {"alipay": {"missing_in_paycell": 2, "paid_twice": 2}}
    assert s["last_run"] == {"alipay": {"day": DAY.isoformat(), "status": "failed",
                                        "started_at": started + 15.0,
                                        "finished_at": started + 22.5, "duration_s": 7.5}}
    assert s["runs_inflight"] == 0


def test_the_gateway_renders_the_reconciler_counters_for_prometheus() -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from gateway.metrics import GatewayMetrics
    m = GatewayMetrics()
    assert b"paycell_reconciler" not in m.render()          # nothing until the actor answered
    m.reconciler.update({
        "runs_inflight": 1, "runs": {"alipay": {"complete": 2, "failed": 1}},
        "settled": {"alipay": {"paid": 3, "closed": 1, "refunded": 1, "refund_settled": 0}},
        "mismatches": {"alipay": {"paid_twice": 2}},
        "last_run": {"alipay": {"day": "2026-11-25", "status": "complete",
                                "started_at": 100.0, "finished_at": 107.5,
                                "duration_s": 7.5}}})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(m.render().decode())
               for s in f.samples if s.name.startswith("paycell_reconciler")}
    ch = ("channel", "alipay")
    assert samples == {
        ("paycell_reconciler_runs_total", (ch, ("outcome", "complete"))): 2.0,
        ("paycell_reconciler_runs_total", (ch, ("outcome", "failed"))): 1.0,
        ("paycell_reconciler_settled_total", (ch, ("kind", "closed"))): 1.0,
        ("paycell_reconciler_settled_total", (ch, ("kind", "paid"))): 3.0,
        ("paycell_reconciler_settled_total", (ch, ("kind", "refund_settled"))): 0.0,
        ("paycell_reconciler_settled_total", (ch, ("kind", "refunded"))): 1.0,
        ("paycell_reconciler_mismatches_total", (ch, ("kind", "paid_twice"))): 2.0,
        ("paycell_reconciler_last_run_duration_seconds", (ch,)): 7.5,
        ("paycell_reconciler_last_run_timestamp_seconds", (ch,)): 107.5,
        ("paycell_reconciler_runs_inflight", ()): 1.0,
    }
