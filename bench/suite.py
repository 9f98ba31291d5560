"""The comparison suite (issue 5): paycell against three baselines doing the same paid-order
work, in one run, one target at a time, on this machine.

  python -m bench.suite [--quick] [--closed-s S] [--open-s S] [--conns 16,64] [...]
  python -m bench.run --suite [same options]

Per target: a closed-loop warm-up, closed loop (wrk) at each connection count (the best is the
maximum), open loop at half of paycell's maximum (the same rate for every target), and open loop
at fractions of the target's own maximum for the latency-vs-load chart. Then the ceiling of the
machine for this work and the ratios. Writes bench/results/<UTC>-suite.json and -suite.png.
"""
from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench import ceiling, phases, targets  # noqa: E402
from bench.report import print_summary, save  # noqa: E402
from bench.run import RESULTS, _interrupt  # noqa: E402

POOL_RATE = 2_500.0            # for the targets that do the work
OPEN_RATE_MAX = 3_000.0        # the Python open-loop generator cannot go much past this here
FULL = {"warmup_s": 3.0, "closed_s": 10.0, "open_s": 8.0, "conns": (16, 64),
        "fractions": (0.25, 0.5, 0.75, 0.9), "client_s": 4.0, "rsa_ops": 1000}
QUICK = {"warmup_s": 2.0, "closed_s": 5.0, "open_s": 4.0, "conns": (32,),
         "fractions": (0.5, 0.9), "client_s": 2.0, "rsa_ops": 300}


def run_target(t: Any, cfg: dict[str, Any], half_rate: float | None,
               work: Path) -> dict[str, Any]:
    pool_rate = None if t.name == "bare" else POOL_RATE    # bare checks no nonce: replay
    print(f"suite: {t.name}: warm-up {cfg['warmup_s']:g} s", flush=True)
    phases.closed(t, cfg["conns"][0], cfg["warmup_s"], pool_rate, work)
    closed = []
    for conns in cfg["conns"]:
        fig = phases.closed(t, conns, cfg["closed_s"], pool_rate, work)
        print(f"suite: {t.name}: closed c{conns}: {fig['orders_per_s']:,.0f} orders/s"
              f"{' INVALID' if fig['invalid'] else ''}", flush=True)
        closed.append(fig)
    valid = [f for f in closed if not f["invalid"]] or closed
    best = max(valid, key=lambda f: f["orders_per_s"])
    half_rate = half_rate or best["orders_per_s"] / 2
    half = phases.open_loop(t, min(half_rate, OPEN_RATE_MAX), cfg["open_s"])
    print(f"suite: {t.name}: open {half['offered_per_s']:,.0f}/s: p99 {half['latency_us']['p99'] / 1e3:.1f} "
          f"ms, send lag p99 {half['send_lag_p99_ms']:.1f} ms", flush=True)
    curve = [half]
    for frac in cfg["fractions"]:
        rate = min(best["orders_per_s"] * frac, OPEN_RATE_MAX)
        curve.append(phases.open_loop(t, rate, cfg["open_s"]))
    n = best["notifications"]
    out = {"label": t.label, "max_orders_per_s": best["orders_per_s"], "best_conns": best["conns"],
           "cpu_us_per_order": phases.grouped_us(best), "closed": closed, "half_load": half,
           "curve": curve,
           # the best closed phase had it also delivered the notifications it left (backlog)
           "sustained_max_orders_per_s": n["sustained_orders_per_s"],
           "notifications_left_at_max": n["pending_at_end"],
           "cpu_us_per_order_with_drain": phases.grouped_us(
               {"cpu_us_per_order": n["cpu_us_per_order_with_drain"]})}
    if t.name == "bare":
        out["client_call"] = ceiling.client_call_us(t.url, cfg["client_s"])
    return out


