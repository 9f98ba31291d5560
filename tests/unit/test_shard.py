"""OrderShard without Ray or Redis: an in-memory store and a scripted channel."""
import asyncio
import dataclasses

from actors.shard import OrderShard
from actors.store import KeyTaken, RefundRefused
from channels.base import (Capabilities, ChannelResult, NotSent, Notification, OutcomeUnknown,
                           RefundResult, RefundStatus)
from channels.routing import ChannelsBusy, NoChannel as NoChannelFits
from core.errors import Unavailable
from core.order import CreateOrder, Order
from core.settings import load_settings
from core.states import Fact, OrderStatus


class MemStore:
    def __init__(self):
        self.records: dict[str, Order] = {}
        self.idem: dict[tuple[str, str], str] = {}
        self.refunds = {}                  # refund id -> Refund
        self.refund_index = {}             # order id -> {out_refund_no: refund id}
        self.down = False
        self.commits = 0

    async def get(self, order_id):
        return self.records.get(order_id)

    async def find(self, app_id, out_trade_no):
        oid = self.idem.get((app_id, out_trade_no))
        return self.records.get(oid) if oid else None

    async def open_ids(self):
        return [o.order_id for o in self.records.values() if not o.status.is_final]

    async def commit(self, order, *, new=False):
        await asyncio.sleep(0)
        if self.down:
            raise Unavailable("store down")
        holder = self.idem.get((order.app_id, order.out_trade_no))
        if new and holder is not None and holder != order.order_id:
            raise KeyTaken(order.out_trade_no)
        self.commits += 1
        self.records[order.order_id] = order
        if new:
            self.idem[(order.app_id, order.out_trade_no)] = order.order_id


    # ---- refunds: the checks of actors/store.py's commit script, in memory ----
    async def get_refund(self, refund_id):
        return self.refunds.get(refund_id)

    async def find_refund(self, order_id, out_refund_no):
        rid = self.refund_index.get(order_id, {}).get(out_refund_no)
        return self.refunds.get(rid) if rid else None

    async def refunds_of(self, order_id):
        found = [self.refunds[r] for r in self.refund_index.get(order_id, {}).values()]
        return sorted(found, key=lambda r: (r.created_at, r.refund_id))

    async def open_refund_ids(self):
        return [r.refund_id for r in self.refunds.values() if not r.status.is_final]

    async def commit_refund(self, order, refund, *, base, new=False):
        await asyncio.sleep(0)
        if self.down:
            raise Unavailable("store down")
        if new:
            holder = self.refund_index.get(order.order_id, {}).get(refund.out_refund_no)
            if holder is not None and holder != refund.refund_id:
                raise RefundRefused("taken")
        elif self.refunds[refund.refund_id].status.is_final:
            raise RefundRefused("stale")
        stored = self.records.get(order.order_id)
        if stored is None or (new and stored.status is not OrderStatus.SUCCEEDED):
            raise RefundRefused("state")
        if (stored.refund_reserved, stored.refunded_amount) != (base.reserved, base.refunded):
            raise RefundRefused("stale")
        if order.refund_reserved > stored.amount:
            raise RefundRefused("exceeds")
        self.commits += 1
        self.records[order.order_id] = order
        self.refunds[refund.refund_id] = refund
        self.refund_index.setdefault(order.order_id, {})[refund.out_refund_no] = refund.refund_id


