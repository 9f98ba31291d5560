"""A reconciliation run's report: its state while it runs, its JSON form and a readable summary.

The JSON form is what `GET /v1/ops/reconciliation/{channel}/{date}` serves and Redis keeps; the
text form (`?format=text`, and what `paycell reconcile` prints) is rendered from the JSON alone,
so a stored report reads the same later. Lists are bounded (report_items_max): past the bound an
entry is only counted (`truncated`). Everything is sorted, so two runs that found the same things
write the same lists.
"""
from __future__ import annotations

from datetime import date
from typing import Any

from actors.reconcile_match import Finding, Plan
from channels.base import Statement, StatementKind
from core.clock import rfc3339
from core.money import CURRENCY_EXPONENT, minor_to_decimal_str

COUNTS = ("lines_parsed", "payment_lines", "refund_lines", "other_set_lines", "matched",
          "reversed", "settled_paid", "settled_closed", "already_settled", "resolved_meanwhile",
          "paid_other_day", "not_due", "left_open", "refunds_sent", "refunds_already_done",
          "refunds_failed", "own_refund_lines", "refunds_matched", "refunds_settled",
          "refunds_already_settled", "refunds_not_due", "refunds_left_pending", "mismatches",
          "deferred", "errors")
ITEMS_MAX = 1000   # entries per list in a report; the rest are counted under "truncated"


class Run:
    """The state of one run of one channel's day."""

    def __init__(self, channel: str, day: date, region: str, set_name: str, run_no: int,
                 started_at: float, items_max: int = ITEMS_MAX) -> None:
        self.channel, self.day, self.region, self.set_name = channel, day, region, set_name
        self.run_no, self.started_at = run_no, started_at
        self.finished_at: float | None = None
        self.status, self.phase = "running", "statement"
        self.counts: dict[str, int] = {name: 0 for name in COUNTS}
        self.statement: dict[str, Any] = {}
        self.covered_until: float | None = None
        self.findings: list[Finding] = []
        self.settled: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self._items_max = items_max

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def saw_statement(self, st: Statement, covered_until: float) -> None:
        totals: dict[str, dict[str, int]] = {}
        for line in st.lines:
            t = totals.setdefault(line.currency, {"paid": 0, "refunded": 0, "fees": 0})
            t["paid" if line.kind is StatementKind.PAYMENT else "refunded"] += line.amount
            t["fees"] += line.fee
        pays = [x for x in st.lines if x.kind is StatementKind.PAYMENT]
        self.statement = {
            "lines": len(st.lines), "payments": len(pays), "refunds": len(st.lines) - len(pays),
            "totals": totals,
            # the bill's own summary against its rows (0: the bill states none)
            "summary_matches": (st.payments_count in (0, len(pays))
                                and st.payments_total in (0, sum(x.amount for x in pays))),
        }
        self.counts["lines_parsed"] = len(st.lines)
        self.covered_until = covered_until

    def took_plan(self, plan: Plan) -> None:
        for name, n in plan.counts.items():
            if name != "mismatches":
                self.count(name, n)
        for f in plan.findings:
            self.add_finding(f)
        for o in plan.already_settled:
            self.add_settled(o.order_id, o.history[-1].fact if o.history else "",
                             "already_settled", o.status.value)

    def add_finding(self, f: Finding) -> None:
        self.findings.append(f)
        self.count("mismatches")

    def add_settled(self, order_id: str, fact: str, outcome: str, status: str) -> None:
        self.settled.append({"order_id": order_id, "fact": fact, "outcome": outcome,
                             "status": status})
        self.count({"settled": "settled_" + fact.lower(), "already_settled": "already_settled",
                    "resolved_meanwhile": "resolved_meanwhile"}.get(outcome, "errors"))

    def settled_refund(self, refund_id: str, order_id: str, status: str) -> None:
        self.settled.append({"order_id": order_id, "refund_id": refund_id, "fact": "REFUND",
                             "outcome": "settled", "status": status})

    def error(self, step: str, detail: str, order_id: str = "") -> None:
        self.errors.append({"step": step, "order_id": order_id, "detail": detail[:300]})
        self.count("errors")

    def fail(self, detail: str, now: float) -> None:
        self.error(self.phase, detail)
        self.status, self.finished_at = "failed", now

    def finish(self, now: float) -> None:
        self.status, self.phase, self.finished_at = "complete", "done", now

    def to_json(self) -> dict[str, Any]:
        def bounded(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
            truncated[key] = max(0, len(items) - self._items_max)
            return items[:self._items_max]
        truncated: dict[str, int] = {}
        by_kind: dict[str, int] = {}
        for f in self.findings:
            by_kind[f.kind.value] = by_kind.get(f.kind.value, 0) + 1
        findings = sorted((f.to_json() for f in self.findings),
                          key=lambda x: (x["kind"], x["order_id"], str(x["channel"])))
        return {
            "channel": self.channel, "day": self.day.isoformat(), "region": self.region,
            "set": self.set_name, "status": self.status, "phase": self.phase, "run": self.run_no,
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at) if self.finished_at is not None else None,
            "covered_until": (rfc3339(self.covered_until)
                              if self.covered_until is not None else None),
            "statement": self.statement, "counts": dict(self.counts),
            "mismatches_by_kind": dict(sorted(by_kind.items())),
            "mismatches": bounded(findings, "mismatches"),
            "settled": bounded(sorted(self.settled, key=lambda x: x["order_id"]), "settled"),
            "errors": bounded(self.errors, "errors"),
            "truncated": truncated,
        }


