"""Refunds through OrderShard without Ray or Redis: the in-memory store (with the commit script's
refund checks) and a scripted channel with a small refund ledger (one refund per refund id)."""
import asyncio
import dataclasses

import pytest

from actors.locks import KeyedLocks
from actors.shard import OrderShard
from channels.base import Notification, NotificationKind, RefundStatus
from core.clock import FakeClock
from core.ids import REFUND_ID_RE, parse_refund_id
from core.refund import CreateRefund
from core.settings import load_settings
from core.states import Fact

try:  # the shared doubles live in the sibling test module, whichever way pytest imports it
    from tests.unit.test_shard import MemStore, ScriptedChannel, cmd
except ImportError:
    from test_shard import MemStore, ScriptedChannel, cmd  # type: ignore[no-redef]

FAST = {"sync_deadline_ms": 200, "query_first_delay_ms": 50, "query_interval_ms": 50,
        "async_window_ms": 600, "scheduler_tick_ms": 10, "refund_sync_deadline_ms": 200,
        "refund_query_first_delay_ms": 50, "refund_query_interval_ms": 50,
        "refund_async_window_ms": 600}


def shard(store=None, channel=None, clock=None, **orders):
    s = load_settings(env={}, overrides={"orders": {**FAST, **orders}})
    return OrderShard(s, 1, store=store or MemStore(), channels=channel or ScriptedChannel(),
                      clock=clock)


async def paid_order(sh, key="k1", amount=600):
    [reply] = await sh.submit([cmd(key, amount)])
    assert reply["order"]["status"] == "SUCCEEDED", reply
    return reply["order"]["order_id"]


def refund(order_id, no="r1", amount=200, reason="", app="demo-app"):
    return CreateRefund(app, order_id, no, amount, reason)


async def refund_when(sh, order_id, refund_id, status, timeout=3.0):
    for _ in range(int(timeout / 0.02)):
        listed = await sh.list_refunds("demo-app", order_id)
        r = next(r for r in listed["refunds"] if r["refund_id"] == refund_id)
        if r["status"] == status:
            return r
        await asyncio.sleep(0.02)
    raise AssertionError(f"{refund_id} never reached {status}: {r}")


async def test_a_refund_answered_in_time_is_200_succeeded_and_counts_on_the_order():
    store, ch = MemStore(), ScriptedChannel()
    sh = shard(store, ch)
    oid = await paid_order(sh)
    reply = await sh.create_refund(refund(oid, amount=600, reason="changed mind"))
    r = reply["refund"]
    assert reply["http"] == 200
    assert (r["status"], r["resolved_by"], r["amount"], r["currency"], r["reason"]) == (
        "SUCCEEDED", "sync", 600, "CNY", "changed mind")
    assert r["channel_refund_no"] == "CR-" + r["refund_id"][-6:] and "failure" not in r
    assert REFUND_ID_RE.match(r["refund_id"]) and len(r["refund_id"]) == 32
    assert parse_refund_id(r["refund_id"]).shard == 1
    assert ch.refund_calls == [r["refund_id"]] and ch.channel_refunds == {r["refund_id"]: 600}
    order = store.records[oid]
    assert (order.refunded_amount, order.refund_reserved) == (600, 600)
    assert (await sh.get("demo-app", oid))["refunded_amount"] == 600
    assert store.refunds[r["refund_id"]].status is RefundStatus.SUCCEEDED


async def test_the_same_request_replays_the_same_refund_and_calls_the_channel_once():
    ch = ScriptedChannel()
    ch.refund_delay_s = 0.05
    sh = shard(channel=ch)
    oid = await paid_order(sh)
    replies = await asyncio.gather(*(sh.create_refund(refund(oid)) for _ in range(20)))
    assert all(r == replies[0] for r in replies) and replies[0]["http"] == 200
    assert len(ch.refund_calls) == 1 and len(ch.channel_refunds) == 1
    later = await sh.create_refund(refund(oid))
    assert later == replies[0]
    stats = await sh.stats()
    assert (stats["refunds_created"], stats["refunds_replayed"]) == (1, 20)


