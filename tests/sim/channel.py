"""The simulated payment channels: a ledger that is the money truth, faults, and notifications.

`SimChannels` is the channels' side (shared by every shard incarnation, as the real channels
are): per (channel, merchant trade number) one trade in the ledger, in one of the states
  WAITING   created, the payer has not confirmed (prepay / QR code)
  PAID      money taken
  DECLINED  refused before money moved
  CLOSED    closed with no money moved (a cancel, also of a trade number never charged: the
            fence that makes a late charge fail)
  REVERSED  paid, then cancelled after the window: the money went back
A charge request is applied when it reaches the channel, whatever happens to the caller
afterwards (the shard may have crashed, the answer may be lost); a second charge for the same
trade number is answered from the trade, as Alipay and WeChat Pay do, and counted, so a shard
that sends one order's charge twice is caught (`charge_requests`). With `double_charge` (a bug
injected by the checkers' own tests) the channel takes a payment's money twice.

`SimChannelPort` is the shard's side, one per incarnation: what actors.local_channels.
LocalChannelPort does (the real Router with its limiter and breakers, the in-flight bound,
recording each attempt), with the connector replaced by calls into `SimChannels`.
"""
from __future__ import annotations

import asyncio
import contextvars
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from channels.base import (Capabilities, ChannelError, ChannelResult, ChargeRequest, NotSent,
                           Notification, OutcomeUnknown)
from actors.local_channels import attempt_of
from channels.routing import Payment, Router, policy_from_settings
from core.settings import Settings
from core.states import Fact
from tests.sim.swarm import CHANNELS

if TYPE_CHECKING:
    from tests.sim.loop import SimClock
    from tests.sim.world import World

PAYMENT_TYPES = frozenset({"barcode", "app", "native", "card"})


@dataclass
class Trade:
    channel: str
    order_id: str
    amount: int
    currency: str
    state: str
    trade_no: str
    payments: int = 0          # times money was taken (more than 1: a double charge)


@dataclass
class CancelAttempt:
    incarnation: int
    ok: bool | None            # the shard got a CLOSED answer (None: no answer yet)


