"""The chaos run: the stack as processes under load, a recorded history, faults, a drain, oracles.

  python -m bench.chaos [--scenario all|shard_kill|channel_faults|notify_faults|redis_kill|
                                    gateway_kill|node_loss|reconcile|mixed|a+b]
                        [--rate R|half] [--duration S] [--seed N] [--cycles K] [--out DIR]

What runs (all on loopback, all ours, every process ended by PID; bench/chaos_stack.py):
redis-server and the channel sandbox (``--naive-charge``: every charge request that reaches a
channel charges again, so any second request for one order is a double charge) started here, and
``paycell up`` on them, with scheduled reconciliation off and ``reconcile.statement_lag_s=0``
(the run reconciles today on demand after the drain) and the channels' documented request rates
lifted (as in bench.run: the sandbox is not the channel).

The load (bench/chaos_load.py) is open loop at ``--rate`` orders/s (default 40, light enough for
``make test``). ``--rate half`` first measures the stack's maximum for the same order mix in this
invocation (wrk closed loop, 64 connections, 10 s, on a stack of its own) and then runs at half of
it; the run prints both and how far the Python generator fell behind its schedule (send lag).
Every client retries with the same key and the same body on 5xx, 429, timeouts and connection
errors, backing off exponentially (0.2 s doubling to 2 s), for up to RETRY_FOR_S. Every attempt
is recorded: key, body hash, attempt, time, reply status and body (or the error).

Faults (a seeded schedule; ``--seed`` makes it the same run again):

  shard_kill      SIGKILL a random shard actor process every ~SHARD_KILL_EVERY_S
  channel_faults  channel knobs: commit-then-drop 2%, hang 5% (HANG_MS) on every channel
  notify_faults   notifications dropped 20%, duplicated 30%; earlier notifications replayed late
                  (reordered); SUCCEEDED orders fully refunded, then their PAID notification
                  replayed after the refund's (a late contradictory one)
  redis_kill      redis-server SIGKILLed and restarted identically, or SIGSTOPped for PAUSE_S
  gateway_kill    ``paycell up`` SIGKILLed (its leftovers by PID) and started again on the same
                  data and ports while clients keep retrying the same keys
  node_loss       two Ray nodes on loopback (PAYCELL_RAY__LOCAL_NODES=2); the second node's raylet
                  is SIGKILLed, its actors restart on the head
  reconcile       a query outage over the load's last OUTAGE_S: the channels take payments
                  (commit-then-drop 5%) but drop every notification and fail every query and
                  cancel (followup_error_rate), longer than paycell's async window and cancel
                  retries (shortened for this scenario: RECONCILE_SETTINGS), so the orders in
                  doubt are left PENDING for the third rung, batch reconciliation
  mixed           all of the above at once, process faults less often
  a+b             the named ones at once (e.g. shard_kill+channel_faults+notify_faults)

After the load, faults stop (knobs back to none, Redis running, the gateway up), then the drain
(bench/chaos_drain.py): the ladder (sync -> notify -> query) gets until every known order is
final, or until every order still open is past the point where its shard gives up on it; then,
while an order is not final or does not match its channel, the reconciler runs once per channel
(one "cycle"), up to ``--cycles`` (default 3), runs once more (it must change nothing; a run that
does not complete is a violation too), and the oracles run (bench/chaos_oracles.py): lost,
unexpected (channel trades and the order records in the run's own Redis), duplicated,
wrong_total (per currency), not_final, mismatch, divergent_replies.

It prints a table, writes JSON (with the whole history) under bench/results/, and exits 1 on any
violation.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import orjson
import uvloop

from bench.chaos_drain import Ladder, drain_ladder, final_check, reconcile_cycles
from bench.chaos_load import (APP_ID, APP_SECRET, REQUEST_TIMEOUT_S, client_session,
                              lag_figures, open_loop, prepare, probe_max)
from bench.chaos_oracles import ORACLES, History
from bench.chaos_stack import LEDGER_CHANNELS, ChaosStack, ledgers, set_knobs, wait_ready
from gateway.client import PaycellClient

RESULTS = Path(__file__).with_name("results")

SCENARIOS = ("shard_kill", "channel_faults", "notify_faults", "redis_kill", "gateway_kill",
             "node_loss", "reconcile", "mixed")

DEFAULT_RATE = 40.0          # orders/s; --rate half measures the maximum and takes half
DEFAULT_DURATION_S = 30.0
DEFAULT_CYCLES = 3           # the stated bound: reconcile cycles to drain

SHARD_KILL_EVERY_S = 3.0
REDIS_FAULT_EVERY_S = 6.0
REDIS_DOWN_S = 1.0           # between the SIGKILL and the restart
PAUSE_S = 2.0                # SIGSTOP .. SIGCONT
GATEWAY_KILL_EVERY_S = 25.0
NODE_LOSS_AT_S = 5.0
CHANNEL_KNOBS = {"commit_then_drop_rate": 0.02, "hang_rate": 0.05, "hang_ms": 3000}
NOTIFY_KNOBS = {"notify_drop_rate": 0.2, "notify_duplicate_rate": 0.3}
NO_KNOBS = {"commit_then_drop_rate": 0.0, "hang_rate": 0.0, "notify_drop_rate": 0.0,
            "notify_duplicate_rate": 0.0, "followup_error_rate": 0.0}
REPLAY_EVERY_S = 0.25        # one late (reordered) notification this often
REFUND_SHARE = 0.1           # of SUCCEEDED orders in notify_faults: fully refunded
MIXED_SLOWER = 2.0           # mixed: process faults this many times less often

# reconcile: the query outage, and paycell's ladder shortened so that it gives up on an order
# (async window, then cancel_attempts_max cancels) within the outage: ~5 s after its creation
OUTAGE_KNOBS = {"followup_error_rate": 1.0, "notify_drop_rate": 1.0,
                "commit_then_drop_rate": 0.05}
OUTAGE_S = (10.0, 0.4)       # the load's last 10 s, or its last 40% if longer
RECONCILE_MIN_S = 12.0       # a shorter load leaves (almost) no order to the third rung
RECONCILE_SETTINGS = {"PAYCELL_ORDERS__QUERY_INTERVAL_MS": "1000",
                      "PAYCELL_ORDERS__ASYNC_WINDOW_MS": "4000",
                      "PAYCELL_ORDERS__CANCEL_RETRY_INTERVAL_MS": "1000",
                      "PAYCELL_ORDERS__CANCEL_ATTEMPTS_MAX": "2"}


# ---- faults ----------------------------------------------------------------------------------

@dataclass
class Faults:
    counts: dict[str, int] = field(default_factory=dict)
    log: list[tuple[float, str]] = field(default_factory=list)

    def add(self, h: History, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n
        self.log.append((round(h.now(), 2), kind))


async def every(period_s: float, until: float, rng: random.Random,
                act: Callable[[], Awaitable[None]], first_s: float = 1.0) -> None:
    """Run ``act`` at jittered times (period_s * U(0.5, 1.5)) until ``until`` (monotonic)."""
    await asyncio.sleep(first_s)
    while time.monotonic() < until:
        await act()
        await asyncio.sleep(period_s * rng.uniform(0.5, 1.5))


def kinds_of(scenario: str) -> frozenset[str]:
    """The fault kinds of a scenario: one name, ``mixed`` (all), or names joined by ``+``."""
    if scenario == "mixed":
        return frozenset(SCENARIOS) - {"mixed"}
    kinds = frozenset(scenario.split("+"))
    unknown = kinds - set(SCENARIOS) - {"mixed"}
    if unknown or "mixed" in kinds:
        raise ValueError(f"unknown scenario part(s) {sorted(unknown)}; known: {SCENARIOS}")
    return kinds


def outage_window(duration_s: float) -> tuple[float, float]:
    """reconcile: (start, end) of the query outage in seconds after the load's start. It ends
    with the load: a later process fault (a restarted shard queries every open order again)
    would let the ladder settle what the outage left."""
    return max(0.0, duration_s - max(OUTAGE_S[0], OUTAGE_S[1] * duration_s)), duration_s


def injectors(kinds: frozenset[str], stack: ChaosStack, h: History, faults: Faults,
              http: aiohttp.ClientSession, client: PaycellClient, rng: random.Random,
              start: float, until: float, base_knobs: dict[str, Any]) -> list[Awaitable[None]]:
    """The fault jobs of ``kinds``. What blocks (psutil walks, waits for a process) runs in a
    thread, so the open loop on this event loop keeps its schedule."""
    mixed = len(kinds & {"shard_kill", "redis_kill", "gateway_kill", "node_loss"}) > 1
    slower = MIXED_SLOWER if mixed else 1.0
    jobs: list[Awaitable[None]] = []

    if "shard_kill" in kinds:
        async def shard() -> None:
            if await asyncio.to_thread(stack.kill_shard, rng):
                faults.add(h, "shard_killed")
        jobs.append(every(SHARD_KILL_EVERY_S * slower, until, rng, shard))

    if "redis_kill" in kinds:
        async def redis() -> None:
            if rng.random() < 0.5:
                await asyncio.to_thread(stack.kill_redis)
                faults.add(h, "redis_killed")
                await asyncio.sleep(REDIS_DOWN_S)
                await asyncio.to_thread(stack.start_redis)
            else:
                stack.pause_redis(True)
                faults.add(h, "redis_paused")
                await asyncio.sleep(PAUSE_S)
                stack.pause_redis(False)
        jobs.append(every(REDIS_FAULT_EVERY_S * slower, until, rng, redis, first_s=2.0))

    if "gateway_kill" in kinds:
        async def gateway() -> None:
            await asyncio.to_thread(stack.kill_gateway)
            faults.add(h, "gateway_killed")
            faults.counts["gateway_restart_s_max"] = max(
                faults.counts.get("gateway_restart_s_max", 0),
                round(await wait_ready(stack.url)))
        period = GATEWAY_KILL_EVERY_S * (1.5 if mixed else 1.0)
        jobs.append(every(period, until, rng, gateway, first_s=period / 3))

    if "node_loss" in kinds:
        async def node() -> None:
            await asyncio.sleep(NODE_LOSS_AT_S)
            hosted = await asyncio.to_thread(stack.kill_node)
            if hosted is not None:
                faults.add(h, "node_lost")
                for actor in hosted:
                    faults.add(h, f"node_lost_actor_{actor}")
            else:
                faults.add(h, "node_loss_no_second_node")
        jobs.append(node())

    if "reconcile" in kinds:
        async def outage() -> None:
            at, end = outage_window(until - start)
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            await set_knobs(http, stack.sandbox_url, base_knobs | OUTAGE_KNOBS)
            faults.add(h, "query_outage")
            await asyncio.sleep(max(0.0, start + end - time.monotonic()))
            await set_knobs(http, stack.sandbox_url, NO_KNOBS | base_knobs)
            faults.counts["query_outage_s"] = round(end - at)
            faults.log.append((round(h.now(), 2), "query_outage_over"))
        jobs.append(outage())

    if "notify_faults" in kinds:
        refunded: set[str] = set()

        async def replay_one() -> None:
            """A late notification: an earlier one of an order delivered again now; for a
            refunded order its PAID one after the refund's (contradicts the refund)."""
            succeeded = [(k, o) for k, o in h.acked.items() if o.get("status") == "SUCCEEDED"
                         and o.get("channel") in LEDGER_CHANNELS]
            if not succeeded:
                return
            key, order = rng.choice(succeeded)
            oid, ch = order["order_id"], order["channel"]
            if key not in refunded and rng.random() < REFUND_SHARE:
                refunded.add(key)
                try:
                    status, _ = await client.create_refund(oid, {"out_refund_no": f"rf{key}",
                                                                 "amount": order["amount"],
                                                                 "reason": "chaos"})
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    status = 0           # the gateway is down (mixed): no late notification
                faults.add(h, f"refund_{status}")
                if status not in (200, 202):
                    return
                await asyncio.sleep(1.0)     # its notification first
                kind = "notify_contradictory"
            else:
                kind = "notify_reordered"
            async with http.post(f"{stack.sandbox_url}/{ch}/_sandbox/replay",
                                 json={"out_trade_no": oid, "index": 0}) as r:
                if r.status == 200:
                    faults.add(h, kind)
        jobs.append(every(REPLAY_EVERY_S, until, rng, replay_one))
    return jobs


