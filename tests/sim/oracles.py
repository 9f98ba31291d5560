"""The checkers run after a seed's liveness phase, in the shape of Jepsen's (reliability.md §0.6,
§2.2, §7.0): the final store read against what clients were told, and against the channel's
ledger, which is the money truth.

  lost                  an order id some client was answered with is not in the final store
  unexpected            a stored order whose key or body no client sent
  duplicate_key         two stored orders for one (app_id, out_trade_no)
  charge_sent_twice     one order's charge reached one channel more than once
  double_charge         money taken more than once for one key (or twice in one trade)
  money_for_unknown     the channel took money for an order id the store does not have
  amount_mismatch       the channel took another amount than the order's
  reply_key_mismatch    an answer for a key named another order than the stored one
  false_conflict        409 for the very body the stored order was made from
  not_converged         after the liveness phase: a client unanswered or an order not final
  status_vs_ledger      SUCCEEDED without the money at the order's channel, or FAILED/CLOSED
                        while a channel holds the money
  bad_transition        an order's history steps outside core.states.TRANSITIONS, or its
                        status / resolved_by disagree with its history
  read_mismatch         the final read through the shard differs from the store
Safety checks made during the run (tests/sim/world.py, redis_sim.py) add theirs: a final record
overwritten, a zombie incarnation acting, a reply naming another order, a final status not
stable, the loop's unhandled errors.
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from core.states import TRANSITIONS, Fact, OrderStatus
from tests.sim.swarm import CHANNELS

if TYPE_CHECKING:
    from tests.sim.world import World


def check(w: "World") -> None:
    records = w.redis.records()
    by_id = {r["order_id"]: r for r in records}
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_key[(r["app_id"], r["out_trade_no"])].append(r)
    bodies = {s.key: {s.body.fingerprint()} | ({s.other.fingerprint()} if s.other else set())
              for s in w.specs}

    # ---- the set checker: lost and unexpected orders, one order per key
    answered = {o.order["order_id"]: o.key for o in w.observations if o.order}
    for oid, key in answered.items():
        if oid not in by_id:
            w.violation("lost", f"{oid} (key {key}) was answered but is not stored")
    for r in records:
        key = (r["app_id"], r["out_trade_no"])
        if key not in bodies:
            w.violation("unexpected", f"{r['order_id']}: key {key} was never sent")
        elif r["fingerprint"] not in bodies[key]:
            w.violation("unexpected", f"{r['order_id']}: body of key {key} was never sent")
    for key, recs in by_key.items():
        if len(recs) > 1:
            w.violation("duplicate_key", f"{key}: orders {[r['order_id'] for r in recs]}")

    # ---- answers against the store
    for o in w.observations:
        stored = by_key.get(o.key)
        if not stored:
            continue
        if o.order and o.order["order_id"] != stored[0]["order_id"]:
            w.violation("reply_key_mismatch", f"{o.key}: answered {o.order['order_id']}, "
                                              f"stored {stored[0]['order_id']}")
        if o.error == "idempotency_conflict" and o.amount == stored[0]["amount"]:
            w.violation("false_conflict", f"{o.key}: 409 for the stored order's own body")
    for key, read in w.final_reads.items():
        stored = by_key.get(key)
        want = (stored[0]["order_id"], stored[0]["status"]) if stored else None
        got = (read["order_id"], read["status"]) if read else None
        if got != want:
            w.violation("read_mismatch", f"{key}: shard answers {got}, store has {want}")

    # ---- money: the ledger is the truth
    for (channel, oid), n in w.channels.charge_requests.items():
        if n > 1:
            w.violation("charge_sent_twice", f"{oid}: {n} charges reached {channel}")
    payments: dict[tuple[str, str], int] = defaultdict(int)
    for trade in w.channels.ledger.values():
        if trade.payments == 0:
            continue
        rec = by_id.get(trade.order_id)
        if rec is None:
            w.violation("money_for_unknown", f"{trade.channel} took {trade.amount} for "
                                             f"{trade.order_id}, which is not stored")
            continue
        payments[(rec["app_id"], rec["out_trade_no"])] += trade.payments
        if trade.amount != rec["amount"]:
            w.violation("amount_mismatch", f"{trade.order_id}: channel took {trade.amount}, "
                                           f"order is {rec['amount']}")
    for key, n in payments.items():
        if n > 1:
            w.violation("double_charge", f"{key}: money taken {n} times")

    # ---- liveness: everything answered and final, and final as the money says
    if w.converged_at is None:
        open_ = [oid for oid in w.open_ids() if not w.given_up(oid)]
        w.violation("not_converged",
                    f"after {w.swarm.liveness_max_s}s without faults: requests unanswered "
                    f"{sorted(w.waiting.values())[:5]}, clients not done "
                    f"{sorted(w.clients.values())[:5]}, open orders {open_[:5]}, "
                    f"shard {'up' if w.live else 'down'}, in flight: redis "
                    f"{w.redis.outstanding}, channels {w.channels.outstanding}")
    for r in records:
        oid, status = r["order_id"], r["status"]
        held = [ch for ch in CHANNELS
                if (t := w.channels.ledger.get((ch, oid))) is not None and t.state == "PAID"]
        if status == "PENDING":
            if not w.given_up(oid):
                w.violation("not_final", f"{oid} is PENDING after the liveness phase "
                                         f"(ledger: {_ledger_of(w, oid)})")
        elif status == "SUCCEEDED" and held != [r["channel"]]:
            w.violation("status_vs_ledger", f"{oid} SUCCEEDED on {r['channel']}, money held "
                                            f"by {held} (ledger: {_ledger_of(w, oid)})")
        elif status in ("FAILED", "CLOSED") and held:
            w.violation("status_vs_ledger", f"{oid} {status} but {held} hold its money "
                                            f"(ledger: {_ledger_of(w, oid)})")
        _check_history(w, r)

    for err in w.loop_errors:
        w.violation("loop_error", err)


def _ledger_of(w: "World", oid: str) -> dict[str, str]:
    return {ch: t.state for ch in CHANNELS if (t := w.channels.ledger.get((ch, oid))) is not None}


def _check_history(w: "World", r: dict[str, Any]) -> None:
    status = OrderStatus.PENDING
    for _at, to, fact, rung in r["history"]:
        nxt = TRANSITIONS.get((status, Fact(fact)))
        if nxt is None or nxt.value != to:
            w.violation("bad_transition", f"{r['order_id']}: {status.value} --{fact} via "
                                          f"{rung}--> {to}")
        status = OrderStatus(to)
    if status.value != r["status"]:
        w.violation("bad_transition", f"{r['order_id']}: status {r['status']}, history ends "
                                      f"at {status.value}")
    last_rung = r["history"][-1][3] if r["history"] else None
    if r["resolved_by"] != last_rung:
        w.violation("bad_transition", f"{r['order_id']}: resolved_by {r['resolved_by']}, "
                                      f"history's last rung {last_rung}")
