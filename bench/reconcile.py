"""How fast batch reconciliation settles a large day: its own stack, a day of orders, two runs.

  python -m bench.reconcile [--orders 20000] [--channel alipay] [--mix lost=0.05,...]
                            [--concurrency 64] [--seed 1] [--out bench/results]

1. Starts ``paycell up`` on free loopback ports (bench.run's Stack: its own redis-server with
   ``appendfsync always``, the channel sandboxes, Ray, the shards, the reconciler, the gateway),
   with scheduled reconciliation off, ``reconcile.statement_lag_s=0`` (the sandbox's statement of
   today is complete), ``orders.async_window_ms=2000`` and the shards' query schedule pushed an
   hour out (``orders.query_first_delay_ms``): the state of a day whose query ladder never ran
   (queries failing, or the stack down), which is what leaves orders for the batch rung.
2. Creates the day through the API, as merchants would (signed ``POST /v1/orders``,
   ``--concurrency`` at once): N orders of the kinds in bench/reconcile_day.py; every order's
   outcome comes from the sandbox's own scenarios (its amount's ending: 06 = paid while the
   answer and the notification were lost). The double payments and the payments of another
   amount are second pay requests to the channel for the same trade number, sent with paycell's
   own connector (the ``naive_charge`` knob on for the former); the stray payments are pay
   requests for order ids paycell never issued. Nothing is written to Redis by hand.
3. Waits for the ladder (the notified orders) and the async window, then runs
   ``paycell reconcile --channel C --date <today>`` (the CLI as a child process, through the
   gateway's ops route, printing its progress) twice. Around each run: CPU of every process of
   the stack (bench.procs groups) and of the reconciler actor's process, its RSS sampled every
   50 ms and its peak (VmHWM).
4. Checks every order's final status and rung, the channel's ledger, both reports' counts and
   mismatches against what the day must give, and that the second run changed no order and no
   trade. Prints the figures, writes bench/results/reconcile-<UTC>.json, exits 1 on any problem.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from bench import procs
from bench.reconcile_day import (LADDER_KINDS, SYNC_ANSWERS, DayOrder, check_ledger, check_orders,
                                 check_report, expected_reports, kinds_of, parse_mix, plan_day)
from bench.run import Stack, _cmd_out, _versions
from gateway.client import PaycellClient

APP_ID, APP_SECRET = "demo-app", "demo-secret"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results")
STACK_ENV = {"PAYCELL_RECONCILE__ENABLED": "false", "PAYCELL_RECONCILE__STATEMENT_LAG_S": "0",
             "PAYCELL_ORDERS__ASYNC_WINDOW_MS": "2000",
             "PAYCELL_ORDERS__QUERY_FIRST_DELAY_MS": "3600000",
             "PAYCELL_ORDERS__QUERY_INTERVAL_MS": "3600000"}
ASYNC_WINDOW_S = 2.0
PAYERS: dict[str, tuple[str, dict[str, str]]] = {   # channel -> (currency, payment)
    "alipay": ("CNY", {"type": "barcode", "auth_code": "28763443825664394"}),
    "wechatpay": ("CNY", {"type": "barcode", "auth_code": "134567890123456789"}),
    "stripe": ("USD", {"type": "card", "token": "pm_card_visa"}),
}
CREATE_RETRY_FOR_S = 30.0      # per order, on 429/503 and connection errors (same key and body),
CREATE_RETRY_S = 0.5           # as a merchant would: a 429 (the channel's breaker open for its
                               # 10 s, say) or a 503 means "not taken now, try again"
CREATE_RATE_FLOOR = 20.0       # orders/s: the creation phase times out below this
CREATE_PROBLEMS_MAX = 100      # wrong answers before the creation phase gives up
LADDER_WAIT_S = 60.0           # for the notified orders to be SUCCEEDED
RECONCILE_TIMEOUT_S = 600.0    # one run
RSS_SAMPLE_S = 0.05
IDLE_S = 3.0                   # the stack's idle CPU, measured before the first run
PROGRESS_EVERY_S = 2.0


# ---- the day ---------------------------------------------------------------------------------

def order_body(o: DayOrder, channel: str) -> dict[str, Any]:
    currency, payment = PAYERS[channel]
    return {"out_trade_no": o.key, "user_id": f"u{o.key[-3:]}", "amount": o.amount,
            "currency": currency, "subject": "bench day", "channel": channel,
            "payment": payment}


async def create_day(url: str, channel: str, orders: list[DayOrder], concurrency: int
                     ) -> dict[str, Any]:
    """Create every order through the API; each answer must be what its kind gives."""
    done, problems = 0, []
    retried: dict[str, int] = {}     # why: HTTP status or error
    todo = iter(orders)
    t0 = time.monotonic()

    async def one(c: PaycellClient, o: DayOrder) -> None:
        nonlocal done
        body = order_body(o, channel)
        deadline = time.monotonic() + CREATE_RETRY_FOR_S
        while True:
            try:
                status, reply = await c.create_order(body)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                status, reply = 0, {"error": type(e).__name__}
            if status not in (0, 429, 503) or time.monotonic() > deadline:
                break
            why = str(status or reply["error"])
            retried[why] = retried.get(why, 0) + 1
            await asyncio.sleep(CREATE_RETRY_S)
        o.order_id = reply.get("order_id", "")
        if (status, reply.get("status")) not in SYNC_ANSWERS[o.kind]:
            problems.append(f"{o.kind} {o.key}: answered {status} {reply}")
        done += 1

    async def worker(c: PaycellClient) -> None:
        for o in todo:
            if len(problems) >= CREATE_PROBLEMS_MAX:
                return              # the stack is failing: the checks say so, no need for more
            await one(c, o)

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            rate = done / (time.monotonic() - t0)
            print(f"bench: created {done:,}/{len(orders):,} orders ({rate:,.0f}/s)", flush=True)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        c = PaycellClient(url, APP_ID, APP_SECRET, session=session)
        ticker = asyncio.create_task(progress())
        try:
            await asyncio.wait_for(
                asyncio.gather(*(worker(c) for _ in range(concurrency))),
                timeout=30 + len(orders) / CREATE_RATE_FLOOR)
        finally:
            ticker.cancel()
    wall = time.monotonic() - t0
    return {"orders": done, "wall_s": wall, "orders_per_s": done / wall,
            "retries": sum(retried.values()), "retried_on": retried, "problems": problems}


async def pay_at_channel(settings: Any, sandbox_url: str, channel: str,
                         orders: list[DayOrder], strays: int) -> dict[str, int]:
    """The payments paycell did not make: second pay requests for the same trade number (the
    twice kind, with naive_charge on; the mismatch kind, another amount) and pay requests for
    order ids paycell never issued."""
    from channels.base import ChargeRequest
    from channels.registry import build_connector
    from core.ids import make_order_id
    currency, payment = PAYERS[channel]
    o = settings.orders
    now_ms = int(time.time() * 1000)
    stray_ids = [make_order_id(o.region, o.set_name, i % o.shard_count, now_ms)
                 for i in range(strays)]
    jobs = [(x.order_id, x.channel_amount) for x in orders if x.kind in ("twice", "mismatch")]
    jobs += [(oid, 10_000) for oid in stray_ids]
    connector = build_connector(channel, settings, "")
    try:
        async with aiohttp.ClientSession() as http:
            await set_knobs(http, sandbox_url, channel, {"naive_charge": True})
            try:
                for oid, amount in jobs:
                    await connector.charge(ChargeRequest(
                        oid, amount, currency, "bench day", payment["type"],
                        auth_code=payment.get("auth_code", ""),
                        payment_token=payment.get("token", "")))
            finally:
                await set_knobs(http, sandbox_url, channel, {"naive_charge": False})
    finally:
        await connector.close()
    return {"second_payments": sum(1 for x in orders if x.kind == "twice"),
            "other_amount": sum(1 for x in orders if x.kind == "mismatch"), "strays": strays}


async def set_knobs(http: aiohttp.ClientSession, sandbox_url: str, channel: str,
                    knobs: dict[str, Any]) -> None:
    async with http.post(f"{sandbox_url}/{channel}/_sandbox/knobs", json=knobs) as r:
        if r.status != 200:
            raise RuntimeError(f"{channel} sandbox refused {knobs}: {await r.text()}")


async def ledger(sandbox_url: str, channel: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            http.get(f"{sandbox_url}/{channel}/_sandbox/ledger") as r:
        return orjson.loads(await r.read())


async def records(settings: Any, order_ids: list[str]) -> dict[str, Any]:
    """The orders as Redis holds them, read with the reconciler's own reader."""
    import redis.asyncio as aioredis

    from actors.reconcile_store import OrderReader
    client = aioredis.Redis.from_url(settings.redis.effective_url())
    try:
        return await OrderReader(client, settings).get_many(order_ids)
    finally:
        await client.aclose()


