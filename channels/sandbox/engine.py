"""What every channel sandbox shares: the amount scenarios, the fault knobs, the ledger, the
notifier and the control endpoints. A channel's sandbox (channels/sandbox/<name>.py) subclasses
ChannelSandbox, adds its wire protocol's routes and renders each Outcome in its own words.

The outcome of a charge is fixed by the amount in minor units, by its last two digits, the same
for every channel (so one conformance suite runs against all of them):

  ==  ========================================================================================
  00  paid at once, notification (also every ending not listed below)
  01  declined: the channel's business failure (balance, card declined), nothing charged
  02  waiting for the payer; the payer confirms after payer_confirm_ms -> paid + notification
  03  waiting for the payer; the payer never confirms
  04  paid at once, but the HTTP answer is held for hang_ms
  05  paid, then the connection is closed without an answer (commit-then-drop)
  06  as 05, and the notification is dropped too (only a query can tell)
  07  a "system error, retry" answer, nothing committed (a query finds no trade)
  08  a "system error" answer, but the trade WAS committed as paid (with notification)
  ==  ========================================================================================

For prepay payment types (app, native: the payer pays later in the channel's app) 00 means the
payer pays after payer_confirm_ms, 01 that the payer's payment fails, 03 that the payer never pays.

Random faults (seeded RNG) apply only to charges whose amount means "paid at once": one draw r in
[0, 1) picks error (r < error_rate, as 07), decline (next decline_rate, as 01), commit-then-drop
(next commit_then_drop_rate, as 05) or hang (next hang_rate, as 04).

A repeated charge for a merchant trade number: paid -> ALREADY_PAID, nothing charged (with the
naive_charge knob a paid or waiting trade is charged again by every request); waiting -> WAITING;
closed -> ALREADY_CLOSED; another amount -> MISMATCH.
"""
from __future__ import annotations

import asyncio
import base64
import enum
import random
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, ClassVar

import orjson
from aiohttp import web

from channels.sandbox.knobs import Knobs
from core import heap
from channels.transport import read_upto
from channels.sandbox.ledger import (Ledger, LedgerFull, Refund, RefundRefused, RefundState,
                                     Trade, TradeStatus)
from channels.sandbox.notifier import NOTIFY_QUEUE_MAX, NOTIFY_WORKERS, Delivery, Notifier

CONTROL_BODY_MAX_BYTES = 4096


class Scenario(enum.Enum):
    PAID = 0
    DECLINED = 1
    CONFIRM_LATER = 2
    NEVER_CONFIRM = 3
    HANG = 4
    COMMIT_THEN_DROP = 5
    COMMIT_DROP_SILENT = 6
    ERROR = 7
    ERROR_AFTER_COMMIT = 8


def scenario_for(amount: int) -> Scenario:
    ending = amount % 100
    return Scenario(ending) if ending <= 8 else Scenario.PAID


class Outcome(enum.Enum):
    """What a charge request did; the channel renders it in its own protocol."""
    PAID = "paid"                    # money taken now
    DECLINED = "declined"            # business failure, trade closed, nothing taken
    WAITING = "waiting"              # trade open, waiting for the payer
    ERROR = "error"                  # system error answer (committed or not: see the scenario)
    DROPPED = "dropped"              # the connection was closed: render nothing
    ALREADY_PAID = "already_paid"    # a repeat for a paid trade: nothing charged again
    ALREADY_CLOSED = "already_closed"
    MISMATCH = "mismatch"            # a repeat with another amount
    FULL = "full"                    # the ledger is full: answer a system error


class Event(str, enum.Enum):
    PAID = "paid"
    CLOSED = "closed"
    REFUND = "refund"


@dataclass(frozen=True)
class SandboxConfig:
    """What every channel sandbox is built from. Channel-specific credentials (keys, ids) live in
    each channel's own module as constants matching core.settings' defaults."""
    seed: int = 0
    knobs: Knobs = field(default_factory=Knobs)
    trades_max: int = 2_000_000
    notify_queue_max: int = NOTIFY_QUEUE_MAX
    notify_workers: int = NOTIFY_WORKERS


