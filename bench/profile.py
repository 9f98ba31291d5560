"""Where paycell's CPU goes under load: py-spy samples of the gateway and the shard actors.

  python -m bench.profile [--closed 64 | --rate R] [--duration 10]

It starts its own stack (as bench.run does), drives it closed-loop with wrk (or, with --rate, open
loop at R orders/s), and while the load runs records py-spy samples (`--gil`: only the thread holding the GIL, so a process's Python work
and not its waits) of the gateway process and of every shard actor. Each sample goes to the
first category whose pattern is in the sample's innermost frames (CATEGORIES, below). It prints
the share of each category per process next to the process group's measured CPU per order, so
a share converts to microseconds.

A sample is wall time while holding the GIL, so on a loaded machine a system call that wakes
another process (a socket write to Redis, to the channel) is counted while the kernel runs the
woken process instead: shares of such calls come out high when the machine has no idle CPU.
An open-loop rate that leaves the machine idle part of the time (it prints the idle share) gives
shares closer to CPU time.
What the samples cannot see: work done with the GIL released. In paycell that is mostly the RSA2
signature of every Alipay request (cryptography releases the GIL; bench.suite measures it in
process: about 270 us), plus the kernel's part of socket calls made from C (uvloop). Results:
bench/results/profile-<UTC>.json, with the raw folded stacks beside it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from bench import procs
from bench.run import RESULTS, Stack, measure, report

# (category, substrings of a frame "function (file:line)"); the innermost frames decide.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("RSA2 (the part holding the GIL)", ("channels/crypto.py",)),
    ("channel protocol (sign params, parse and map answers)", (
        "channels/alipay/", "channels/callbacks.py", "parse_qsl", "unquote")),
    ("HTTP client (aiohttp, to the channel)", (
        "aiohttp/client", "aiohttp/connector", "aiohttp/formdata", "aiohttp/payload",
        "aiohttp/multipart")),
    ("HTTP server (aiohttp web)", (
        "aiohttp/web_", "aiohttp/http_writer")),
    ("Redis client (redis-py, core/resp.py)", (
        "redis/", "core/resp.py", "actors/store.py", "gateway/auth.py")),
    ("actor calls (Ray; the host links)", ("ray/", "actors/link.py")),
    ("paycell logic (orders, routing, batching, metrics)", (
        "actors/", "core/", "gateway/", "channels/routing", "channels/base", "prometheus")),
)
OTHER = "event loop and the rest"
HTTP_CLIENT, HTTP_SERVER = CATEGORIES[2][0], CATEGORIES[3][0]
INNERMOST = 4          # frames from the leaf that decide a sample's category
SAMPLE_HZ = 200
LEAVES = 5             # the hottest source lines printed per process


def categorize(folded: str) -> dict[str, int]:
    """py-spy's raw output ("frame;frame;... count" per line) as samples per category."""
    out: Counter[str] = Counter()
    for line in folded.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        tail = stack.split(";")[-INNERMOST:]
        out[_category(tail, stack)] += int(count)
    return dict(out)


def hottest(folded: str, n: int = LEAVES) -> list[tuple[str, int]]:
    """The `n` innermost frames (source lines) with the most samples: where a process stands."""
    out: Counter[str] = Counter()
    for line in folded.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            out[stack.split(";")[-1]] += int(count)
    return out.most_common(n)


def _category(frames: list[str], stack: str) -> str:
    for frame in reversed(frames):             # the leaf first
        for name, patterns in CATEGORIES:
            if any(p in frame for p in patterns):
                if name == HTTP_SERVER and "aiohttp/client" in stack:
                    return HTTP_CLIENT         # (http_writer writes requests too)
                return name
    return OTHER


def _targets(stack: Stack) -> dict[str, list[int]]:
    import psutil
    found: dict[str, list[int]] = {"gateway": [stack.pid], "actors:shard": []}
    for p in psutil.Process(stack.pid).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::LiveShardHost"):
                found["actors:shard"].append(p.pid)
        except psutil.Error:
            continue
    return found


def _record(pids: dict[str, list[int]], seconds: float, out: Path) -> dict[str, Path]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    files, children = {}, []
    for group, group_pids in pids.items():
        for pid in group_pids:
            path = out / f"{group.replace(':', '-')}-{pid}.txt"
            files[f"{group}:{pid}"] = path
            children.append(subprocess.Popen(
                [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(SAMPLE_HZ),
                 "--gil", "--nonblocking", "-f", "raw", "-o", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for child in children:
        try:
            child.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--closed", type=int, help="wrk, C connections (default 64)")
    mode.add_argument("--rate", type=float, help="open loop, R orders/s")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    args = p.parse_args(argv)
    if args.rate is None and args.closed is None:
        args.closed = 64
    if args.rate is not None and not 0 < args.rate <= 3000:
        p.error("--rate must be in (0, 3000]")
    if args.closed is not None and not shutil.which("wrk"):
        p.error("wrk is not installed (apt-get install -y wrk); or use --rate R")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="paycell-profile-"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    raw_dir = RESULTS / f"profile-{stamp}"
    raw_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(work)
    try:
        print(f"profile: starting paycell up on {stack.url} ...", flush=True)
        stack.start()
        pids = _targets(stack)
        run_args = argparse.Namespace(closed=args.closed, rate=args.rate, duration=args.duration,
                                      warmup=args.warmup, threads=1, max_rate=5000.0, idle=0,
                                      knob=[], out=RESULTS)
        files: dict[str, Path] = {}
        # py-spy starts with the measured phase (after the warm-up) and stops before it ends.
        spy = threading.Timer(args.warmup + 1.0, lambda: files.update(
            _record(pids, max(1.0, args.duration - 2.0), raw_dir)))
        spy.start()
        fig = report(measure(run_args, stack, work))
        spy.join()
    finally:
        stack.stop()
    rows: list[list[str]] = []
    hot_rows: list[list[str]] = []
    result: dict[str, Any] = {"orders_per_s": fig["orders_per_s"], "closed": args.closed,
                              "rate": args.rate, "machine": fig["machine"],
                              "cpu_us_per_order": fig["cpu_us_per_order"], "processes": {}}
    for key, path in sorted(files.items()):
        folded = path.read_text() if path.exists() else ""
        cats = categorize(folded)
        total = sum(cats.values()) or 1
        hot = hottest(folded)
        result["processes"][key] = {"samples": total, "categories": cats, "hottest_lines": hot}
        for name, n in sorted(cats.items(), key=lambda kv: -kv[1]):
            rows.append([key, name, f"{100 * n / total:.1f}%"])
        hot_rows += [[key, frame[:90], f"{100 * n / total:.1f}%"] for frame, n in hot]
    load = (f"wrk, {args.closed} connections" if args.rate is None
            else f"open loop at {args.rate:g}/s")
    idle = fig["machine"].get("idle_share")
    print(f"\npaycell at {procs.fmt_num(fig['orders_per_s'])} orders/s ({load}"
          f"{'' if idle is None else f'; machine idle {idle:.0%}'}); CPU per order: gateway "
          f"{procs.fmt_num(fig['cpu_us_per_order']['gateway'])} us, shard actors "
          f"{procs.fmt_num(fig['cpu_us_per_order']['actors:shard'])} us")
    print(procs.format_table(rows, ["process", "category (samples holding the GIL)", "share"]))
    print(f"\nthe {LEAVES} innermost lines with the most samples, per process")
    print(procs.format_table(hot_rows, ["process", "innermost frame", "share"]))
    out = RESULTS / f"profile-{stamp}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"written {out} (raw stacks in {raw_dir})")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    sys.exit(main())
