"""Does throughput hold as shards go from 1 to 8, and with two Ray nodes on one machine?

  python -m bench.scale [--shards 1,2,4,8] [--nodes 1,2] [--closed 64] [--duration 8]
                        [--actors N] [--repeat R]

For each (nodes, shards) it starts its own ``paycell up`` (as bench.run does) with
PAYCELL_ORDERS__SHARD_COUNT and PAYCELL_RAY__LOCAL_NODES (two nodes are two Ray raylets on
127.0.0.1 via ray.cluster_utils.Cluster; the shard actors are placed on them in turn), drives it
closed-loop with wrk, and prints orders/s, p99 and CPU per order, plus each configuration's ratio
to the first (1 node, smallest shard count) measured in the same run. The shards run in
min(shards, orders.shard_actors) actor processes (`--actors` sets that). With `--repeat R` every
configuration runs R times in alternating order and its median run is reported.
Results: bench/results/scale-*.json.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import procs
from bench.run import RESULTS, Stack, measure, report


def run_one(nodes: int, shards: int, args: argparse.Namespace) -> dict[str, Any]:
    saved = {k: os.environ.get(k) for k in ("PAYCELL_ORDERS__SHARD_COUNT",
                                            "PAYCELL_RAY__LOCAL_NODES",
                                            "PAYCELL_ORDERS__SHARD_ACTORS")}
    os.environ["PAYCELL_ORDERS__SHARD_COUNT"] = str(shards)
    os.environ["PAYCELL_RAY__LOCAL_NODES"] = str(nodes)
    if args.actors:
        os.environ["PAYCELL_ORDERS__SHARD_ACTORS"] = str(args.actors)
    try:
        with tempfile.TemporaryDirectory(prefix="paycell-scale-") as tmp:
            stack = Stack(Path(tmp))
            try:
                stack.start()
                run_args = argparse.Namespace(closed=args.closed, rate=None,
                                              duration=args.duration, warmup=args.warmup,
                                              threads=1, max_rate=5000.0, idle=args.idle,
                                              knob=[], out=RESULTS)
                fig = report(measure(run_args, stack, Path(tmp)))
                seen = re.search(r"shard actors on (\d+) node", stack.tail(200))
                hosts = re.search(r"in (\d+) shard actors", stack.tail(200))
            finally:
                stack.stop()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"nodes": nodes, "nodes_used": int(seen.group(1)) if seen else None,
            "shards": shards, "actors": int(hosts.group(1)) if hosts else None,
            "orders_per_s": fig["orders_per_s"],
            "p99_ms": fig["latency_us"]["p99"] / 1000,
            "cpu_us_per_order": fig.get("cpu_us_per_order", {}).get("total"),
            "ok": fig["orders_ok"], "non_2xx": fig["non_2xx"]}


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["orders_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="1,2,4,8")
    p.add_argument("--nodes", default="1,2")
    p.add_argument("--closed", type=int, default=64)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--idle", type=float, default=2.0)
    p.add_argument("--actors", type=int, default=0,
                   help="orders.shard_actors (0: the setting's default)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every configuration this many times, in alternating order (forward, "
                        "then backward, ...), and report each one's median: a noisy machine's "
                        "drift then weighs on every configuration alike")
    args = p.parse_args(argv)
    shards = [int(x) for x in args.shards.split(",")]
    nodes = [int(x) for x in args.nodes.split(",")]
    configs = [(1, s) for s in shards]
    for n in (n for n in nodes if n > 1):
        configs += [(n, s) for s in sorted({max(n, shards[0]), shards[-1]})]
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configs}
    for rep in range(args.repeat):
        for n, s in (configs if rep % 2 == 0 else configs[::-1]):
            print(f"scale: {n} node(s), {s} shard(s) (run {rep + 1} of {args.repeat}) ...",
                  flush=True)
            runs[(n, s)].append(run_one(n, s, args))
    rows = [median_row(runs[c]) for c in configs]
    base = rows[0]["orders_per_s"] or 1.0
    table = [[f"{r['nodes']} ({r['nodes_used']} used)", str(r["shards"]), str(r["actors"]),
              procs.fmt_num(r["orders_per_s"]), f"{r['orders_per_s'] / base:.2f}",
              f"{r['p99_ms']:.0f}", procs.fmt_num(r["cpu_us_per_order"] or 0),
              " ".join(procs.fmt_num(x["orders_per_s"]) for x in runs[(r["nodes"], r["shards"])])]
             for r in rows]
    print(procs.format_table(table, ["nodes", "shards", "actors", "orders/s", "vs first",
                                     "p99 ms", "cpu us/order", "every run"]))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scale-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_bytes(orjson.dumps({"rows": rows, "runs": [r for c in configs for r in runs[c]],
                                  "closed": args.closed, "repeat": args.repeat},
                                 option=orjson.OPT_INDENT_2))
    print(f"written {out}")
    return 0 if all(r["non_2xx"] == 0 for c in configs for r in runs[c]) else 1


if __name__ == "__main__":
    sys.exit(main())