class ScriptedChannel:
    """Scripted charge/query/cancel answers; counts every call."""

    def __init__(self, charge_delay_s=0.0):
        self.routes = ["alipay"]             # what route() answers for a routed order
        self.by_channel: dict[str, str] = {}  # channel -> charge behaviour (else charge_behaviour)
        self.charged_on: list[str] = []       # channel of every charge, in order
        self.charges: list[str] = []
        self.queries: list[str] = []
        self.cancels: list[str] = []
        self.charge_delay_s = charge_delay_s
        self.query_fact = Fact.PAID
        self.cancel_fact = Fact.CLOSED       # PAID: a payment the channel cannot reverse
        self.charge_behaviour = "paid"
        # refunds: a tiny channel ledger, one refund per merchant refund number
        self.refund_behaviour = "succeeded"  # succeeded|pending|failed|lost|error|not_sent|
        #                                      accepted_unseen
        self.refund_script: list[str] = []   # behaviours for the next calls, then the above
        self.refund_delay_s = 0.0
        self.refund_calls: list[str] = []    # refund id of every refund call
        self.refund_queries: list[str] = []
        self.channel_refunds: dict[str, int] = {}   # refund id -> amount, as the channel holds
        self.refund_query_status = RefundStatus.SUCCEEDED  # of a refund the channel holds
        self.refund_window_days = 365
        self.partial_refunds_max = 50

    def route(self, payment, exclude=()):
        if self.routes == "none":
            raise NoChannelFits("nothing takes it")
        if self.routes == "busy":
            raise ChannelsBusy("all open")
        return [c for c in self.routes if c not in exclude]

    def stats(self):
        return {"routing": {}}

    def takes(self, channel, payment):
        return not (channel == "alipay" and payment.currency != "CNY")

    def admit(self, channel):
        return channel not in self.limited

    limited: set[str] = set()

    async def charge(self, channel, req, admitted=False):
        self.charges.append(req.order_id)
        self.charged_on.append(channel)
        await asyncio.sleep(1.0 if req.amount % 100 == 99 else self.charge_delay_s)
        b = self.by_channel.get(channel, self.charge_behaviour)
        if b == "prepay":
            return ChannelResult(Fact.WAITING, channel_trade_no="wx-prepay",
                                 pay_data={"prepay_id": "wx201410272009395522657a690389285100"})
        if b == "paid":
            return ChannelResult(Fact.PAID, channel_trade_no="T-" + req.order_id[-6:],
                                 amount=req.amount)
        if b == "declined":
            return ChannelResult(Fact.DECLINED, failure_code="ACQ.BUYER_BALANCE_NOT_ENOUGH")
        if b == "waiting":
            return ChannelResult(Fact.WAITING)
        if b == "not_sent":
            raise NotSent("connect refused")
        raise OutcomeUnknown("timeout")

    async def query(self, channel, order_id, currency):
        self.queries.append(order_id)
        return ChannelResult(self.query_fact, channel_trade_no="TQ")

    async def cancel(self, channel, order_id):
        self.cancels.append(order_id)
        if self.cancel_fact is Fact.PAID:
            return ChannelResult(Fact.PAID, channel_trade_no="TC", amount=600,
                                 raw_status="succeeded")
        return ChannelResult(Fact.CLOSED, action="close")

    def capabilities(self, channel):
        return Capabilities(frozenset({"CNY", "USD"}), frozenset({"barcode", "card"}),
                            refund_window_days=self.refund_window_days,
                            partial_refunds_max=self.partial_refunds_max)

    async def refund(self, channel, req):
        self.refund_calls.append(req.refund_id)
        b = self.refund_script.pop(0) if self.refund_script else self.refund_behaviour
        await asyncio.sleep(self.refund_delay_s)
        if b == "not_sent":
            raise NotSent("connect refused")
        if b == "error":                     # the channel's system error: nothing recorded
            raise OutcomeUnknown("system error")
        if b == "failed":
            return RefundResult(RefundStatus.FAILED, req.refund_id, failure_code="REFUND_AMT_ERR",
                                failure_message="refund amount too large")
        if b == "accepted_unseen":           # accepted, but its query shows nothing yet (Alipay)
            return RefundResult(RefundStatus.PENDING, req.refund_id)
        self.channel_refunds.setdefault(req.refund_id, req.amount)
        if b == "lost":                      # recorded, then the answer is lost
            raise OutcomeUnknown("timeout")
        status = RefundStatus.PENDING if b == "pending" else RefundStatus.SUCCEEDED
        return RefundResult(status, req.refund_id, "CR-" + req.refund_id[-6:], req.amount)

    async def refund_query(self, channel, order_id, refund_id, currency):
        self.refund_queries.append(refund_id)
        if refund_id not in self.channel_refunds:
            return RefundResult(RefundStatus.PENDING, refund_id, exists=False)
        return RefundResult(self.refund_query_status, refund_id, "CR-" + refund_id[-6:],
                            self.channel_refunds[refund_id])


def settings(**orders):
    base = {"sync_deadline_ms": 200, "query_first_delay_ms": 50, "query_interval_ms": 50,
            "async_window_ms": 600, "scheduler_tick_ms": 10}
    base.update(orders)
    return load_settings(env={}, overrides={"orders": base})


def cmd(key="k1", amount=600, **kw):
    return CreateOrder("demo-app", key, "u1", amount, "CNY", "gems", "alipay", "barcode",
                       "28763443825664394", **kw)