class ChannelSandbox:
    """State and behaviour of one channel's sandbox. Subclasses set `name`, implement
    `add_routes` and `build_notification`, and may override `default_knobs`."""

    name: ClassVar[str] = ""
    trade_no_prefix: ClassVar[str] = "42000"
    partial_refunds_max: ClassVar[int] = 50

    def __init__(self, config: SandboxConfig) -> None:
        assert self.name, "a channel sandbox needs a name"
        self.knobs = config.knobs
        self.rng = random.Random(f"{config.seed}:{self.name}")
        self.ledger = Ledger(config.trades_max, self.trade_no_prefix)
        self.notifier = Notifier(self.ledger, self.rng, lambda: self.knobs,
                                 config.notify_queue_max, config.notify_workers)
        self.sent: dict[str, list[Delivery]] = {}     # per trade, the last few notifications
        self._notify_seq = 0
        self.closed = False

    # ---- to implement per channel ------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def build_notification(self, trade: Trade, event: Event, refund: Refund | None,
                           notify_id: str, *, forged: bool = False) -> Delivery | None:
        """The channel's signed callback for `event`, or None when the channel sends none for
        it. With forged=True: the same callback signed with a key or secret the channel does not
        have (what an attacker could send); it must fail the connector's verification."""
        raise NotImplementedError

    # ---- shared behaviour --------------------------------------------------------------------

    @staticmethod
    def now() -> datetime:
        return datetime.now(timezone.utc)

    async def delay(self) -> None:
        if self.knobs.latency_ms:
            await asyncio.sleep(self.knobs.latency_ms / 1000)

    def error_now(self, followup: bool = False) -> bool:
        """One draw of the error_rate knob, for calls other than charges (query, close, refund);
        a follow-up call (query, cancel, close, reverse) fails at the higher of error_rate and
        followup_error_rate (a query outage that leaves charges working)."""
        k = self.knobs
        return self.rng.random() < (max(k.error_rate, k.followup_error_rate) if followup
                                    else k.error_rate)

    def next_notify_id(self) -> str:
        self._notify_seq += 1
        return f"{self._notify_seq:08d}{self.rng.getrandbits(64):016x}"

    def notify(self, trade: Trade, event: Event, refund: Refund | None = None) -> None:
        url = refund.notify_url if refund is not None and refund.notify_url else trade.notify_url
        if not url:
            return
        delivery = self.build_notification(trade, event, refund, self.next_notify_id())
        if delivery is None:
            return
        kept = self.sent.setdefault(trade.out_trade_no, [])
        kept.append(delivery)
        del kept[:-8]
        self.notifier.send(delivery)

    def trade_for_charge(self, out_trade_no: str, amount: int, currency: str) -> Trade | None:
        """The trade a charge request is about, its request counted (None: the ledger is full)."""
        try:
            trade = self.ledger.ensure(out_trade_no, amount, currency)
        except LedgerFull:
            return None
        trade.pay_calls += 1
        return trade

    def _repeat(self, trade: Trade, amount: int, currency: str) -> Outcome | None:
        """The answer to a charge for a trade that already exists, or None to run the scenario."""
        if trade.status is None:
            trade.total_amount, trade.currency = amount, currency  # nothing committed before
            return None
        if trade.status is TradeStatus.CLOSED:
            return Outcome.ALREADY_CLOSED
        if amount != trade.total_amount or currency != trade.currency:
            return Outcome.MISMATCH
        if self.knobs.naive_charge:
            return None
        if trade.status is TradeStatus.PAID:
            return Outcome.ALREADY_PAID
        return Outcome.WAITING

    def _random_fault(self) -> Scenario:
        k, x = self.knobs, self.rng.random()
        for rate, scenario in ((k.error_rate, Scenario.ERROR), (k.decline_rate, Scenario.DECLINED),
                               (k.commit_then_drop_rate, Scenario.COMMIT_THEN_DROP),
                               (k.hang_rate, Scenario.HANG)):
            if x < rate:
                return scenario
            x -= rate
        return Scenario.PAID

    async def charge(self, request: web.Request, trade: Trade | None, amount: int, currency: str,
                     *, prepay: bool = False, subject: str = "", notify_url: str = "",
                     payer: str = "", payment_type: str = "") -> Outcome:
        """Run one charge request (for `trade`, from trade_for_charge) and say what happened.
        The request's details are recorded only when it defines the trade (not on a repeat)."""
        if trade is None:
            return Outcome.FULL
        repeated = self._repeat(trade, amount, currency)
        if repeated is not None:
            return repeated
        trade.subject, trade.notify_url = subject, notify_url
        trade.payer, trade.payment_type = payer, payment_type
        scenario = scenario_for(amount)
        if scenario is Scenario.PAID:
            scenario = self._random_fault()
            if scenario is not Scenario.PAID:
                name = scenario.name.lower()
                self.ledger.faults[name] = self.ledger.faults.get(name, 0) + 1
        if prepay:
            return self._prepay(trade, scenario)
        return await self._run(request, trade, scenario)

    def _prepay(self, trade: Trade, scenario: Scenario) -> Outcome:
        now = self.now()
        if scenario is Scenario.ERROR:
            return Outcome.ERROR
        self.ledger.open(trade, now, TradeStatus.WAITING)
        if scenario is not Scenario.NEVER_CONFIRM:
            self.confirm_later(trade, pays=scenario is not Scenario.DECLINED)
        return Outcome.WAITING

    async def _run(self, request: web.Request, trade: Trade, scenario: Scenario) -> Outcome:
        now = self.now()
        if scenario is Scenario.ERROR:
            return Outcome.ERROR
        if scenario is Scenario.DECLINED:
            self.ledger.close(trade, now)
            return Outcome.DECLINED
        if scenario in (Scenario.CONFIRM_LATER, Scenario.NEVER_CONFIRM):
            self.ledger.open(trade, now, TradeStatus.WAITING)
            if scenario is Scenario.CONFIRM_LATER:
                self.confirm_later(trade)
            return Outcome.WAITING
        self.ledger.pay(trade, now)
        if scenario is not Scenario.COMMIT_DROP_SILENT:
            self.notify(trade, Event.PAID)
        if scenario is Scenario.HANG:
            await asyncio.sleep(self.knobs.hang_ms / 1000)
        if scenario in (Scenario.COMMIT_THEN_DROP, Scenario.COMMIT_DROP_SILENT):
            drop(request)
            return Outcome.DROPPED
        if scenario is Scenario.ERROR_AFTER_COMMIT:
            return Outcome.ERROR
        return Outcome.PAID

    def confirm_later(self, trade: Trade, pays: bool = True) -> None:
        delay_s = self.knobs.payer_confirm_ms / 1000
        asyncio.get_running_loop().call_later(delay_s, self._confirm, trade, pays)

    def _confirm(self, trade: Trade, pays: bool) -> None:
        if (self.closed or trade.status is not TradeStatus.WAITING
                or self.ledger.get(trade.out_trade_no) is not trade):
            return                       # closed meanwhile, or the ledger was reset
        if pays:
            self.ledger.pay(trade, self.now())
            self.notify(trade, Event.PAID)
        else:
            self.ledger.close(trade, self.now())
            self.notify(trade, Event.CLOSED)

    def close_trade(self, trade: Trade, *, reverse_paid: bool) -> str:
        """Close / cancel: "close" for an unpaid (or unknown: fenced) trade, "refund" when a paid
        one was reversed, "paid" when it is paid and this channel cannot reverse."""
        trade.cancel_calls += 1
        now = self.now()
        if trade.status is TradeStatus.PAID:
            if not reverse_paid:
                return "paid"
            self.ledger.reverse(trade, now)
            return "refund"
        if trade.status is TradeStatus.WAITING:
            self.ledger.close(trade, now)
            self.notify(trade, Event.CLOSED)
        elif trade.status is None:
            self.ledger.close(trade, now)       # the fence: a later charge for it is refused
        return "close"

    def refund(self, trade: Trade, out_refund_no: str, amount: int,
               notify_url: str = "") -> Refund:
        """A refund request; RefundRefused when the channel says no. With the refund_delay_ms
        knob the refund is PROCESSING first and succeeds (with a notification) later."""
        trade.refund_calls += 1
        delay_ms = self.knobs.refund_delay_ms
        state = RefundState.PROCESSING if delay_ms else RefundState.SUCCESS
        known = out_refund_no in trade.refund_list
        refund = self.ledger.refund(trade, out_refund_no, amount, self.now(),
                                    partial_max=self.partial_refunds_max, state=state,
                                    notify_url=notify_url)
        if not known:
            if state is RefundState.PROCESSING:
                asyncio.get_running_loop().call_later(delay_ms / 1000, self._finish_refund,
                                                      trade, refund)
            else:
                self.notify(trade, Event.REFUND, refund)
        return refund

    def _finish_refund(self, trade: Trade, refund: Refund) -> None:
        if self.closed or refund.state is not RefundState.PROCESSING:
            return
        self.ledger.finish_refund(refund, self.now())
        self.notify(trade, Event.REFUND, refund)


