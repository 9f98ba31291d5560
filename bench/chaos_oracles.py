"""The chaos run's history (every attempt of every key) and its oracles (bench/chaos.py).

Oracles (names after Jepsen's), each a list of violations:

  lost               an acknowledged key whose order is gone (or answers under another id)
  unexpected         an order no requested key has: a channel trade for an order id no key
                     answers for, or an order record stored in the run's Redis whose app and
                     out_trade_no no client asked for, or that is not the order paycell answers
                     for its key (a second order for one key)
  duplicated         an order charged more than once, across every channel's ledger
  wrong_total        per currency: ledger (charges * amount - refunded) != sum of SUCCEEDED
                     orders' (amount - refunded_amount)
  not_final          a known order still PENDING after the drain
  mismatch           SUCCEEDED but not charged once net on its channel, or final otherwise and
                     money still taken
  divergent_replies  two replies for one key that disagree on the order (id, amount, currency,
                     created_at) or on a final status
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

ORACLES = ("lost", "unexpected", "duplicated", "wrong_total", "not_final", "mismatch",
           "divergent_replies")
FINAL = ("SUCCEEDED", "FAILED", "CLOSED")
IDENTITY = ("order_id", "out_trade_no", "amount", "currency", "created_at")


@dataclass
class Attempt:
    key: str
    body_sha: str
    attempt: int
    t: float                  # seconds since the run started, when the request was sent
    took_s: float
    status: int               # 0: no HTTP answer (timeout, connection error)
    reply: dict[str, Any]
    error: str = ""


@dataclass
class History:
    t0: float = field(default_factory=time.monotonic)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)   # key -> first 200/202 reply
    first_t: dict[str, float] = field(default_factory=dict)   # key -> its first attempt's t
    send_lag_s: list[float] = field(default_factory=list)     # first attempt: sent - scheduled

    def now(self) -> float:
        return time.monotonic() - self.t0


def check(h: History, found: dict[str, dict[str, Any]], books: dict[str, dict[str, Any]],
          stored: list[dict[str, Any]] | None = None, app_id: str = "") -> dict[str, list[Any]]:
    """The oracles over the history, the orders as paycell has them now (key -> order, for every
    requested key it knows), the channels' ledgers and, when given, every order record paycell
    stored (``stored``, of app ``app_id``). Each oracle: the list of its violations."""
    v: dict[str, list[Any]] = {k: [] for k in ORACLES}
    for key, reply in h.acked.items():
        now = found.get(key)
        if now is None or now.get("order_id") != reply.get("order_id"):
            v["lost"].append(key)
    ours = {o["order_id"]: o for o in found.values() if o.get("order_id")}
    for rec in stored or ():
        key = rec.get("out_trade_no", "")
        if rec.get("app_id") != app_id or key not in h.bodies:
            v["unexpected"].append(("stored", rec.get("order_id"), rec.get("app_id"), key))
        elif found.get(key, {}).get("order_id") != rec.get("order_id"):
            v["unexpected"].append(("stored_not_answered", rec.get("order_id"), key))
    charges: dict[str, int] = {}
    net: dict[str, dict[str, int]] = {}       # order id -> channel -> money taken net
    ledger_money: dict[str, int] = {}
    for ch, book in books.items():
        for oid, t in book["trades"].items():
            charges[oid] = charges.get(oid, 0) + int(t["charges"])
            taken = int(t["total_amount"]) * int(t["charges"]) - int(t["refunded_amount"])
            net.setdefault(oid, {})[ch] = taken
            ledger_money[t["currency"]] = ledger_money.get(t["currency"], 0) + taken
            if oid not in ours and (t["charges"] or t["pay_calls"]):
                v["unexpected"].append((ch, oid))
    v["duplicated"] = sorted(oid for oid, n in charges.items() if n > 1)
    order_money: dict[str, int] = {}
    for oid, o in ours.items():
        status = o.get("status")
        if status not in FINAL:
            v["not_final"].append(oid)
            continue
        kept = int(o["amount"]) - int(o.get("refunded_amount", 0))
        on = net.get(oid, {})
        if status == "SUCCEEDED":
            order_money[o["currency"]] = order_money.get(o["currency"], 0) + kept
            if on.get(o.get("channel", ""), 0) != kept or sum(on.values()) != kept:
                v["mismatch"].append((oid, status, on))
        elif any(on.values()):
            v["mismatch"].append((oid, status, on))
    for cur in sorted(set(ledger_money) | set(order_money)):
        if ledger_money.get(cur, 0) != order_money.get(cur, 0):
            v["wrong_total"].append({"currency": cur, "ledger": ledger_money.get(cur, 0),
                                     "succeeded": order_money.get(cur, 0)})
    v["divergent_replies"] = _divergent(h, found)
    return v


def _divergent(h: History, found: dict[str, dict[str, Any]]) -> list[Any]:
    out: list[Any] = []
    by_key: dict[str, list[Attempt]] = {}
    for a in h.attempts:
        if a.status in (200, 202):
            by_key.setdefault(a.key, []).append(a)
    for key, got in by_key.items():
        first = got[0].reply
        final_seen = ""
        for a in got:
            if any(a.reply.get(f) != first.get(f) for f in IDENTITY):
                out.append((key, "identity", a.attempt))
                break
            st = a.reply.get("status", "")
            if final_seen and st != final_seen:
                out.append((key, f"{final_seen}->{st}", a.attempt))
                break
            if st in FINAL:
                final_seen = st
        now = found.get(key, {})
        if final_seen and now.get("status") not in (final_seen, None):
            out.append((key, f"reply {final_seen}, now {now.get('status')}"))
    return out