def shard(store=None, channel=None, **orders):
    return OrderShard(settings(**orders), 1, store=store or MemStore(),
                      channels=channel or ScriptedChannel())


async def wait_for_status(sh, order_id, status, timeout=3.0):
    for _ in range(int(timeout / 0.02)):
        o = await sh.get("demo-app", order_id)
        if o["status"] == status:
            return o
        await asyncio.sleep(0.02)
    raise AssertionError(f"{order_id} never reached {status}: {o}")


async def test_paid_in_time_is_200_succeeded_by_sync():
    store = MemStore()
    sh = shard(store)
    [reply] = await sh.submit([cmd()])
    assert reply["http"] == 200
    o = reply["order"]
    assert (o["status"], o["resolved_by"], o["amount"]) == ("SUCCEEDED", "sync", 600)
    assert store.records[o["order_id"]].status.value == "SUCCEEDED"
    assert store.records[o["order_id"]].charge_sent is True


async def test_twenty_concurrent_same_key_charge_once_and_answer_alike():
    ch = ScriptedChannel(charge_delay_s=0.05)
    sh = shard(channel=ch)
    replies = await asyncio.gather(*(sh.submit([cmd()]) for _ in range(20)))
    flat = [r[0] for r in replies]
    assert len(ch.charges) == 1
    assert {r["order"]["order_id"] for r in flat} == {ch.charges[0]}
    assert all(r == flat[0] for r in flat) and flat[0]["order"]["status"] == "SUCCEEDED"


async def test_same_key_different_body_is_a_conflict_and_changes_nothing():
    ch = ScriptedChannel()
    sh = shard(channel=ch)
    [first] = await sh.submit([cmd(amount=600)])
    [second] = await sh.submit([cmd(amount=700)])
    assert second["error"] == "idempotency_conflict"
    assert len(ch.charges) == 1
    assert (await sh.find("demo-app", "k1"))["amount"] == 600


async def test_decline_is_200_failed_with_reason():
    ch = ScriptedChannel()
    ch.charge_behaviour = "declined"
    [r] = await shard(channel=ch).submit([cmd()])
    assert r["http"] == 200 and r["order"]["status"] == "FAILED"
    assert r["order"]["failure"]["code"] == "ACQ.BUYER_BALANCE_NOT_ENOUGH"


async def test_not_sent_fails_the_order_without_charging():
    ch = ScriptedChannel()
    ch.charge_behaviour = "not_sent"
    [r] = await shard(channel=ch).submit([cmd()])
    assert r["order"]["status"] == "FAILED"
    assert r["order"]["failure"]["code"] == "channel_unavailable"


async def test_slow_channel_gives_202_at_deadline_then_late_sync_answer_counts():
    ch = ScriptedChannel(charge_delay_s=0.4)
    sh = shard(channel=ch)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    [r] = await sh.submit([cmd()])
    elapsed = loop.time() - t0
    assert r["http"] == 202 and r["order"]["status"] == "PENDING"
    assert 0.19 <= elapsed < 0.35, elapsed
    o = await wait_for_status(sh, r["order"]["order_id"], "SUCCEEDED")
    assert o["resolved_by"] == "sync" and len(ch.charges) == 1 and ch.queries == []


async def test_unknown_outcome_is_resolved_by_query_never_by_a_second_charge():
    ch = ScriptedChannel()
    ch.charge_behaviour = "unknown"
    sh = shard(channel=ch)
    [r] = await sh.submit([cmd()])
    assert r["http"] == 202
    o = await wait_for_status(sh, r["order"]["order_id"], "SUCCEEDED")
    assert o["resolved_by"] == "query" and len(ch.charges) == 1 and len(ch.queries) >= 1


async def test_waiting_until_window_end_is_cancelled_and_closed():
    ch = ScriptedChannel()
    ch.charge_behaviour = "waiting"
    ch.query_fact = Fact.WAITING
    sh = shard(channel=ch)
    [r] = await sh.submit([cmd()])
    assert r["http"] == 202
    o = await wait_for_status(sh, r["order"]["order_id"], "CLOSED")
    assert o["resolved_by"] == "query" and ch.cancels == [r["order"]["order_id"]]
    assert len(ch.queries) >= 3 and len(ch.charges) == 1


