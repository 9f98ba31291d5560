"""The chaos run's drain (bench/chaos.py): the ladder's time to settle every order, the
reconcile cycles while anything is off, the extra reconciler run that must change nothing, and
the oracles over what paycell answers, stores and the channels hold.

The ladder drain ends when every known order is final, or when every order still open is past
the point where its shard gives up on it (paycell's settings: queries until async_window after
its creation or after the last fault, then cancel_attempts_max cancels; LADDER_SLACK_S more),
at most LADDER_DRAIN_S. Then, while an order is not final or the money does not match the
channels, the reconciler runs once per channel (one cycle), at most ``cycles_max``.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.chaos_load import APP_ID
from bench.chaos_oracles import FINAL, History, check
from bench.chaos_stack import CONTROL_TIMEOUT, LEDGER_CHANNELS, ChaosStack, ledgers
from core.settings import OrderSettings
from gateway.client import PaycellClient

OPERATOR_ID, OPERATOR_SECRET = "local-operator", "local-operator-secret"
RECONCILE_CHANNELS = LEDGER_CHANNELS
LADDER_DRAIN_S = 45.0        # the ladder's time to make every order final before reconciling
LADDER_SLACK_S = 3.0         # past the point where a shard gives up on an order
POLL_EVERY_S = 0.5
LOOKUPS_INFLIGHT_MAX = 32
RECONCILE_TIMEOUT_S = 60.0
RECONCILE_503_RETRIES = 10


# ---- the reconciler ------------------------------------------------------------------------

async def _ops(ops: PaycellClient, method: str, path: str, channel: str,
               unavailable: list[str]) -> tuple[int, dict[str, Any]]:
    """One operator call; a 503 or no answer is retried (as an operator would), noted in
    ``unavailable``."""
    for _ in range(RECONCILE_503_RETRIES):
        try:
            status, report, _ = await ops.request(method, path, None)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            status, report = 0, {"detail": type(e).__name__}
        if status not in (0, 503):
            return status, report
        unavailable.append(f"{channel}: {status} {report.get('detail', '')}")
        await asyncio.sleep(1.0)
    return status, report


async def reconcile(url: str, channel: str, day: str, unavailable: list[str]) -> dict[str, Any]:
    """Run the reconciler for one channel and day to its end; 503s and unanswered calls
    (retried) go to ``unavailable``."""
    path = f"/v1/ops/reconciliation/{channel}/{day}"
    async with PaycellClient(url, OPERATOR_ID, OPERATOR_SECRET,
                             timeout_s=CONTROL_TIMEOUT.total or 30.0) as ops:
        status, report = await _ops(ops, "POST", path, channel, unavailable)
        if status not in (200, 202):
            raise RuntimeError(f"reconcile {channel}: {status} {report}")
        run = report["run"]
        deadline = time.monotonic() + RECONCILE_TIMEOUT_S
        while report.get("status") == "running" or report.get("run", 0) < run:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reconcile {channel} still running after "
                                   f"{RECONCILE_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.5)
            status, report = await _ops(ops, "GET", path, channel, unavailable)
            if status != 200:
                raise RuntimeError(f"reconcile {channel}: {status} {report}")
        return report




# ---- the drain -------------------------------------------------------------------------------

async def lookup(client: PaycellClient, keys: list[str]) -> dict[str, dict[str, Any]]:
    """key -> the order paycell has for it now (keys it does not know are left out)."""
    out: dict[str, dict[str, Any]] = {}
    sem = asyncio.Semaphore(LOOKUPS_INFLIGHT_MAX)

    async def one(key: str) -> None:
        async with sem:
            for _ in range(5):
                try:
                    status, o = await client.find_order(key)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    await asyncio.sleep(0.5)
                    continue
                if status == 200:
                    out[key] = o
                if status < 500:
                    return
                await asyncio.sleep(0.5)
    await asyncio.gather(*(one(k) for k in keys))
    return out


@dataclass(frozen=True)
class Ladder:
    """When a shard gives up on an order (paycell's settings): it queries until async_window
    after the order's creation (or after a restart, query_first_delay after it), then sends
    cancel_attempts_max cancels cancel_retry_interval apart; then the order waits for batch
    reconciliation."""
    async_window_s: float
    query_first_delay_s: float
    cancel_tail_s: float

    @classmethod
    def of(cls, o: OrderSettings) -> Ladder:
        return cls(o.async_window_ms / 1000, o.query_first_delay_ms / 1000,
                   (o.cancel_attempts_max - 1) * o.cancel_retry_interval_ms / 1000)

    def gives_up_at(self, created_t: float, faults_end_t: float) -> float:
        return (max(created_t + self.async_window_s, faults_end_t + self.query_first_delay_s)
                + self.cancel_tail_s + LADDER_SLACK_S)


async def drain_ladder(client: PaycellClient, h: History, ladder: Ladder, faults_end_t: float
                       ) -> tuple[dict[str, dict[str, Any]], float, list[str]]:
    """Wait for the ladder: (key -> order, seconds waited, keys still open at the end). Only the
    open orders are looked up again (a final status does not change)."""
    t0 = time.monotonic()
    last_t: dict[str, float] = {}          # an order is created by one of its key's attempts
    for a in h.attempts:
        last_t[a.key] = max(last_t.get(a.key, 0.0), a.t)
    found = await lookup(client, sorted(h.bodies))
    while True:
        still = sorted(k for k, o in found.items() if o.get("status") not in FINAL)
        if (not still or time.monotonic() - t0 > LADDER_DRAIN_S
                or all(h.now() > ladder.gives_up_at(last_t[k], faults_end_t) for k in still)):
            return found, time.monotonic() - t0, still
        await asyncio.sleep(POLL_EVERY_S)
        found.update(await lookup(client, still))


@dataclass
class Reconciled:
    cycles: int = 0
    seconds: float = 0.0
    reports: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)   # the extra run on the drained state
    unavailable: list[str] = field(default_factory=list)


def _report(r: dict[str, Any], **where: Any) -> dict[str, Any]:
    return {**where, "status": r.get("status"), "counts": r.get("counts", r.get("summary")),
            "errors": r.get("errors", [])[:5]}


async def reconcile_cycles(stack: ChaosStack, http: aiohttp.ClientSession,
                           client: PaycellClient, h: History, found: dict[str, dict[str, Any]],
                           day: str, cycles_max: int) -> Reconciled:
    """While an order is not final or the money is off, one reconciler run per channel (a
    cycle), at most ``cycles_max``; ``found`` is kept current."""
    rc, t0 = Reconciled(), time.monotonic()
    v = check(h, found, await ledgers(http, stack.sandbox_url))
    while rc.cycles < cycles_max and (v["not_final"] or v["mismatch"] or v["wrong_total"]):
        rc.cycles += 1
        for ch in RECONCILE_CHANNELS:
            r = await reconcile(stack.url, ch, day, rc.unavailable)
            rc.reports.append(_report(r, cycle=rc.cycles, channel=ch))
        money_off = v["mismatch"] or v["wrong_total"]     # may be about final orders too
        found.update(await lookup(client, sorted(h.bodies) if money_off else
                                  [k for k, o in found.items() if o.get("status") not in FINAL]))
        v = check(h, found, await ledgers(http, stack.sandbox_url))
    rc.seconds = time.monotonic() - t0
    return rc


async def final_check(stack: ChaosStack, http: aiohttp.ClientSession, client: PaycellClient,
                      h: History, found: dict[str, dict[str, Any]], rc: Reconciled, day: str
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]], int]:
    """One more reconciler run on the drained state (it must change nothing), then the oracles
    on everything paycell answers, stores and the channels hold: (orders, violations, number
    of stored orders)."""
    for ch in RECONCILE_CHANNELS:
        rc.after.append(_report(await reconcile(stack.url, ch, day, rc.unavailable), channel=ch))
    now = await lookup(client, sorted(h.bodies))
    stored = await stack.stored_orders()
    v = check(h, now, await ledgers(http, stack.sandbox_url), stored, APP_ID)
    changed = sorted(k for k in found if now.get(k, {}).get("status") != found[k].get("status"))
    if changed:
        v["changed_by_extra_reconcile"] = changed
    failed = [x for x in rc.reports + rc.after if x["status"] != "complete"]
    if failed:
        v["reconcile_failed"] = failed
    return now, v, len(stored)