class SimChannels:
    def __init__(self, world: "World", rng: random.Random, *, double_charge: bool = False) -> None:
        self._world = world
        self._rng = rng
        self._double_charge = double_charge
        self.ledger: dict[tuple[str, str], Trade] = {}
        self.charge_requests: dict[tuple[str, str], int] = {}
        self.cancels: dict[str, list[CancelAttempt]] = {}
        self.outstanding = 0       # requests in flight at the channel, payer confirmations due
        self._trade_seq = 0

    # ---- timing helpers
    def _latency(self) -> float:
        return self._rng.uniform(*self._world.swarm.channel_latency_s)

    def _later(self, at: float, fn: Any, *args: Any) -> None:
        """Run fn at virtual time `at`, counted as outstanding until then."""
        self.outstanding += 1

        def run() -> None:
            self.outstanding -= 1
            fn(*args)
        # In a fresh context: what the channel does later is not the calling shard's work.
        asyncio.get_running_loop().call_at(at, run, context=contextvars.Context())

    async def _answer(self, fut: asyncio.Future[ChannelResult], sent: float, reply_at: float
                      ) -> ChannelResult:
        """Wait for the answer, or the connector's call timeout (then the outcome is unknown)."""
        timeout_at = sent + self._world.swarm.call_timeout_s
        if reply_at > timeout_at:
            asyncio.get_running_loop().call_at(timeout_at, _fail, fut,
                                               OutcomeUnknown("call timed out"))
        return await fut

    # ---- charge
    async def charge(self, channel: str, req: ChargeRequest) -> ChannelResult:
        world, sw, rng = self._world, self._world.swarm, self._rng
        world.check_caller_alive("channel charge")
        loop = asyncio.get_running_loop()
        now = loop.time()
        faults = world.faults_on
        if faults and rng.random() < sw.p_not_sent:
            world.fault("charge_not_sent")
            await asyncio.sleep(self._latency())
            raise NotSent(f"{channel}: connection refused")
        outcome = rng.choices(("paid", "declined", "waiting"), weights=sw.charge_weights)[0]
        apply_at = now + self._latency()
        if faults and rng.random() < sw.p_hang:
            world.fault("charge_hang")
            apply_at += rng.uniform(0.0, 2 * sw.call_timeout_s)
        lost_before = faults and rng.random() < sw.p_error_before_commit
        lost_after = not lost_before and faults and rng.random() < sw.p_commit_then_drop
        if lost_before:
            world.fault("charge_error_before_commit")
        if lost_after:
            world.fault("charge_commit_then_drop")
        reply_at = apply_at + self._latency()
        fut: asyncio.Future[ChannelResult] = loop.create_future()

        def arrive() -> None:
            key = (channel, req.order_id)
            self.charge_requests[key] = self.charge_requests.get(key, 0) + 1
            world.note(f"{channel} charge {req.order_id} {outcome}"
                       f"{' lost before commit' if lost_before else ''}"
                       f"{' answer lost' if lost_after else ''}")
            if lost_before:
                result: ChannelResult | ChannelError = OutcomeUnknown("HTTP 503 before commit")
            else:
                result = self._apply_charge(channel, req, outcome)
                if lost_after:
                    result = OutcomeUnknown("connection reset after commit")
            self._later(reply_at, _settle, fut, result)

        self._later(apply_at, arrive)
        return await self._answer(fut, now, reply_at)

    def _apply_charge(self, channel: str, req: ChargeRequest, outcome: str) -> ChannelResult:
        key = (channel, req.order_id)
        trade = self.ledger.get(key)
        if trade is not None:     # same trade number again: answered from the trade
            if trade.state in ("CLOSED", "REVERSED"):
                return ChannelResult(Fact.DECLINED, failure_code="TRADE_HAS_CLOSE",
                                     raw_status=trade.state)
            return self._result(trade)
        self._trade_seq += 1
        state = {"paid": "PAID", "declined": "DECLINED", "waiting": "WAITING"}[outcome]
        payments = 0 if state != "PAID" else 2 if self._double_charge else 1
        trade = Trade(channel, req.order_id, req.amount, req.currency, state,
                      f"T{self._trade_seq:06d}", payments=payments)
        self.ledger[key] = trade
        if state == "PAID":
            self._notify(trade, Fact.PAID)
        elif state == "DECLINED" and self._world.swarm.notify_declines:
            self._notify(trade, Fact.DECLINED)
        elif state == "WAITING" and self._rng.random() < self._world.swarm.p_payer_confirms:
            now = asyncio.get_running_loop().time()
            self._later(now + self._rng.uniform(0.05, self._world.swarm.payer_delay_max_s),
                        self._payer_confirms, trade)
        return self._result(trade)

    def _payer_confirms(self, trade: Trade) -> None:
        self._world.note(f"{trade.channel} payer confirms {trade.order_id} ({trade.state})")
        if trade.state == "WAITING":   # a closed trade refuses the payer
            trade.state = "PAID"
            trade.payments += 1
            self._notify(trade, Fact.PAID)

    @staticmethod
    def _result(trade: Trade) -> ChannelResult:
        if trade.state == "PAID":
            return ChannelResult(Fact.PAID, channel_trade_no=trade.trade_no, amount=trade.amount,
                                 currency=trade.currency, raw_status="PAID")
        if trade.state == "DECLINED":
            return ChannelResult(Fact.DECLINED, failure_code="SIM_DECLINED", raw_status="DECLINED")
        if trade.state == "WAITING":
            return ChannelResult(Fact.WAITING, channel_trade_no=trade.trade_no,
                                 raw_status="WAITING", pay_data={"qr": f"sim://{trade.trade_no}"})
        return ChannelResult(Fact.CLOSED, channel_trade_no=trade.trade_no, raw_status=trade.state,
                             action="refund" if trade.state == "REVERSED" else "close")

    # ---- query
    async def query(self, channel: str, order_id: str) -> ChannelResult:
        world, sw, rng = self._world, self._world.swarm, self._rng
        world.check_caller_alive("channel query")
        loop = asyncio.get_running_loop()
        now = loop.time()
        run_at = now + self._latency()
        if world.faults_on and rng.random() < sw.p_query_slow:
            world.fault("query_slow")
            run_at += rng.uniform(0.0, 2 * sw.call_timeout_s)
        failed = world.faults_on and rng.random() < sw.p_query_fail
        if failed:
            world.fault("query_fail")
        reply_at = run_at + self._latency()
        fut: asyncio.Future[ChannelResult] = loop.create_future()

        def run() -> None:
            trade = self.ledger.get((channel, order_id))
            result: ChannelResult | ChannelError
            if failed:
                result = OutcomeUnknown("HTTP 500")
            elif trade is None:
                result = ChannelResult(Fact.WAITING, raw_status="TRADE_NOT_EXIST", exists=False)
            else:
                result = self._result(trade)
            said = type(result).__name__ if isinstance(result, ChannelError) else result.fact.value
            world.note(f"{channel} query {order_id} -> {said}")
            self._later(reply_at, _settle, fut, result)

        self._later(run_at, run)
        return await self._answer(fut, now, reply_at)

    # ---- cancel (close, or reverse a payment: the fence at the window's end)
    async def cancel(self, channel: str, order_id: str) -> ChannelResult:
        world, sw, rng = self._world, self._world.swarm, self._rng
        world.check_caller_alive("channel cancel")
        loop = asyncio.get_running_loop()
        now = loop.time()
        run_at = now + self._latency()
        refused = world.faults_on and rng.random() < sw.p_cancel_fail
        lost = not refused and world.faults_on and rng.random() < sw.p_cancel_ack_lost
        if refused:
            world.fault("cancel_fail")
        if lost:
            world.fault("cancel_ack_lost")
        reply_at = run_at + self._latency()
        fut: asyncio.Future[ChannelResult] = loop.create_future()

        def run() -> None:
            result: ChannelResult | ChannelError
            if refused:
                result = OutcomeUnknown("HTTP 500 before cancel")
            else:
                result = self._apply_cancel(channel, order_id)
                world.note(f"{channel} cancel {order_id} -> "
                           f"{self.ledger[(channel, order_id)].state}")
                if lost:
                    result = OutcomeUnknown("connection reset after cancel")
            self._later(reply_at, _settle, fut, result)

        self._later(run_at, run)
        attempt = CancelAttempt(world.incarnation_id(), ok=None)
        self.cancels.setdefault(order_id, []).append(attempt)
        try:
            result = await self._answer(fut, now, reply_at)
        except ChannelError:
            attempt.ok = False
            raise
        attempt.ok = result.fact is Fact.CLOSED
        return result

    def _apply_cancel(self, channel: str, order_id: str) -> ChannelResult:
        key = (channel, order_id)
        trade = self.ledger.get(key)
        if trade is None:          # never charged (or not yet): fence the trade number
            self._trade_seq += 1
            trade = Trade(channel, order_id, 0, "", "CLOSED", f"T{self._trade_seq:06d}")
            self.ledger[key] = trade
        elif trade.state == "WAITING":
            trade.state = "CLOSED"
            if self._world.swarm.notify_closes:
                self._notify(trade, Fact.CLOSED)
        elif trade.state == "PAID":
            trade.state = "REVERSED"
            if self._world.swarm.notify_closes:
                self._notify(trade, Fact.CLOSED)
        elif trade.state == "DECLINED":   # nothing to close: no money moved
            return ChannelResult(Fact.CLOSED, channel_trade_no=trade.trade_no,
                                 raw_status=trade.state, action="close")
        return self._result(trade)

    # ---- notifications
    def _notify(self, trade: Trade, fact: Fact) -> None:
        world, sw, rng = self._world, self._world.swarm, self._rng
        note = Notification(order_id=trade.order_id, fact=fact, channel_trade_no=trade.trade_no,
                            amount=trade.amount if fact is Fact.PAID else None,
                            currency=trade.currency, notify_id=f"N{trade.trade_no}{fact.value}",
                            raw_status=trade.state, channel=trade.channel)
        copies = 1
        if world.faults_on and rng.random() < sw.p_notify_dup:
            world.fault("notify_dup")
            copies += rng.randint(1, 3)
        now = asyncio.get_running_loop().time()
        for _ in range(copies):
            delay = self._latency()
            if world.faults_on:
                delay += rng.uniform(0.0, sw.notify_delay_max_s)
            self._later(now + delay, self._deliver, note, 1)

    def _deliver(self, note: Notification, attempt: int) -> None:
        world, sw, rng = self._world, self._world.swarm, self._rng
        if world.faults_on and rng.random() < sw.p_notify_drop:
            world.fault("notify_drop")
            self._retry(note, attempt)
            return
        self.outstanding += 1
        world.note(f"notify {note.order_id} {note.fact.value} attempt {attempt}")
        task = world.spawn(world.deliver_notification(note))

        def done(t: asyncio.Task[bool]) -> None:
            self.outstanding -= 1
            if t.cancelled() or t.exception() is not None or not t.result():
                self._retry(note, attempt)
        task.add_done_callback(done)

    def _retry(self, note: Notification, attempt: int) -> None:
        if attempt >= self._world.swarm.notify_attempts_max:
            return               # the channel gives up; query and cancel still resolve the order
        now = asyncio.get_running_loop().time()
        self._later(now + self._rng.uniform(0.2, 1.0) * attempt, self._deliver, note, attempt + 1)