async def wait_ladder(settings: Any, orders: list[DayOrder]) -> dict[str, Any]:
    """Until every order the ladder decides (LADDER_KINDS: answered late under load, or
    notified) is final, and the last order's async window is over."""
    t0 = time.monotonic()
    waiting = [o.order_id for o in orders if o.kind in LADDER_KINDS]
    while waiting and time.monotonic() - t0 < LADDER_WAIT_S:
        got = await records(settings, waiting)
        waiting = [oid for oid in waiting if got[oid] is None or not got[oid].status.is_final]
        if waiting:
            await asyncio.sleep(1.0)
    await asyncio.sleep(max(0.0, ASYNC_WINDOW_S + 0.5 - (time.monotonic() - t0)))
    return {"wait_s": time.monotonic() - t0, "not_final": len(waiting)}


# ---- one measured run --------------------------------------------------------------------------

def reconciler_proc(launcher_pid: int) -> psutil.Process:
    root = psutil.Process(launcher_pid)
    for p in root.children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith("ray::LiveReconciler"):
                return p
        except psutil.Error:
            continue
    raise RuntimeError("no ray::LiveReconciler process under paycell up")


def vm_hwm_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


async def reconcile_once(stack: Stack, channel: str, day: str, rec: psutil.Process
                         ) -> dict[str, Any]:
    """`paycell reconcile` as a child process, its progress printed; the report and figures."""
    argv = [sys.executable, "-m", "gateway.cli", "reconcile", "--channel", channel, "--date", day,
            "--url", stack.url, "--poll", "0.25", "--timeout", str(RECONCILE_TIMEOUT_S),
            "--json"]
    rss_max = rec.memory_info().rss
    rss_before, hwm_before, rec_cpu0 = rss_max, vm_hwm_bytes(rec.pid), cpu_s(rec)
    snap0, t0 = procs.snapshot(stack.pid), time.monotonic()
    cli = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out: list[str] = []

    async def read() -> None:
        assert cli.stdout is not None
        async for raw in cli.stdout:
            line = raw.decode().rstrip("\n")
            if line.startswith("[") and not out:
                print(f"  reconcile | {line}", flush=True)
            else:
                out.append(line)
        await cli.wait()

    async def sample() -> None:
        nonlocal rss_max
        while True:
            try:
                rss_max = max(rss_max, rec.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(RSS_SAMPLE_S)
    sampler = asyncio.create_task(sample())
    try:
        await asyncio.wait_for(read(), RECONCILE_TIMEOUT_S + 30)
    finally:
        sampler.cancel()
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
    wall = time.monotonic() - t0
    cpu, vanished = procs.cpu_delta(snap0, procs.snapshot(stack.pid))
    report = orjson.loads("\n".join(out)) if out else {}
    started, finished = (report.get(k) for k in ("started_at", "finished_at"))
    run_wall = (_ts(finished) - _ts(started)) if started and finished else float("nan")
    return {"report": report, "cli_exit": cli.returncode, "run_wall_s": run_wall,
            "cli_wall_s": wall, "stack_cpu_s": cpu, "vanished_processes": vanished,
            "reconciler_cpu_s": cpu_s(rec) - rec_cpu0, "reconciler_rss_before": rss_before,
            "reconciler_rss_max_sampled": rss_max, "reconciler_vm_hwm_before": hwm_before,
            "reconciler_vm_hwm_after": vm_hwm_bytes(rec.pid)}


def _ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp()


def figures(m: dict[str, Any], n: int) -> dict[str, Any]:
    """One run's figures, JSON-ready (the report itself is kept apart)."""
    r = m["report"]
    stack_cpu = sum(m["stack_cpu_s"].values())
    return {"run": r.get("run"), "status": r.get("status"), "cli_exit": m["cli_exit"],
            "statement_rows": r.get("counts", {}).get("lines_parsed"),
            "run_wall_s": m["run_wall_s"], "cli_wall_s": m["cli_wall_s"],
            "orders_per_s": n / m["run_wall_s"] if m["run_wall_s"] > 0 else float("nan"),
            "reconciler_cpu_s": m["reconciler_cpu_s"],
            "reconciler_cpu_s_per_1k_orders": m["reconciler_cpu_s"] * 1000 / n,
            "stack_cpu_s": stack_cpu, "stack_cpu_s_per_1k_orders": stack_cpu * 1000 / n,
            "stack_cpu_s_by_group": {g: s for g, s in m["stack_cpu_s"].items() if s > 0},
            "vanished_processes": m["vanished_processes"],
            "reconciler_rss_before_mib": m["reconciler_rss_before"] / 2**20,
            "reconciler_rss_max_sampled_mib": m["reconciler_rss_max_sampled"] / 2**20,
            "reconciler_peak_rss_mib": m["reconciler_vm_hwm_after"] / 2**20,
            "reconciler_peak_rss_before_mib": m["reconciler_vm_hwm_before"] / 2**20,
            "counts": r.get("counts", {}), "mismatches_by_kind": r.get("mismatches_by_kind", {})}


# ---- the whole bench -------------------------------------------------------------------------

async def drive(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    from core.settings import load_settings
    settings = load_settings(env=stack.env)
    sandbox_url = settings.sandbox.url()
    tag = f"{int(time.time()) % 100_000:05d}"
    orders, strays = plan_day(args.orders, args.mix, args.seed, tag)
    kinds = kinds_of(orders)
    print("bench: the day: " + ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items()))
          + f"; stray payments {strays}", flush=True)
    created = await create_day(stack.url, args.channel, orders, args.concurrency)
    print(f"bench: created {created['orders']:,} orders in {created['wall_s']:.1f} s "
          f"({created['orders_per_s']:,.0f}/s)", flush=True)
    outside = await pay_at_channel(settings, sandbox_url, args.channel, orders, strays)
    ladder = await wait_ladder(settings, orders)
    day = datetime.now(timezone.utc).date().isoformat()
    rec = reconciler_proc(stack.pid)
    idle = procs.snapshot(stack.pid)
    await asyncio.sleep(IDLE_S)
    idle_cpu, _ = procs.cpu_delta(idle, procs.snapshot(stack.pid))
    ids = [o.order_id for o in orders]

    print(f"bench: run 1: paycell reconcile --channel {args.channel} --date {day}", flush=True)
    first = await reconcile_once(stack, args.channel, day, rec)
    after_first = await records(settings, ids)
    book_first = await ledger(sandbox_url, args.channel)
    print(f"bench: run 2 (must change nothing)", flush=True)
    second = await reconcile_once(stack, args.channel, day, rec)
    after_second = await records(settings, ids)
    book_second = await ledger(sandbox_url, args.channel)

    want1, want2, by_kind = expected_reports(kinds, strays)
    checks = {
        "created": created.pop("problems")[:10],
        "ladder": [f"{ladder['not_final']} orders not final after {LADDER_WAIT_S:.0f} s"]
        if ladder["not_final"] else [],
        "first_report": check_report(first["report"], want1, by_kind),
        "second_report": check_report(second["report"], want2, by_kind),
        "orders": check_orders(orders, after_first),
        "ledger": check_ledger(orders, book_first["trades"]),
        "second_run_changed_no_order": [
            f"{oid}: changed" for oid in ids if after_first[oid] != after_second[oid]][:10],
        "second_run_changed_no_trade": [
            f"{k}: {book_first['totals'][k]} -> {book_second['totals'].get(k)}"
            for k in ("trades", "charges", "refunds", "refunded_amount", "cancel_calls",
                      "refund_calls", "pay_calls")
            if book_first["totals"][k] != book_second["totals"].get(k)],
        "second_run_same_mismatches": (
            [] if first["report"].get("mismatches") == second["report"].get("mismatches")
            else ["the second run's mismatches differ from the first's"]),
    }
    return {"channel": args.channel, "day": day, "orders": args.orders, "kinds": dict(kinds),
            "stray_payments": strays, "mix": args.mix, "create": created,
            "paid_outside_paycell": outside, "ladder": ladder,
            "stack_idle_cores": {g: s / IDLE_S for g, s in idle_cpu.items() if s > 0},
            "runs": [figures(first, args.orders), figures(second, args.orders)],
            "reports": [first["report"], second["report"]],
            "checks": checks, "ok": not any(checks.values())}


