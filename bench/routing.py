"""Automatic routing under a degrading channel: does traffic leave it, and come back?

  python -m bench.routing [--rate 40] [--steady 10] [--degraded 30] [--recovered 70]
                          [--mode decline|hang] [--channels stripe,paypal] [--currency USD]

Starts its own ``paycell up`` (as bench.run does), then sends card orders that name no channel at
a steady open-loop rate. After the steady phase, the first channel's sandbox degrades (``decline``:
50% of charges declined; ``hang``: 50% of charges held past the call timeout); after the degraded
phase it recovers. Every order's first-choice channel comes back in its reply (``channel``, or
``tried_channels[0]`` after a failover), so the share of new traffic each channel gets is known
per second. It reports:

  * shift_s:   from the start of the degradation until the degraded channel gets at most
               ``--shifted-pct`` (default 20%) of first choices for 2 seconds in a row;
  * return_s:  from the recovery until it gets at least ``--returned-pct`` (default 50%) again;
  * per phase: orders, first-choice shares, failovers, final states;
  * money:     from both sandboxes' ledgers: orders charged more than once (across channels),
               and every SUCCEEDED order charged exactly once on the channel its reply names.

The same driver runs in tests/integration/test_routing.py with a short routing window.
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.client import PaycellClient

APP_ID, APP_SECRET = "demo-app", "demo-secret"
DRAIN_TIMEOUT_S = 60.0
HANG_MS = 8000


@dataclass
class Sent:
    at: float                     # seconds since the run started
    phase: str
    status: int = 0
    order: dict[str, Any] = field(default_factory=dict)

    @property
    def first_choice(self) -> str:
        tried = self.order.get("tried_channels") or []
        return str(tried[0] if tried else self.order.get("channel", ""))


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    knobs: dict[str, Any]        # applied to the degraded channel's sandbox when it starts


def phases_for(mode: str, steady_s: float, degraded_s: float, recovered_s: float) -> list[Phase]:
    bad = ({"decline_rate": 0.5} if mode == "decline"
           else {"hang_rate": 0.5, "hang_ms": HANG_MS})
    good = {"decline_rate": 0.0, "hang_rate": 0.0}
    return [Phase("steady", steady_s, good), Phase("degraded", degraded_s, bad),
            Phase("recovered", recovered_s, good)]


async def _set_knobs(http: aiohttp.ClientSession, sandbox_url: str, channel: str,
                     knobs: dict[str, Any]) -> None:
    async with http.post(f"{sandbox_url}/{channel}/_sandbox/knobs", json=knobs) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{channel} sandbox refused {knobs}: {await resp.text()}")


async def _ledger(http: aiohttp.ClientSession, sandbox_url: str,
                  channel: str) -> dict[str, Any]:
    async with http.get(f"{sandbox_url}/{channel}/_sandbox/ledger") as resp:
        return (await resp.json())["trades"]  # type: ignore[no-any-return]


async def drive(gateway_url: str, sandbox_url: str, channels: tuple[str, str], rate: float,
                phases: list[Phase], currency: str = "USD",
                token: str = "pm_card_visa") -> dict[str, Any]:
    """Run the phases; return the timeline summary and the money checks."""
    degraded = channels[0]
    sent: list[Sent] = []
    tasks: set[asyncio.Task[None]] = set()
    run = secrets.token_hex(4)
    async with aiohttp.ClientSession() as http, \
            PaycellClient(gateway_url, APP_ID, APP_SECRET, session=http) as client:

        async def one(s: Sent, i: int) -> None:
            body = {"out_trade_no": f"rt{run}{i:07d}", "user_id": f"u{i % 500}",
                    "amount": 1000, "currency": currency, "subject": "routing gems",
                    "payment": {"type": "card", "token": token}}
            try:
                s.status, s.order = await client.create_order(body)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                s.status = 0

        start = time.monotonic()
        i = 0
        for phase in phases:
            await _set_knobs(http, sandbox_url, degraded, phase.knobs)
            phase_end = time.monotonic() + phase.seconds
            while time.monotonic() < phase_end:
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                s = Sent(time.monotonic() - start, phase.name)
                sent.append(s)
                task = asyncio.create_task(one(s, i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        await _set_knobs(http, sandbox_url, degraded, {"decline_rate": 0.0, "hang_rate": 0.0})
        finals = await _drain(client, sent)
        ledgers = {ch: await _ledger(http, sandbox_url, ch) for ch in channels}
    return summarize(sent, phases, channels, ledgers, finals)


async def _drain(client: PaycellClient, sent: list[Sent]) -> dict[str, dict[str, Any]]:
    """Every order's final state (PENDING ones are polled until final or the timeout)."""
    finals: dict[str, dict[str, Any]] = {}
    pending = [s.order["order_id"] for s in sent if s.order.get("order_id")]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        still = []
        for oid in pending:
            status, order = await client.get_order(oid)
            if status == 200 and order.get("status") != "PENDING":
                finals[oid] = order
            else:
                still.append(oid)
        pending = still
        if pending:
            await asyncio.sleep(0.5)
    for oid in pending:
        finals[oid] = {"order_id": oid, "status": "PENDING"}
    return finals


def _share(items: list[Sent], channel: str) -> float | None:
    chosen = [s for s in items if s.first_choice]
    if not chosen:
        return None
    return sum(1 for s in chosen if s.first_choice == channel) / len(chosen)


