"""The suite's printed summary and its result files (JSON + latency chart)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson

from bench import chart, gcpauses
from bench.procs import fmt_ms, fmt_num, format_table
from bench.run import _cmd_out, _versions

GROUPS = ("gateway", "actors", "ray-system", "redis", "sandbox", "loadgen", "other", "total")


def _ratio(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def print_summary(results: dict[str, Any], d: dict[str, Any]) -> None:
    ok = {n: r for n, r in results.items() if "error" not in r}
    for n, r in results.items():
        if "error" in r:
            print(f"\n!! {n} failed: {r['error'][-300:]}")
    rows = []
    for n, r in ok.items():
        h = r["half_load"]
        lat = h["latency_us"]
        rows.append([n, fmt_num(r["max_orders_per_s"]), str(r["best_conns"]),
                     fmt_num(h["offered_per_s"]), fmt_ms(lat["p50"]), fmt_ms(lat["p97"]),
                     fmt_ms(lat["p99"]), f"{h['send_lag_p99_ms']:.1f} ms",
                     f"{h['orders_ok']}/{h['requests']}"])
    print("\nmaximum (closed loop, best conns) and latency at half of paycell's maximum (open)")
    print(format_table(rows, ["target", "max/s", "conns", "open/s", "p50", "p97", "p99",
                              "send lag p99", "ok/sent"]))
    print("\nsustained maximum: the best closed phase's orders over its window plus the time "
          "the sandbox then needed to deliver the notifications it left (bench/backlog.py)")
    print(format_table([[n, fmt_num(r["max_orders_per_s"]), f"{r['notifications_left_at_max']:,}",
                         fmt_num(r["sustained_max_orders_per_s"]),
                         fmt_num(r["cpu_us_per_order_with_drain"]["total"])]
                        for n, r in ok.items()],
                       ["target", "max/s", "left undelivered", "sustained/s",
                        "CPU µs/order with them"]))
    pauses = ok.get("paycell", {}).get("half_load", {}).get("gc_pauses", {})
    if pauses:
        print("\npaycell's collector pauses in that open phase")
        for line in gcpauses.lines(pauses):
            print("  " + line)
    rows = [[n, *(fmt_num(r["cpu_us_per_order"][g]) for g in GROUPS)] for n, r in ok.items()]
    print("\nCPU µs per order by process group (at each target's maximum)")
    print(format_table(rows, ["target", *GROUPS]))
    _print_derived(d)


def _print_derived(d: dict[str, Any]) -> None:
    print("\nratios (paycell max / baseline max): " + ", ".join(
        f"{n} {_ratio(d.get(f'ratio_max_paycell_over_{n}'))}"
        for n in ("bare", "naive_ray", "ray_serve")))
    print("ratios of the sustained maxima: " + ", ".join(
        f"{n} {_ratio(d.get(f'ratio_sustained_paycell_over_{n}'))}"
        for n in ("bare", "naive_ray", "ray_serve")))
    c = d.get("ceiling")
    if c:
        print("\nceiling parts (µs per order): " + ", ".join(
            f"{k} {v:,.0f}" for k, v in c["parts_us"].items()))
        print(f"ceiling = {c['formula']} = {c['cores']} x 1e6 / {c['per_order_us']:,.0f} = "
              f"{c['orders_per_s']:,.0f} orders/s; paycell reaches {d['ceiling_fraction']:.0%}")
        o = d["own_cpu"]
        print(f"own CPU: {o['formula']} = ({o['own_us']:,.0f} - {o['minus_us']:,.0f}) / "
              f"{c['parts_us']['http_server_hop_us']:,.0f} = {o['ratio']:.2f}x "
              f"({o['ratio_without_ray_system']:.2f}x without ray-system)")
    print("\ngoals: " + ", ".join(f"{k} {'MET' if v else 'n/a' if v is None else 'NOT MET'}"
                                  for k, v in d.get("goals", {}).items()))


def save(results: dict[str, Any], derived: dict[str, Any], cfg: dict[str, Any], args: Any,
         started: str, elapsed_s: float) -> tuple[Path, Path]:
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    doc = {"started_utc": started, "elapsed_s": elapsed_s,
           "command": [sys.executable, "-m", "bench.suite", *sys.argv[1:]],
           "config": cfg, "git_commit": _cmd_out([*git, "rev-parse", "HEAD"]),
           "git_status": _cmd_out([*git, "status", "--porcelain"]).splitlines(),
           "versions": _versions(), "cpu_count": os.cpu_count(),
           **{k: v for k, v in derived.items() if k.startswith("ratio_")},
           "ceiling_fraction": derived.get("ceiling_fraction"),
           "own_cpu_ratio": derived.get("own_cpu", {}).get("ratio"),
           "derived": derived, "targets": results}
    json_path = out_dir / f"{started}-suite.json"
    json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
    curves = {n: r["curve"] for n, r in results.items() if "curve" in r}
    png = chart.draw(curves, out_dir / f"{started}-suite.png",
                     f"paid orders, latency vs offered load ({started})")
    return json_path, png