def print_result(r: dict[str, Any]) -> None:
    print(f"\nreconcile {r['channel']} {r['day']}: {r['orders']:,} orders "
          f"({', '.join(f'{k} {n:,}' for k, n in sorted(r['kinds'].items()))}), "
          f"{r['stray_payments']} stray payments")
    print(f"created    {r['create']['orders_per_s']:,.0f} orders/s through the API "
          f"({r['create']['wall_s']:.1f} s; retried {r['create']['retried_on'] or 'none'}); "
          f"ladder drained in {r['ladder']['wait_s']:.1f} s")
    rows = [[f"run {f['run']}", f"{f['statement_rows']:,}", f"{f['run_wall_s']:.2f}",
             procs.fmt_num(f["orders_per_s"]), f"{f['reconciler_cpu_s']:.2f}",
             f"{f['reconciler_cpu_s_per_1k_orders']:.3f}", f"{f['stack_cpu_s']:.2f}",
             f"{f['stack_cpu_s_per_1k_orders']:.3f}", f"{f['reconciler_peak_rss_mib']:.0f}"]
            for f in r["runs"]]
    print(procs.format_table(rows, ["", "rows", "wall s", "orders/s", "rec cpu s",
                                    "rec s/1k", "stack cpu s", "stack s/1k", "rec peak MiB"]))
    for f in r["runs"]:
        c = f["counts"]
        print(f"run {f['run']}: settled paid {c.get('settled_paid')}, closed "
              f"{c.get('settled_closed')}, already settled {c.get('already_settled')}, "
              f"matched {c.get('matched')}, refunds sent {c.get('refunds_sent')} (already done "
              f"{c.get('refunds_already_done')}); mismatches {f['mismatches_by_kind']}; "
              f"stack CPU by group " + ", ".join(f"{g} {s:.2f}" for g, s
                                                  in f["stack_cpu_s_by_group"].items()))
    idle = sum(r["stack_idle_cores"].values())
    print(f"stack idle: {idle:.2f} cores (Ray, Redis, sandbox with no work), not subtracted")
    for name, problems in r["checks"].items():
        print(f"check {name:<28} {'ok' if not problems else 'FAILED'}")
        for p in problems:
            print(f"    {p}")