# ---- the run ---------------------------------------------------------------------------------

def base_knobs(kinds: frozenset[str]) -> dict[str, Any]:
    """The channel knobs a scenario keeps on for its whole load."""
    knobs: dict[str, Any] = {}
    if "channel_faults" in kinds:
        knobs |= CHANNEL_KNOBS
    if "notify_faults" in kinds:
        knobs |= NOTIFY_KNOBS
    return knobs


def count_channel_faults(books: dict[str, dict[str, Any]], faults: Faults) -> None:
    """The faults the sandbox injected (its ledgers count them) into ``faults``."""
    for book in books.values():
        for name, n in book["totals"].get("faults", {}).items():
            faults.counts[f"channel_{name}"] = faults.counts.get(f"channel_{name}", 0) + n
        for name in ("notifies_dropped", "notifies_duplicated"):
            faults.counts[name] = faults.counts.get(name, 0) + book["totals"].get(name, 0)


async def drive(stack: ChaosStack, scenario: str, rate: float, duration_s: float, seed: int,
                cycles_max: int) -> dict[str, Any]:
    rng = random.Random(seed)
    load_rng, fault_rng, retry_rng = (random.Random(rng.random()) for _ in range(3))
    h, faults, kinds = History(), Faults(), kinds_of(scenario)
    day = datetime.now(timezone.utc).date().isoformat()
    async with client_session() as http, \
            PaycellClient(stack.url, APP_ID, APP_SECRET, session=http,
                          timeout_s=REQUEST_TIMEOUT_S) as client:
        knobs = base_knobs(kinds)
        if knobs:
            await set_knobs(http, stack.sandbox_url, knobs)
        orders = prepare(load_rng, secrets.token_hex(3), math.ceil(rate * duration_s))
        start, cpu0 = time.monotonic(), time.process_time()   # (orders signed before this)
        fault_tasks = [asyncio.ensure_future(j) for j in injectors(
            kinds, stack, h, faults, http, client, fault_rng, start, start + duration_s, knobs)]
        tasks = await open_loop(client, http, h, orders, rate, start, retry_rng)
        # faults stop: injectors finish their current fault (a restart completes), knobs off
        await asyncio.gather(*fault_tasks)
        await set_knobs(http, stack.sandbox_url, NO_KNOBS)
        faults_end_t, load_s = h.now(), time.monotonic() - start
        await asyncio.gather(*tasks)
        clients_done_s = time.monotonic() - start
        driver_cpu_s = time.process_time() - cpu0
        count_channel_faults(await ledgers(http, stack.sandbox_url), faults)
        # drain: the ladder first, then reconcile cycles while anything is off
        found, ladder_s, left = await drain_ladder(client, h, Ladder.of(stack.settings.orders),
                                                   faults_end_t)
        rc = await reconcile_cycles(stack, http, client, h, found, day, cycles_max)
        now, v, stored = await final_check(stack, http, client, h, found, rc, day)
    return {
        "scenario": scenario, "rate": rate, "duration_s": duration_s, "seed": seed,
        **_counts(h, now), "stored_orders": stored, "send_lag": lag_figures(h.send_lag_s),
        "driver_cpu_us_per_order": round(driver_cpu_s * 1e6 / max(1, len(orders))),
        "faults": faults.counts, "fault_log": faults.log,
        "load_s": round(load_s, 1), "clients_done_s": round(clients_done_s, 1),
        "ladder_drain_s": round(ladder_s, 1), "left_for_reconcile": len(left),
        "reconcile_cycles_to_drain": rc.cycles, "reconcile_s": round(rc.seconds, 1),
        "reconcile_cycles_max": cycles_max, "reconcile_reports": rc.reports,
        "reconcile_after": rc.after, "reconcile_503": rc.unavailable,
        "violations": {k: len(x) for k, x in v.items()},
        "violation_examples": {k: x[:10] for k, x in v.items() if x},
        "history": [asdict(a) for a in h.attempts],
    }