async def test_a_cancel_answered_paid_settles_the_order_at_once():
    """At the window's end the cancel of a payment the channel cannot reverse (Stripe's
    succeeded PaymentIntent) answers PAID: that answer decides, as it does for the reconciler's
    close; the order is not left PENDING for batch reconciliation after more cancels (found
    by bench.chaos mixed: Stripe orders whose queries failed were left to the third rung)."""
    ch = ScriptedChannel()
    ch.charge_behaviour = "unknown"
    ch.query_fact = Fact.WAITING
    ch.cancel_fact = Fact.PAID
    sh = shard(channel=ch, cancel_retry_interval_ms=50)
    [r] = await sh.submit([cmd()])
    assert r["http"] == 202
    oid = r["order"]["order_id"]
    o = await wait_for_status(sh, oid, "SUCCEEDED")
    assert (o["resolved_by"], o["channel_trade_no"]) == ("query", "TC")
    await asyncio.sleep(0.3)                      # several retry intervals: no second cancel
    assert ch.cancels == [oid] and ch.charges == [oid]


async def test_restarted_shard_rebuilds_open_orders_and_only_queries_them():
    store = MemStore()
    ch = ScriptedChannel(charge_delay_s=5)
    sh = shard(store, ch)
    [r] = await sh.submit([cmd()])
    assert r["http"] == 202
    oid = r["order"]["order_id"]
    # a new incarnation over the same store (the old one "crashed" mid-charge)
    ch2 = ScriptedChannel()
    sh2 = shard(store, ch2)
    assert (await sh2.ping())["open"] == 1
    o = await wait_for_status(sh2, oid, "SUCCEEDED")
    assert o["resolved_by"] == "query" and ch2.charges == []
    [again] = await sh2.submit([cmd()])
    assert again["order"]["order_id"] == oid and ch2.charges == []


async def test_notification_resolves_and_duplicates_or_wrong_amounts_do_not():
    ch = ScriptedChannel()
    ch.charge_behaviour = "waiting"
    ch.query_fact = Fact.WAITING
    sh = shard(channel=ch, query_first_delay_ms=5000)
    [r] = await sh.submit([cmd()])
    oid = r["order"]["order_id"]
    wrong = Notification(oid, Fact.PAID, "T9", 1, "CNY", "n0", "TRADE_SUCCESS")
    assert await sh.notify(wrong) is False
    assert (await sh.get("demo-app", oid))["status"] == "PENDING"
    note = dataclasses.replace(wrong, amount=600)
    assert await sh.notify(note) is True
    assert await sh.notify(note) is True
    o = await sh.get("demo-app", oid)
    assert (o["status"], o["resolved_by"], o["channel_trade_no"]) == ("SUCCEEDED", "notify", "T9")
    late = Notification(oid, Fact.CLOSED, "T9", 600, "CNY", "n1", "TRADE_CLOSED")
    assert await sh.notify(late) is True
    assert (await sh.get("demo-app", oid))["status"] == "SUCCEEDED"
    assert sh.counters["fact_conflicts"] == 2


async def test_store_down_means_no_order_and_no_charge():
    store = MemStore()
    store.down = True
    ch = ScriptedChannel()
    sh = shard(store, ch)
    [r] = await sh.submit([cmd()])
    assert r["error"] == "unavailable" and ch.charges == []
    store.down = False
    [r2] = await sh.submit([cmd()])
    assert r2["order"]["status"] == "SUCCEEDED" and len(ch.charges) == 1


async def test_other_apps_cannot_read_an_order():
    sh = shard()
    [r] = await sh.submit([cmd()])
    assert await sh.get("other-app", r["order"]["order_id"]) is None
    assert await sh.find("other-app", "k1") is None


async def test_a_slow_charge_holds_up_no_other_order_in_its_batch():
    ch = ScriptedChannel()
    sh = shard(channel=ch)
    await sh.ping()
    loop = asyncio.get_running_loop()
    cmds = [cmd(key=f"b{i}") for i in range(9)] + [cmd(key="slow", amount=699)]  # 99: 1 s
    t0 = loop.time()
    tasks = [asyncio.ensure_future(sh.submit([c])) for c in cmds]
    fast = await asyncio.gather(*tasks[:9])
    assert loop.time() - t0 < 0.15
    assert all(r[0]["http"] == 200 and r[0]["order"]["status"] == "SUCCEEDED" for r in fast)
    [slow] = await tasks[9]
    assert slow["http"] == 202 and 0.19 <= loop.time() - t0 < 0.35
    assert len(ch.charges) == 10
    o = await wait_for_status(sh, slow["order"]["order_id"], "SUCCEEDED")
    assert o["resolved_by"] == "sync"