def _amount(amount: int, currency: str) -> str:
    if currency in CURRENCY_EXPONENT:
        return minor_to_decimal_str(amount, currency)
    return f"{amount} (minor units)"


def _money(amount: int, currency: str) -> str:
    return f"{_amount(amount, currency)} {currency}"


def render_text(r: dict[str, Any]) -> str:
    """A report (its JSON form) as a summary an operator reads."""
    c = r["counts"]
    out = [f"Reconciliation of {r['channel']} for {r['day']} (region {r['region']}, "
           f"SET {r['set']}): {r['status']}, run {r['run']}",
           f"  started {r['started_at']}, finished {r['finished_at'] or '-'}"
           + (f", statement covers trades until {r['covered_until']}"
              if r["covered_until"] else "")]
    st = r["statement"]
    if st:
        money = "; ".join(
            f"{cur}: paid {_amount(t['paid'], cur)}, refunded {_amount(t['refunded'], cur)}, "
            f"fees {_amount(t['fees'], cur)}" for cur, t in sorted(st["totals"].items()))
        out.append(f"  statement: {st['lines']} lines ({st['payments']} payments, "
                   f"{st['refunds']} refunds){'; ' + money if money else ''}"
                   + ("" if st["summary_matches"] else "; ITS SUMMARY DISAGREES WITH ITS ROWS"))
    out.append(f"  orders: {c['matched']} matched, {c['settled_paid']} settled paid, "
               f"{c['settled_closed']} closed through the channel, {c['already_settled']} "
               f"already settled, {c['resolved_meanwhile']} resolved meanwhile, "
               f"{c['paid_other_day']} paid on another day, {c['not_due']} not covered by the "
               f"statement yet, {c['left_open']} left open; {c['other_set_lines']} lines of "
               "other SETs")
    out.append(f"  paycell's refunds: {c['refunds_matched']} matched, {c['refunds_settled']} "
               f"settled, {c['refunds_already_settled']} already settled, "
               f"{c['refunds_left_pending']} still pending at the channel, "
               f"{c['refunds_not_due']} not due")
    out.append(f"  reconciliation refunds: {c['refunds_sent']} sent, "
               f"{c['refunds_already_done']} already done, {c['refunds_failed']} failed")
    kinds = ", ".join(f"{k} {n}" for k, n in r["mismatches_by_kind"].items())
    out.append(f"  mismatches: {c['mismatches']}" + (f" ({kinds})" if kinds else ""))
    for m in r["mismatches"]:
        refunds = "".join(f" [refund {x['refund_id']} {_money(x['amount'], x['currency'])} "
                          f"{x['status']}]" for x in m["refunds"])
        out.append(f"    {m['kind']:<22} {m['order_id']}  {m['detail']}{refunds}")
    out.append(f"  errors: {c['errors']}" + ("" if c["errors"] else " (none)"))
    for e in r["errors"]:
        out.append(f"    {e['step']}: {e['order_id'] + ': ' if e['order_id'] else ''}"
                   f"{e['detail']}")
    for key, n in r["truncated"].items():
        if n:
            out.append(f"  ({n} more {key} not listed)")
    if c["deferred"]:
        out.append(f"  {c['deferred']} channel calls deferred to the next run "
                   "(reconcile.actions_max)")
    return "\n".join(out) + "\n"


# What RunTotals counts as settled, by kind, from a run's counts.
SETTLED_KINDS = {"paid": "settled_paid",        # PENDING -> SUCCEEDED (a payment line, or the
                                                # cancel of a close answered paid)
                 "closed": "settled_closed",    # PENDING -> CLOSED through the channel's cancel
                 "refunded": "refunds_sent",    # reconciliation refunds of extra payments (paid
                                                # twice, paid on a closed order, on a left channel)
                 "refund_settled": "refunds_settled"}   # paycell's own refunds settled


class RunTotals:
    """The reconciler's counters since its actor started, by channel: runs by outcome, what
    they settled by kind, mismatches by kind (a rerun of a day reports its mismatches again),
    and the last finished run's duration and end. What /metrics shows (gateway/metrics.py)."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, int]] = {}
        self.settled: dict[str, dict[str, int]] = {}
        self.mismatches: dict[str, dict[str, int]] = {}
        self.last_run: dict[str, dict[str, Any]] = {}

    def add(self, run: Run) -> None:
        """A finished run (complete or failed)."""
        assert run.finished_at is not None, "only finished runs are counted"
        ch = run.channel
        _bump(self.runs.setdefault(ch, {}), run.status, 1)
        settled = self.settled.setdefault(ch, {})
        for kind, count in SETTLED_KINDS.items():
            _bump(settled, kind, run.counts.get(count, 0))
        mismatches = self.mismatches.setdefault(ch, {})
        for f in run.findings:
            _bump(mismatches, f.kind.value, 1)
        self.last_run[ch] = {"day": run.day.isoformat(), "status": run.status,
                             "started_at": run.started_at, "finished_at": run.finished_at,
                             "duration_s": max(0.0, run.finished_at - run.started_at)}

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "settled": self.settled, "mismatches": self.mismatches,
                "last_run": self.last_run}


def _bump(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n