async def test_same_out_refund_no_with_another_body_is_a_conflict_and_changes_nothing():
    store, ch = MemStore(), ScriptedChannel()
    sh = shard(store, ch)
    oid = await paid_order(sh)
    first = await sh.create_refund(refund(oid, amount=200))
    for other in (refund(oid, amount=300), refund(oid, amount=200, reason="other")):
        assert (await sh.create_refund(other))["error"] == "idempotency_conflict"
    assert len(ch.refund_calls) == 1 and store.records[oid].refunded_amount == 200
    assert [r["refund_id"] for r in (await sh.list_refunds("demo-app", oid))["refunds"]] == [
        first["refund"]["refund_id"]]


async def test_partial_refunds_add_up_to_at_most_the_paid_amount():
    store, ch = MemStore(), ScriptedChannel()
    sh = shard(store, ch)
    oid = await paid_order(sh, amount=600)
    for no, amount in (("a", 200), ("b", 300)):
        assert (await sh.create_refund(refund(oid, no, amount)))["refund"]["status"] == "SUCCEEDED"
    commits, calls = store.commits, len(ch.refund_calls)
    over = await sh.create_refund(refund(oid, "c", 101))
    assert over["error"] == "refund_exceeds_paid" and "left to refund: 100 of 600" in over["detail"]
    assert (store.commits, len(ch.refund_calls), len(store.refunds)) == (commits, calls, 2)
    assert (await sh.create_refund(refund(oid, "c2", 100)))["refund"]["status"] == "SUCCEEDED"
    listed = await sh.list_refunds("demo-app", oid)
    assert listed["refunded_amount"] == 600
    assert [(r["out_refund_no"], r["amount"]) for r in listed["refunds"]] == [
        ("a", 200), ("b", 300), ("c2", 100)]
    assert (await sh.create_refund(refund(oid, "d", 1)))["error"] == "refund_exceeds_paid"


async def test_two_refunds_racing_for_the_last_part_are_not_both_accepted():
    store, ch = MemStore(), ScriptedChannel()
    ch.refund_delay_s = 0.1      # the first one is still PENDING at the channel when the next comes
    sh = shard(store, ch)
    oid = await paid_order(sh, amount=600)
    replies = await asyncio.gather(*(sh.create_refund(refund(oid, f"race{i}", 400))
                                     for i in range(5)))
    accepted = [r for r in replies if "refund" in r]
    refused = [r for r in replies if "error" in r]
    assert len(accepted) == 1 and {r["error"] for r in refused} == {"refund_exceeds_paid"}
    assert len(ch.refund_calls) == 1 and sum(ch.channel_refunds.values()) == 400
    assert store.records[oid].refund_reserved == 400


async def test_a_stale_shard_incarnation_cannot_reserve_past_the_paid_amount():
    store = MemStore()
    sh1 = shard(store)
    oid = await paid_order(sh1, amount=600)
    sh2 = shard(store)
    assert (await sh2.get("demo-app", oid))["refunded_amount"] == 0   # sh2 caches the order now
    assert (await sh1.create_refund(refund(oid, "a", 400)))["refund"]["status"] == "SUCCEEDED"
    # sh2's cached order still says nothing is refunded; the commit refuses its write as stale,
    # sh2 reads the order again and refuses the refund itself.
    again = await sh2.create_refund(refund(oid, "b", 400))
    assert again["error"] == "refund_exceeds_paid"
    assert store.records[oid].refund_reserved == 400 and len(store.refunds) == 1


async def test_only_a_succeeded_order_of_the_app_can_be_refunded():
    ch = ScriptedChannel()
    sh = shard(channel=ch)
    ch.charge_behaviour = "declined"
    [failed] = await sh.submit([cmd("f1")])
    ch.charge_behaviour, ch.query_fact = "waiting", Fact.WAITING
    [pending] = await sh.submit([cmd("p1")])
    for o in (failed["order"], pending["order"]):
        r = await sh.create_refund(refund(o["order_id"]))
        assert r["error"] == "order_not_refundable" and o["status"] in r["detail"]
    ch.charge_behaviour = "paid"
    oid = await paid_order(sh, "ok")
    assert (await sh.create_refund(refund(oid, app="other-app")))["error"] == "not_found"
    assert (await sh.create_refund(refund("P_local_s0_1_0000000000000000000")))["error"] == \
        "not_found"
    assert await sh.list_refunds("other-app", oid) is None
    assert ch.refund_calls == []