def _counts(h: History, now: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Orders, requests and answers of the history; final statuses and rungs of the orders."""
    statuses: dict[str, int] = {}
    resolved: dict[str, int] = {}
    reconciled: dict[str, int] = {}
    for o in now.values():
        statuses[o.get("status", "?")] = statuses.get(o.get("status", "?"), 0) + 1
        rb = o.get("resolved_by") or "-"
        resolved[rb] = resolved.get(rb, 0) + 1
        if rb == "reconcile":
            reconciled[o["status"]] = reconciled.get(o["status"], 0) + 1
    return {
        "orders": len(h.bodies), "requests": len(h.attempts),
        "retries": len(h.attempts) - len(h.bodies),
        "no_answer": sum(1 for a in h.attempts if a.status == 0),
        "http_5xx": sum(1 for a in h.attempts if a.status >= 500),
        "http_429": sum(1 for a in h.attempts if a.status == 429),
        "acknowledged": len(h.acked), "known_to_paycell": len(now),
        "statuses": statuses, "resolved_by": resolved, "reconciled_to": reconciled,
    }


def run_scenario(scenario: str, rate: float, duration_s: float, seed: int,
                 cycles_max: int = DEFAULT_CYCLES, work: Path | None = None) -> dict[str, Any]:
    """Start a fresh stack, run one scenario, always stop the stack."""
    kinds = kinds_of(scenario)
    if "reconcile" in kinds and duration_s < RECONCILE_MIN_S:
        raise ValueError(f"reconcile needs a load of at least {RECONCILE_MIN_S:g} s")
    nodes = 2 if "node_loss" in kinds else 1
    with tempfile.TemporaryDirectory(prefix=f"paycell-chaos-{scenario}-",
                                     dir=work) as tmp:
        stack = ChaosStack(Path(tmp), seed, local_nodes=nodes,
                           settings_env=RECONCILE_SETTINGS if "reconcile" in kinds else None)
        try:
            stack.start()
            return uvloop.run(drive(stack, scenario, rate, duration_s, seed, cycles_max))
        except BaseException:
            print(stack.tail(), file=sys.stderr)
            raise
        finally:
            stack.stop()


def violations(result: dict[str, Any]) -> int:
    return 1 if "error" in result else sum(result["violations"].values())


def print_table(results: list[dict[str, Any]], probe: dict[str, Any] | None) -> None:
    if probe is not None:
        print(f"\nmeasured maximum: {probe['max_per_s']:g} orders/s ({probe['generator']}, "
              f"{probe['connections']} connections, {probe['seconds']:g} s, the chaos mix, "
              f"p50 {probe['p50_ms']} ms, p99 {probe['p99_ms']} ms); rate used: half")
    for r in results:
        if "error" in r:
            print(f"\nchaos {r['scenario']}: did not complete: {r['error']}")
            continue
        lag = r["send_lag"]
        print(f"\nchaos {r['scenario']}: {r['rate']:g}/s for {r['duration_s']:g} s, "
              f"seed {r['seed']}")
        print(f"  orders {r['orders']}  acknowledged {r['acknowledged']}  "
              f"requests {r['requests']} (retries {r['retries']}, no answer {r['no_answer']}, "
              f"5xx {r['http_5xx']}, 429 {r['http_429']})")
        print(f"  load generator send lag: p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, "
              f"max {lag['max_ms']} ms; this process's CPU per order (load, retries, faults) "
              f"{r['driver_cpu_us_per_order']} us")
        print(f"  final: {r['statuses']}  resolved by: {r['resolved_by']} (reconcile: "
              f"{r['reconciled_to']})")
        print("  faults: " + ", ".join(f"{k} {n}" for k, n in sorted(r["faults"].items())))
        print(f"  drain: clients done {r['clients_done_s']} s after start; ladder "
              f"{r['ladder_drain_s']} s, left open {r['left_for_reconcile']}; reconcile cycles "
              f"to drain {r['reconcile_cycles_to_drain']} (bound {r['reconcile_cycles_max']}, "
              f"{r['reconcile_s']} s); orders stored in Redis {r['stored_orders']}")
        print("  violations: " + ", ".join(f"{k} {r['violations'].get(k, 0)}" for k in ORACLES)
              + "".join(f", {k} {n}" for k, n in r["violations"].items() if k not in ORACLES))
        for k, ex in r.get("violation_examples", {}).items():
            print(f"    {k}: {ex}")


def _rate(text: str) -> float | str:
    if text == "half":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of orders/s, or half") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="all",
                   help="all, one of " + ", ".join(SCENARIOS) + ", or parts joined by +")
    p.add_argument("--rate", type=_rate, default=DEFAULT_RATE,
                   help="orders/s (open loop), or half: half of the maximum measured first")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="load seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cycles", type=int, default=DEFAULT_CYCLES,
                   help="the bound on reconcile cycles to drain")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.duration <= 0 or args.cycles < 0:
        p.error("--duration must be > 0, --cycles >= 0")
    if args.scenario != "all":
        try:
            kinds = kinds_of(args.scenario)
        except ValueError as e:
            p.error(str(e))
        if "reconcile" in kinds and args.duration < RECONCILE_MIN_S:
            p.error(f"reconcile needs --duration >= {RECONCILE_MIN_S:g}")
    elif args.duration < RECONCILE_MIN_S:
        p.error(f"all includes reconcile: --duration >= {RECONCILE_MIN_S:g}")
    probe = None
    rate = args.rate
    if rate == "half":
        print("chaos: measuring the maximum (wrk closed loop) ...", flush=True)
        probe = probe_max(args.seed)
        rate = round(probe["max_per_s"] / 2)
        print(f"chaos: maximum {probe['max_per_s']:g} orders/s; rate {rate}/s", flush=True)
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = []
    for name in names:
        dur = args.duration * (2 if name == "mixed" and args.scenario == "all" else 1)
        print(f"chaos: {name} ...", flush=True)
        try:
            results.append(run_scenario(name, rate, dur, args.seed, args.cycles))
        except Exception as e:        # recorded (exit 1); the next scenario has its own stack
            print(f"chaos: {name} did not complete: {e!r}", file=sys.stderr, flush=True)
            results.append({"scenario": name, "rate": rate, "duration_s": dur,
                            "error": f"{type(e).__name__}: {e}"})
    print_table(results, probe)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"chaos-{args.scenario}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_bytes(orjson.dumps({"argv": sys.argv, "probe": probe, "results": results},
                                 option=orjson.OPT_INDENT_2))
    print(f"\nwritten {out}")
    return 1 if any(violations(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