class SimChannelPort:
    """actors.shard.ChannelPort for one shard incarnation (as LocalChannelPort, minus HTTP)."""

    def __init__(self, net: SimChannels, settings: Settings, clock: "SimClock",
                 rng: random.Random, qps: tuple[int, ...],
                 fallback_order: tuple[str, ...] = CHANNELS) -> None:
        self._net = net
        self._clock = clock
        self._inflight_max = settings.orders.channel_charges_inflight_max
        self._inflight: dict[str, int] = {}
        capabilities = {name: Capabilities(currencies=frozenset({"CNY"}),
                                           payment_types=PAYMENT_TYPES, qps=q)
                        for name, q in zip(CHANNELS, qps)}
        # (settings name only real channels in routing.fallback_order: the sim's go in here)
        policy = replace(policy_from_settings(settings.routing, settings.orders.shard_count),
                         fallback_order=fallback_order)
        self.router = Router(policy, capabilities, clock=clock.monotonic, rng=rng)

    def route(self, payment: Payment, exclude: tuple[str, ...] = ()) -> list[str]:
        return self.router.candidates(payment, exclude)

    def takes(self, channel: str, payment: Payment) -> bool:
        return self.router.takes(channel, payment)

    def admit(self, channel: str) -> bool:
        return channel in CHANNELS and self.router.admit(channel)

    async def charge(self, channel: str, req: ChargeRequest, admitted: bool = False
                     ) -> ChannelResult:
        if self._inflight.get(channel, 0) >= self._inflight_max:
            raise NotSent(f"{channel}: {self._inflight_max} charges already in flight")
        if not admitted and not self.router.admit(channel):
            raise NotSent(f"{channel}: circuit open or at its rate limit")
        self._inflight[channel] = self._inflight.get(channel, 0) + 1
        started = self._clock.monotonic()
        res: ChannelResult | ChannelError | None = None
        try:
            res = await self._net.charge(channel, req)
            return res
        except ChannelError as e:
            res = e
            raise
        finally:
            self._inflight[channel] -= 1
            if res is not None:
                self.router.record(channel, attempt_of(res),
                                   (self._clock.monotonic() - started) * 1000)

    async def query(self, channel: str, order_id: str, currency: str) -> ChannelResult:
        return await self._net.query(channel, order_id)

    async def cancel(self, channel: str, order_id: str) -> ChannelResult:
        return await self._net.cancel(channel, order_id)

    def stats(self) -> dict[str, Any]:
        return {"routing": self.router.snapshot(), "inflight": dict(self._inflight)}


def _settle(fut: asyncio.Future[ChannelResult], result: ChannelResult | ChannelError) -> None:
    if fut.done():
        return
    if isinstance(result, ChannelError):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def _fail(fut: asyncio.Future[ChannelResult], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