async def test_a_create_whose_commit_landed_unseen_is_replayed_not_duplicated():
    store = MemStore()
    ch = ScriptedChannel()
    sh = shard(store, ch)
    [first] = await sh.submit([cmd()])
    # A second shard incarnation that does not hold the key in memory creates it without
    # asking the store first: the store refuses the key, the shard replays the stored order.
    sh2 = shard(store, ch)
    await sh2.ping()
    [again] = await sh2.submit([cmd()])
    assert again["order"]["order_id"] == first["order"]["order_id"]
    assert again["order"]["status"] == "SUCCEEDED"
    assert len(ch.charges) == 1 and len(store.records) == 1
    assert sh2.counters["replayed"] == 1 and sh2.counters["created"] == 0


async def test_a_retry_the_limits_would_refuse_is_answered_with_its_stored_order():
    store = MemStore()
    ch = ScriptedChannel()
    [first] = await shard(store, ch).submit([cmd()])
    # A new incarnation, with the channel now at its rate limit: a new key is refused (429),
    # the retry of the stored one gets its order, not the limit.
    ch.limited = {"alipay"}
    sh2 = shard(store, ch)
    [again, fresh] = await sh2.submit([cmd(), cmd("k2")])
    assert again["order"]["order_id"] == first["order"]["order_id"]
    assert fresh["error"] == "rate_limited"
    assert len(ch.charges) == 1 and len(store.records) == 1


async def test_a_notification_during_a_slow_charge_answers_the_client_at_once():
    ch = ScriptedChannel(charge_delay_s=5)
    sh = shard(channel=ch, sync_deadline_ms=2000, async_window_ms=10_000)
    await sh.ping()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    pending = asyncio.ensure_future(sh.submit([cmd()]))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if ch.charges:
            break
    oid = ch.charges[0]
    assert await sh.notify(Notification(oid, Fact.PAID, "T7", 600, "CNY", "n", "TRADE_SUCCESS"))
    [r] = await pending
    assert r["http"] == 200 and r["order"]["resolved_by"] == "notify"
    assert loop.time() - t0 < 0.5


# ---- routing and failover ------------------------------------------------------------------

def routed(key="r1", amount=600, **kw):
    return dataclasses.replace(cmd(key, amount, **kw), channel="", payment_type="card",
                               auth_code="", payment_token="pm_card_visa", currency="USD")


class SpyStore(MemStore):
    """Remembers which channel the stored record named at each commit."""

    def __init__(self):
        super().__init__()
        self.channels_committed: list[str] = []

    async def commit(self, order, *, new=False):
        await super().commit(order, new=new)
        self.channels_committed.append(order.channel)


async def test_routed_order_fails_over_after_a_decline_and_commits_the_move_first():
    store, ch = SpyStore(), ScriptedChannel()
    ch.routes = ["stripe", "paypal"]
    ch.by_channel = {"stripe": "declined", "paypal": "paid"}
    sh = shard(store, ch)
    [reply] = await sh.submit([routed()])
    o = reply["order"]
    assert (reply["http"], o["status"], o["channel"], o["tried_channels"]) == (
        200, "SUCCEEDED", "paypal", ["stripe"])
    assert ch.charged_on == ["stripe", "paypal"]
    # created on stripe, moved to paypal (durably) before paypal was charged, then paid
    assert store.channels_committed == ["stripe", "paypal", "paypal"]
    assert store.records[o["order_id"]].routed is True
    assert (await sh.stats())["failovers"] == 1


async def test_not_sent_fails_over_too():
    ch = ScriptedChannel()
    ch.routes = ["stripe", "paypal"]
    ch.by_channel = {"stripe": "not_sent", "paypal": "paid"}
    [reply] = await shard(channel=ch).submit([routed()])
    assert (reply["order"]["status"], reply["order"]["channel"]) == ("SUCCEEDED", "paypal")


async def test_unknown_outcome_is_never_failed_over():
    ch = ScriptedChannel()
    ch.routes = ["stripe", "paypal"]
    ch.by_channel = {"stripe": "unknown", "paypal": "paid"}
    ch.query_fact = Fact.PAID
    sh = shard(channel=ch)
    [reply] = await sh.submit([routed()])
    assert ch.charged_on == ["stripe"]
    paid = await wait_for_status(sh, reply["order"]["order_id"], "SUCCEEDED")
    assert (paid["channel"], paid["resolved_by"], "tried_channels" in paid) == (
        "stripe", "query", False)
    assert ch.charged_on == ["stripe"]