async def test_the_channels_refund_window_counts_from_the_payment():
    clock, ch = FakeClock(), ScriptedChannel()
    ch.refund_window_days = 3
    sh = shard(channel=ch, clock=clock)
    oid = await paid_order(sh)
    clock.advance(3 * 86400 - 1)
    assert (await sh.create_refund(refund(oid, "in", 100)))["refund"]["status"] == "SUCCEEDED"
    clock.advance(2)
    late = await sh.create_refund(refund(oid, "late", 100))
    assert late["error"] == "refund_window_closed" and "3 days" in late["detail"]
    assert len(ch.refund_calls) == 1


async def test_the_channels_partial_refund_count_is_enforced_failed_ones_aside():
    ch = ScriptedChannel()
    ch.partial_refunds_max = 2
    sh = shard(channel=ch)
    oid = await paid_order(sh)
    ch.refund_script = ["failed"]
    assert (await sh.create_refund(refund(oid, "x", 100)))["refund"]["status"] == "FAILED"
    for no in ("a", "b"):
        assert (await sh.create_refund(refund(oid, no, 100)))["refund"]["status"] == "SUCCEEDED"
    third = await sh.create_refund(refund(oid, "c", 100))
    assert third["error"] == "too_many_refunds" and len(ch.refund_calls) == 3


async def test_a_refused_refund_is_200_failed_and_gives_its_reservation_back():
    store, ch = MemStore(), ScriptedChannel()
    sh = shard(store, ch)
    oid = await paid_order(sh)
    ch.refund_script = ["failed"]
    reply = await sh.create_refund(refund(oid, "a", 600))
    r = reply["refund"]
    assert (reply["http"], r["status"], r["resolved_by"]) == (200, "FAILED", "sync")
    assert r["failure"] == {"code": "REFUND_AMT_ERR", "message": "refund amount too large"}
    assert (store.records[oid].refund_reserved, store.records[oid].refunded_amount) == (0, 0)
    assert (await sh.create_refund(refund(oid, "b", 600)))["refund"]["status"] == "SUCCEEDED"


async def test_a_refund_that_certainly_did_not_reach_the_channel_fails():
    store, ch = MemStore(), ScriptedChannel()
    ch.refund_behaviour = "not_sent"
    sh = shard(store, ch)
    oid = await paid_order(sh)
    r = (await sh.create_refund(refund(oid)))["refund"]
    assert (r["status"], r["failure"]["code"]) == ("FAILED", "channel_unavailable")
    assert store.records[oid].refund_reserved == 0 and ch.channel_refunds == {}


async def test_a_slow_answer_gives_202_then_the_late_sync_answer_counts():
    ch = ScriptedChannel()
    ch.refund_delay_s = 0.4
    sh = shard(channel=ch)
    oid = await paid_order(sh)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reply = await sh.create_refund(refund(oid))
    assert reply["http"] == 202 and reply["refund"]["status"] == "PENDING"
    assert 0.19 <= loop.time() - t0 < 0.35
    r = await refund_when(sh, oid, reply["refund"]["refund_id"], "SUCCEEDED")
    assert r["resolved_by"] == "sync" and len(ch.refund_calls) == 1


async def test_a_lost_answer_is_resolved_by_query_without_a_second_call():
    ch = ScriptedChannel()
    ch.refund_behaviour = "lost"        # the channel refunded, the answer never came
    sh = shard(channel=ch)
    oid = await paid_order(sh)
    reply = await sh.create_refund(refund(oid))
    assert reply["http"] == 202
    rid = reply["refund"]["refund_id"]
    r = await refund_when(sh, oid, rid, "SUCCEEDED")
    assert r["resolved_by"] == "query" and r["channel_refund_no"] == "CR-" + rid[-6:]
    assert ch.refund_calls == [rid] and ch.refund_queries[0] == rid
    assert (await sh.get("demo-app", oid))["refunded_amount"] == 200