def save(r: dict[str, Any], args: argparse.Namespace, started: str, out_dir: Path) -> Path:
    git = ["git", "-C", str(ROOT)]
    doc = {"started_utc": started,
           "command": [sys.executable, "-m", "bench.reconcile", *args.argv],
           "args": {k: v for k, v in vars(args).items() if k != "argv"},
           "git_commit": _cmd_out([*git, "rev-parse", "HEAD"]),
           "git_status": _cmd_out([*git, "status", "--porcelain"]).splitlines(),
           "versions": _versions(), "cpu_count": os.cpu_count(), "result": r}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"reconcile-{started}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
    return path


def run(args: argparse.Namespace) -> tuple[dict[str, Any] | None, Path | None]:
    """Start the stack, drive the bench, always stop the stack; (result, JSON path)."""
    work = Path(tempfile.mkdtemp(prefix="paycell-recbench-"))
    stack = Stack(work, env=STACK_ENV)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        print(f"bench: starting paycell up on {stack.url} (data {work}) ...", flush=True)
        stack.start()
        result = asyncio.run(drive(stack, args))
        print_result(result)
        path = save(result, args, started, args.out)
        print(f"\nresults    {path}")
        return result, path
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the stop below is bounded; let it finish
        print("bench: stopping the stack ...", flush=True)
        left = stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if left:
            print(f"bench: WARNING stack processes outlived the launcher: {left} "
                  "(sent SIGTERM by PID)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=20_000, help="the day's orders (default 20000)")
    p.add_argument("--channel", default="alipay", choices=sorted(PAYERS))
    p.add_argument("--mix", default="", help="shares over the default mix, e.g. lost=0.1,"
                                             "unpaid=0.02 (kinds: bench/reconcile_day.py)")
    p.add_argument("--concurrency", type=int, default=64, help="orders created at once")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS, help="results dir (default bench/results)")
    args = p.parse_args(argv)
    try:
        args.mix = parse_mix(args.mix)
    except ValueError as e:
        p.error(f"--mix: {e}")
    if not 50 <= args.orders <= 1_000_000 or not 1 <= args.concurrency <= 1024:
        p.error("--orders must be 50..1000000 and --concurrency 1..1024")
    args.argv = argv
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _interrupt)   # `kill PID` stops the stack like Ctrl-C does
    try:
        result, _ = run(args)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    return 0 if result is not None and result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