async def test_a_named_channel_is_never_failed_over():
    ch = ScriptedChannel()
    ch.routes = ["alipay", "wechatpay"]
    ch.charge_behaviour = "declined"
    [reply] = await shard(channel=ch).submit([cmd()])
    assert (reply["order"]["status"], ch.charged_on) == ("FAILED", ["alipay"])


async def test_every_candidate_declining_fails_the_order_with_the_last_reason():
    ch = ScriptedChannel()
    ch.routes = ["stripe", "paypal", "unionpay"]
    ch.charge_behaviour = "declined"
    [reply] = await shard(channel=ch).submit([routed()])
    o = reply["order"]
    assert (o["status"], o["channel"], o["tried_channels"]) == (
        "FAILED", "unionpay", ["stripe", "paypal"])
    assert ch.charged_on == ["stripe", "paypal", "unionpay"]


async def test_no_fitting_channel_is_422_and_busy_is_503_and_nothing_is_stored():
    store, ch = MemStore(), ScriptedChannel()
    sh = shard(store, ch)
    ch.routes = "none"
    [reply] = await sh.submit([routed("n1")])
    assert reply["error"] == "no_channel"
    ch.routes = "busy"
    [reply] = await sh.submit([routed("n2")])
    assert (reply["error"], reply["retry_after_s"]) == ("unavailable", 1)
    assert store.records == {} and ch.charges == []


async def test_notification_from_a_channel_the_order_left_changes_nothing():
    ch = ScriptedChannel()
    ch.routes = ["stripe", "paypal"]
    ch.by_channel = {"stripe": "declined", "paypal": "waiting"}
    ch.query_fact = Fact.WAITING
    sh = shard(channel=ch)
    [reply] = await sh.submit([routed()])
    oid = reply["order"]["order_id"]
    stale = Notification(oid, Fact.PAID, "pi_1", 600, "USD", "evt_1", "succeeded",
                         channel="stripe")
    assert await sh.notify(stale) is True
    assert (await sh.get("demo-app", oid))["status"] == "PENDING"
    assert (await sh.stats())["stale_channel_notifies"] == 1
    fresh = dataclasses.replace(stale, channel="paypal", channel_trade_no="CAP-1")
    assert await sh.notify(fresh) is True
    assert (await sh.get("demo-app", oid))["status"] == "SUCCEEDED"


async def test_prepay_data_is_kept_and_shown():
    ch = ScriptedChannel()
    ch.charge_behaviour = "prepay"
    ch.query_fact = Fact.WAITING
    sh = shard(channel=ch)
    [reply] = await sh.submit([dataclasses.replace(cmd("p1"), channel="wechatpay",
                                                   payment_type="app", auth_code="")])
    o = reply["order"]
    assert (reply["http"], o["status"]) == (202, "PENDING")
    assert o["pay_data"] == {"prepay_id": "wx201410272009395522657a690389285100"}
    assert (await sh.get("demo-app", o["order_id"]))["channel_trade_no"] == "wx-prepay"


async def test_a_named_channel_that_cannot_take_the_payment_is_422_before_anything():
    store, ch = MemStore(), ScriptedChannel()
    [reply] = await shard(store, ch).submit([dataclasses.replace(cmd(), currency="USD")])
    assert reply["error"] == "no_channel" and "alipay does not take USD" in reply["detail"]
    assert store.records == {} and ch.charges == []


async def test_rate_limited_channels_refuse_before_storing_or_fall_through():
    store, ch = MemStore(), ScriptedChannel()
    ch.limited = {"alipay", "stripe"}
    sh = shard(store, ch)
    [named] = await sh.submit([cmd("l1")])
    assert (named["error"], named["retry_after_s"]) == ("rate_limited", 1)
    ch.routes = ["stripe", "paypal"]
    [routed_reply] = await sh.submit([routed("l2")])
    assert (routed_reply["order"]["channel"], ch.charged_on) == ("paypal", ["paypal"])
    ch.limited = {"stripe", "paypal"}
    [busy] = await sh.submit([routed("l3")])
    assert busy["error"] == "unavailable"
    assert [o.out_trade_no for o in store.records.values()] == ["l2"]