def _first_sustained(seconds: list[tuple[int, float | None]], ok: Any, start: float,
                     run_s: int = 2) -> float | None:
    streak = 0
    for sec, share in seconds:
        if sec < start or share is None:
            continue
        streak = streak + 1 if ok(share) else 0
        if streak >= run_s:
            return sec - run_s + 1 - start
    return None


def summarize(sent: list[Sent], phases: list[Phase], channels: tuple[str, str],
              ledgers: dict[str, dict[str, Any]], finals: dict[str, dict[str, Any]],
              shifted_pct: float = 20, returned_pct: float = 50) -> dict[str, Any]:
    degraded = channels[0]
    by_second: dict[int, list[Sent]] = {}
    for s in sent:
        by_second.setdefault(int(s.at), []).append(s)
    seconds = [(sec, _share(items, degraded)) for sec, items in sorted(by_second.items())]
    starts, t = {}, 0.0
    for p in phases:
        starts[p.name] = t
        t += p.seconds
    shift_s = _first_sustained(seconds, lambda x: x <= shifted_pct / 100, starts["degraded"])
    return_s = _first_sustained(seconds, lambda x: x >= returned_pct / 100, starts["recovered"])
    per_phase = {}
    for p in phases:
        items = [s for s in sent if s.phase == p.name]
        share = _share(items, degraded)
        per_phase[p.name] = {
            "orders": len(items),
            "answered": sum(1 for s in items if s.status in (200, 202)),
            f"first_choice_{degraded}_pct": None if share is None else round(100 * share, 1),
            "failovers": sum(1 for s in items if s.order.get("tried_channels")),
            "succeeded": sum(1 for s in items if s.order.get("order_id")
                             and finals.get(s.order["order_id"], {}).get("status") == "SUCCEEDED"),
        }
    # money: charges per order id across both channels; SUCCEEDED orders charged once, where
    # their reply says
    charges: dict[str, int] = {}
    for trades in ledgers.values():
        for oid, t in trades.items():
            charges[oid] = charges.get(oid, 0) + int(t["charges"])
    double = sorted(oid for oid, n in charges.items() if n > 1)
    wrong = []
    for oid, o in finals.items():
        if o.get("status") == "SUCCEEDED":
            ch = o.get("channel", "")
            if ledgers.get(ch, {}).get(oid, {}).get("charges") != 1 or charges.get(oid) != 1:
                wrong.append(oid)
        elif o.get("status") in ("FAILED", "CLOSED") and charges.get(oid, 0) != 0:
            wrong.append(oid)
    return {
        "channels": list(channels), "degraded": degraded, "orders": len(sent),
        "shift_s": shift_s, "return_s": return_s,
        "shifted_pct": shifted_pct, "returned_pct": returned_pct,
        "per_second": [{"second": sec, f"{degraded}_pct": None if x is None else round(100 * x)}
                       for sec, x in seconds],
        "phases": per_phase,
        "double_charged": double, "money_mismatches": wrong,
        "pending_after_drain": sum(1 for o in finals.values() if o.get("status") == "PENDING"),
    }


def print_summary(r: dict[str, Any]) -> None:
    d = r["degraded"]
    print(f"routing: {r['orders']} orders over {', '.join(r['channels'])}; {d} degraded")
    for name, p in r["phases"].items():
        print(f"  {name:10s} orders {p['orders']:5d}  answered {p['answered']:5d}  "
              f"first choice {d} {p[f'first_choice_{d}_pct']}%  failovers {p['failovers']}  "
              f"succeeded {p['succeeded']}")
    print(f"  traffic left {d} (<= {r['shifted_pct']}% of first choices, 2 s in a row) "
          f"{r['shift_s']} s after it degraded")
    print(f"  traffic came back (>= {r['returned_pct']}%) {r['return_s']} s after it recovered")
    print(f"  double charged: {len(r['double_charged'])}; money mismatches: "
          f"{len(r['money_mismatches'])}; still pending: {r['pending_after_drain']}")
    print("  per second, % of first choices on " + d + ": "
          + " ".join(str(x[f"{d}_pct"]) for x in r["per_second"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=40.0)
    p.add_argument("--steady", type=float, default=10.0)
    p.add_argument("--degraded", type=float, default=30.0)
    p.add_argument("--recovered", type=float, default=70.0)
    p.add_argument("--mode", choices=("decline", "hang"), default="decline")
    p.add_argument("--channels", default="stripe,paypal")
    p.add_argument("--currency", default="USD")
    args = p.parse_args(argv)
    channels = tuple(args.channels.split(","))
    if len(channels) != 2:
        p.error("--channels: two channels, the first is degraded")
    from bench.run import RESULTS, Stack
    with tempfile.TemporaryDirectory(prefix="paycell-routing-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start()
            result = asyncio.run(drive(stack.url, f"http://127.0.0.1:{stack.sandbox_port}",
                                       (channels[0], channels[1]), args.rate,
                                       phases_for(args.mode, args.steady, args.degraded,
                                                  args.recovered), args.currency))
        finally:
            stack.stop()
    result["mode"], result["rate"] = args.mode, args.rate
    print_summary(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"routing-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"  written {out}")
    ok = not result["double_charged"] and not result["money_mismatches"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