async def test_a_refund_the_channel_never_recorded_is_resent_under_the_same_id():
    ch = ScriptedChannel()
    ch.refund_script = ["error"]        # system error: nothing recorded at the channel
    sh = shard(channel=ch)
    oid = await paid_order(sh)
    rid = (await sh.create_refund(refund(oid)))["refund"]["refund_id"]
    r = await refund_when(sh, oid, rid, "SUCCEEDED")
    assert r["resolved_by"] == "query"
    assert ch.refund_calls == [rid, rid] and ch.channel_refunds == {rid: 200}
    assert (await sh.stats())["refund_resends"] == 1


async def test_an_accepted_refund_the_query_cannot_see_yet_is_not_resent():
    ch = ScriptedChannel()
    ch.refund_behaviour = "accepted_unseen"
    sh = shard(channel=ch)
    oid = await paid_order(sh)
    reply = await sh.create_refund(refund(oid))
    rid = reply["refund"]["refund_id"]
    assert reply["http"] == 202
    for _ in range(100):
        if len(ch.refund_queries) >= 3:
            break
        await asyncio.sleep(0.02)
    assert len(ch.refund_queries) >= 3 and ch.refund_calls == [rid]
    note = Notification(oid, Fact.PAID, "T1", 600, "CNY", "n1", "SUCCESS",
                        kind=NotificationKind.REFUND, refund_id=rid,
                        refund_status=RefundStatus.SUCCEEDED)
    assert await sh.notify(note)
    assert (await refund_when(sh, oid, rid, "SUCCEEDED"))["resolved_by"] == "notify"


async def test_resends_are_bounded_and_after_the_window_the_refund_waits_for_reconciliation():
    store, ch = MemStore(), ScriptedChannel()
    ch.refund_behaviour = "error"
    sh = shard(store, ch, refund_resends_max=2, refund_async_window_ms=400)
    oid = await paid_order(sh)
    rid = (await sh.create_refund(refund(oid)))["refund"]["refund_id"]
    for _ in range(100):
        if (await sh.stats())["refunds_left_for_reconcile"]:
            break
        await asyncio.sleep(0.02)
    assert (await sh.stats())["refunds_left_for_reconcile"] == 1
    assert ch.refund_calls == [rid] * 3          # the call and 2 resends, one refund id
    assert (await sh.list_refunds("demo-app", oid))["refunds"][0]["status"] == "PENDING"
    assert await store.open_refund_ids() == [rid]
    assert store.records[oid].refund_reserved == 200   # still held: the money may yet move


async def test_a_pending_refund_is_resolved_by_the_channels_notification():
    store, ch = MemStore(), ScriptedChannel()
    ch.refund_behaviour = "pending"
    ch.refund_query_status = RefundStatus.PENDING
    sh = shard(store, ch, refund_query_first_delay_ms=5000)
    oid = await paid_order(sh)
    reply = await sh.create_refund(refund(oid))
    assert reply["http"] == 202
    rid = reply["refund"]["refund_id"]
    note = Notification(oid, Fact.PAID, "T1", 600, "CNY", "n1", "REFUND_SUCCESS",
                        kind=NotificationKind.REFUND, refund_id=rid,
                        refund_status=RefundStatus.SUCCEEDED, refund_amount=999)
    assert await sh.notify(note) is False          # wrong amount: rejected, the channel retries
    assert (await refund_when(sh, oid, rid, "PENDING"))["resolved_by"] is None
    good = dataclasses.replace(note, refund_amount=200)
    assert await sh.notify(good) is True
    assert await sh.notify(good) is True           # duplicate: changes nothing
    r = await refund_when(sh, oid, rid, "SUCCEEDED")
    assert r["resolved_by"] == "notify" and store.records[oid].refunded_amount == 200
    contra = dataclasses.replace(good, refund_status=RefundStatus.FAILED)
    assert await sh.notify(contra) is True
    assert (await refund_when(sh, oid, rid, "SUCCEEDED"))["resolved_by"] == "notify"
    assert (await sh.stats())["refund_fact_conflicts"] == 2
    assert store.records[oid].refunded_amount == 200 and len(ch.refund_calls) == 1
    stranger = dataclasses.replace(good, refund_id="R_local_s0_1_0000000000000000000")
    assert await sh.notify(stranger) is True
    assert (await sh.stats())["unknown_refund_notifies"] == 1