def run_all(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="paycell-suite-pools-"))
    results: dict[str, Any] = {}
    half_rate: float | None = None
    try:
        for t in targets.all_targets(args.serve_replicas, args.serve_max_ongoing):
            if args.only and t.name not in args.only:
                continue
            results[t.name] = _one(t, cfg, half_rate, work)
            if t.name == "paycell" and "error" not in results[t.name]:
                half_rate = results[t.name]["max_orders_per_s"] / 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _one(t: Any, cfg: dict[str, Any], half_rate: float | None, work: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        print(f"suite: starting {t.name} on {t.url} ...", flush=True)
        t.start()
        return run_target(t, cfg, half_rate, work)
    except RuntimeError as e:
        print(f"suite: {t.name} FAILED: {e}", file=sys.stderr)
        return {"label": t.label, "error": str(e)[-2000:]}
    finally:
        left = t.stop()
        if left:
            print(f"suite: WARNING {t.name} left processes {left} (signalled by PID)",
                  file=sys.stderr)
        print(f"suite: {t.name} done in {time.monotonic() - t0:.0f} s", flush=True)


def derive(results: dict[str, Any], rsa: dict[str, float]) -> dict[str, Any]:
    """Ceiling, ratios and the targets of issue 5 from the per-target results."""
    p, bare = results.get("paycell", {}), results.get("bare", {})
    out: dict[str, Any] = {"rsa2": rsa}
    if "max_orders_per_s" not in p:
        return out
    for name in ("bare", "naive_ray", "ray_serve"):
        other = results.get(name, {}).get("max_orders_per_s")
        out[f"ratio_max_paycell_over_{name}"] = p["max_orders_per_s"] / other if other else None
        other = results.get(name, {}).get("sustained_max_orders_per_s")
        out[f"ratio_sustained_paycell_over_{name}"] = (
            p["sustained_max_orders_per_s"] / other if other else None)
    if "max_orders_per_s" in bare:
        parts = {"sandbox_us": p["cpu_us_per_order"]["sandbox"],
                 "http_server_hop_us": bare["cpu_us_per_order"]["gateway"],
                 "http_client_call_us": bare["client_call"]["http_client_call_us"],
                 "loadgen_us": p["cpu_us_per_order"]["loadgen"], **rsa}
        ceil = ceiling.ceiling(parts, os.cpu_count() or 1)
        out["ceiling"] = ceil
        out["ceiling_fraction"] = p["max_orders_per_s"] / ceil["orders_per_s"]
        out["own_cpu"] = ceiling.own_cpu_ratio(p["cpu_us_per_order"], parts,
                                               parts["http_server_hop_us"])
    out["goals"] = _goals(out, p)
    return out


def _goals(d: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    def at_least(x: float | None, bound: float) -> bool | None:
        return None if x is None or math.isnan(x) else x >= bound
    p99_ms = p["half_load"]["latency_us"]["p99"] / 1e3
    own = d.get("own_cpu", {}).get("ratio")
    return {"paycell_ge_2x_naive_ray": at_least(d.get("ratio_max_paycell_over_naive_ray"), 2),
            "paycell_ge_2x_ray_serve": at_least(d.get("ratio_max_paycell_over_ray_serve"), 2),
            "paycell_ge_80pct_of_ceiling": at_least(d.get("ceiling_fraction"), 0.8),
            "paycell_p99_at_half_max_le_30ms": p99_ms <= 30.0,
            "paycell_own_cpu_le_3x_bare_hop": None if own is None else own <= 3.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run, about 3 minutes")
    p.add_argument("--closed-s", type=float, help="seconds per closed-loop phase")
    p.add_argument("--open-s", type=float, help="seconds per open-loop phase")
    p.add_argument("--warmup-s", type=float, help="closed-loop warm-up seconds per target")
    p.add_argument("--conns", help="wrk connection counts, comma-separated (default 16,64)")
    p.add_argument("--only", help="comma-separated targets (paycell,bare,naive_ray,ray_serve)")
    p.add_argument("--serve-replicas", type=int, default=1)
    p.add_argument("--serve-max-ongoing", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.only = set(args.only.split(",")) if args.only else set()
    for name in ("closed_s", "open_s", "warmup_s"):
        v = getattr(args, name)
        if v is not None and not 0 < v <= 60:
            p.error(f"--{name.replace('_', '-')} must be in (0, 60]")
    if not shutil.which("wrk"):
        p.error("wrk is not installed (apt-get install -y wrk)")
    return args


def config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(QUICK if args.quick else FULL)
    for name in ("closed_s", "open_s", "warmup_s"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    if args.conns:
        cfg["conns"] = tuple(int(c) for c in args.conns.split(","))
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config(args)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    t0 = time.monotonic()
    try:
        rsa = ceiling.rsa2_us(cfg["rsa_ops"])
        results = run_all(cfg, args)
    except KeyboardInterrupt:
        print("suite: interrupted", file=sys.stderr)
        return 130
    derived = derive(results, rsa)
    print_summary(results, derived)
    json_path, png_path = save(results, derived, cfg, args, started, time.monotonic() - t0)
    print(f"\nresults    {json_path}\nchart      {png_path}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