def drop(request: web.Request) -> None:
    """Close the connection without answering: the client sees a disconnect."""
    if request.transport is not None:
        request.transport.close()


def dropped_response() -> web.StreamResponse:
    """What a handler returns after drop(): never reaches the client."""
    return web.Response(status=200)


def parse_day(text: str, fmt: str = "%Y-%m-%d") -> date | None:
    try:
        return datetime.strptime(text, fmt).date()
    except ValueError:
        return None


# ---- control endpoints, the same under every channel's prefix -----------------------------------

SANDBOX = web.AppKey("sandbox", ChannelSandbox)


async def _read_json(request: web.Request) -> dict[str, Any]:
    body = await read_upto(request.content, CONTROL_BODY_MAX_BYTES)
    data = orjson.loads(body or b"{}")
    if len(body) > CONTROL_BODY_MAX_BYTES or not isinstance(data, dict):
        raise ValueError("expected a small JSON object")
    return data


async def get_ledger(request: web.Request) -> web.Response:
    snapshot = request.app[SANDBOX].ledger.snapshot()
    return web.Response(body=orjson.dumps(snapshot), content_type="application/json")


async def reset_ledger(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    sb.ledger.reset()
    sb.sent.clear()
    return web.json_response({"reset": True})


async def get_knobs(request: web.Request) -> web.Response:
    return web.json_response(request.app[SANDBOX].knobs.to_json())


async def set_knobs(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    try:
        sb.knobs = sb.knobs.replace(await _read_json(request))
    except (ValueError, orjson.JSONDecodeError) as e:
        return web.json_response({"error": str(e)}, status=400)
    return web.json_response(sb.knobs.to_json())


async def replay(request: web.Request) -> web.Response:
    """POST {"out_trade_no", "index"}: deliver the trade's index-th notification again now
    (negative counts from the last), for duplicate and out-of-order tests."""
    sb = request.app[SANDBOX]
    try:
        data = await _read_json(request)
        kept = sb.sent.get(str(data.get("out_trade_no", "")), [])
        delivery = kept[int(data.get("index", -1))]
    except (ValueError, TypeError, IndexError, orjson.JSONDecodeError) as e:
        return web.json_response({"error": f"no such notification: {e}"}, status=404)
    sb.notifier.replay(delivery)
    return web.json_response({"replayed": delivery.event})


async def forge(request: web.Request) -> web.Response:
    """POST {"out_trade_no", "event"}: a notification for the trade signed with a key the channel
    does not have, returned (not sent) as {"headers", "body_b64"}."""
    sb = request.app[SANDBOX]
    try:
        data = await _read_json(request)
        trade = sb.ledger.get(str(data.get("out_trade_no", "")))
        event = Event(data.get("event", "paid"))
    except (ValueError, orjson.JSONDecodeError) as e:
        return web.json_response({"error": str(e)}, status=400)
    if trade is None or not trade.exists:
        return web.json_response({"error": "no such trade"}, status=404)
    refund = next(iter(trade.refund_list.values()), None) if event is Event.REFUND else None
    delivery = sb.build_notification(trade, event, refund, sb.next_notify_id(), forged=True)
    if delivery is None:
        return web.json_response({"error": "the channel sends no such notification"}, status=404)
    return web.json_response({"headers": delivery.headers,
                              "body_b64": base64.b64encode(delivery.body).decode()})


async def health(request: web.Request) -> web.Response:
    """Up; its notifications not yet delivered; and the process's collector pauses
    (core.heap). The benchmarks wait for the first to be 0 between phases and report both."""
    sb = request.app[SANDBOX]
    return web.json_response({"ok": True, "channel": sb.name,
                              "notify_pending": sb.notifier.pending, "gc": heap.pauses()})


def add_control_routes(app: web.Application) -> None:
    app.router.add_get("/_sandbox/ledger", get_ledger)
    app.router.add_post("/_sandbox/reset", reset_ledger)
    app.router.add_get("/_sandbox/knobs", get_knobs)
    app.router.add_post("/_sandbox/knobs", set_knobs)
    app.router.add_post("/_sandbox/replay", replay)
    app.router.add_post("/_sandbox/forge", forge)
    app.router.add_get("/_sandbox/health", health)


def channel_app(sandbox: ChannelSandbox) -> web.Application:
    """One channel's sandbox as an aiohttp application: its protocol routes plus the controls."""
    app = web.Application(client_max_size=1_048_576)
    app[SANDBOX] = sandbox
    sandbox.add_routes(app)
    add_control_routes(app)
    app.cleanup_ctx.append(_notifier_ctx)
    return app


async def _notifier_ctx(app: web.Application) -> Any:
    sandbox = app[SANDBOX]
    await sandbox.notifier.start()
    yield
    sandbox.closed = True
    await sandbox.notifier.stop()