async def test_a_notification_during_a_slow_refund_call_answers_the_client_at_once():
    ch = ScriptedChannel()
    ch.refund_delay_s = 5
    sh = shard(channel=ch, refund_sync_deadline_ms=2000, refund_async_window_ms=10_000)
    oid = await paid_order(sh)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    pending = asyncio.ensure_future(sh.create_refund(refund(oid)))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if ch.refund_calls:
            break
    note = Notification(oid, Fact.PAID, "T1", 600, "CNY", "n1", "SUCCESS",
                        kind=NotificationKind.REFUND, refund_id=ch.refund_calls[0],
                        refund_status=RefundStatus.SUCCEEDED)
    assert await sh.notify(note)
    reply = await pending
    assert reply["http"] == 200 and reply["refund"]["resolved_by"] == "notify"
    assert loop.time() - t0 < 0.5


async def test_a_restarted_shard_queries_its_open_refunds_and_resends_unrecorded_ones():
    store = MemStore()
    ch1 = ScriptedChannel()
    ch1.refund_delay_s = 30            # the shard "crashes" before the refund call gets anywhere
    sh1 = shard(store, ch1)
    oid = await paid_order(sh1)
    rid = (await sh1.create_refund(refund(oid)))["refund"]["refund_id"]
    ch2 = ScriptedChannel()            # the channel never recorded it
    sh2 = shard(store, ch2)
    assert (await sh2.stats())["open_refunds"] == 1
    r = await refund_when(sh2, oid, rid, "SUCCEEDED")
    assert r["resolved_by"] == "query" and ch2.refund_calls == [rid]
    again = await sh2.create_refund(refund(oid))
    assert again["refund"]["refund_id"] == rid and ch2.refund_calls == [rid]


async def test_a_restarted_shard_finds_a_recorded_refund_by_query_alone():
    store = MemStore()
    ch1 = ScriptedChannel()
    ch1.refund_behaviour = "lost"
    sh1 = shard(store, ch1, refund_query_first_delay_ms=60_000)
    oid = await paid_order(sh1)
    rid = (await sh1.create_refund(refund(oid)))["refund"]["refund_id"]
    ch2 = ScriptedChannel()
    ch2.channel_refunds = dict(ch1.channel_refunds)   # the same channel, seen from the new shard
    sh2 = shard(store, ch2)
    r = await refund_when(sh2, oid, rid, "SUCCEEDED")
    assert r["resolved_by"] == "query" and ch2.refund_calls == [] and ch2.refund_queries


async def test_store_down_means_no_refund_and_no_call():
    store, ch = MemStore(), ScriptedChannel()
    sh = shard(store, ch)
    oid = await paid_order(sh)
    store.down = True
    assert (await sh.create_refund(refund(oid)))["error"] == "unavailable"
    assert ch.refund_calls == [] and store.refunds == {}
    store.down = False
    assert (await sh.create_refund(refund(oid)))["refund"]["status"] == "SUCCEEDED"


async def test_open_refunds_are_bounded_per_shard():
    ch = ScriptedChannel()
    ch.refund_behaviour = "pending"
    ch.refund_query_status = RefundStatus.PENDING
    sh = shard(channel=ch, open_refunds_max=2)
    oid = await paid_order(sh)
    for no in ("a", "b"):
        assert (await sh.create_refund(refund(oid, no, 100)))["http"] == 202
    full = await sh.create_refund(refund(oid, "c", 100))
    assert (full["error"], full["retry_after_s"]) == ("overloaded", 1)


async def test_keyed_locks_share_one_lock_per_key_and_forget_it_when_unused():
    locks, inside, seen = KeyedLocks(), [], []

    async def user(i):
        async with locks.hold("o1"):
            inside.append(i)
            seen.append(len(inside))
            await asyncio.sleep(0.01)
            inside.remove(i)

    await asyncio.gather(*(user(i) for i in range(5)))
    assert seen == [1] * 5 and len(locks) == 0
    with pytest.raises(RuntimeError):
        async with locks.hold("o2"):
            raise RuntimeError("boom")
    assert len(locks) == 0
