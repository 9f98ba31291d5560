"""Benchmark the whole local stack with paid orders.

  python -m bench.run [--closed C | --rate R] [--duration S] [--warmup S] [--out DIR]
  python -m bench.run --suite [--quick] ...     (= python -m bench.suite: paycell vs baselines)

Starts its own ``paycell up`` on free loopback ports with a temporary data dir, waits for /readyz,
warms up, measures, and always stops the stack (SIGINT to the launcher's PID). Requests are signed
before the clock starts (amount 600 fen = paid at once; one fresh nonce and out_trade_no each).
``--closed C`` runs wrk with C connections (closed loop: the most the stack does); ``--rate R`` is
open loop; the Debian wrk has no constant-rate mode, so it runs a Python asyncio generator instead
and says so. Prints a table and writes every figure to a JSON file under bench/results/.
"""
from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson

from bench import backlog, gcpauses, procs
from bench.load import PHASE_SLACK_S, REQUEST_TIMEOUT_S, Load, run_open
from gateway.client import signed_headers
from gateway.local import die_with_parent, free_port, http_ok

APP_ID, APP_SECRET = "demo-app", "demo-secret"  # the local-mode demo app
POOL_MAX = 2_000_000            # pre-signed requests one run may need
POOL_SLACK = 1.2
AUTH_WINDOW_S = 300             # gateway.auth_window_s: a signed request ages out after this
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 45.0
LUA = Path(__file__).with_name("loadgen.lua")
RESULTS = Path(__file__).with_name("results")
BENCH_CHANNEL_QPS = 1_000_000


# ---- the stack -------------------------------------------------------------------------------

class Stack:
    """One `paycell up` of our own, on free loopback ports; `env` overrides its environment
    (PAYCELL_* settings), and `self.env` is what it ran with."""

    def __init__(self, work: Path, env: Mapping[str, str] | None = None) -> None:
        self.work = work
        self.extra_env = dict(env or {})
        self.env: dict[str, str] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "paycell-up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.sandbox_port = free_port()
        env = dict(os.environ, PAYCELL_DATA_DIR=str(self.work / "data"),
                   PAYCELL_GATEWAY__HOST="127.0.0.1", PAYCELL_GATEWAY__PORT=str(self.port),
                   PAYCELL_REDIS__PORT=str(free_port()),
                   PAYCELL_SANDBOX__PORT=str(self.sandbox_port),
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                   # the channels here are the local sandbox, not Alipay: lift the per-channel
                   # rate limit (alipay.qps_max, default Alipay's 200/s) to measure paycell
                   **{f"PAYCELL_{ch.upper()}__QPS_MAX": str(BENCH_CHANNEL_QPS)
                      for ch in ("alipay", "wechatpay", "stripe", "unionpay", "qpay", "paypal")})
        env.update(self.extra_env)
        self.env = env
        script = Path(sys.executable).with_name("paycell")
        argv = [str(script), "up"] if script.exists() else [sys.executable, "-m", "gateway.cli",
                                                            "up"]
        with open(self.log, "wb") as log:   # own session: a terminal's Ctrl-C reaches only us
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"paycell up exited ({self.proc.returncode}):\n{self.tail()}")
            if http_ok(self.url + "/readyz"):
                return
            time.sleep(0.25)
        raise RuntimeError(f"paycell up not ready after {READY_TIMEOUT_S:.0f} s:\n{self.tail()}")

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    def set_knobs(self, knobs: dict[str, Any]) -> None:
        """Fault knobs of the stack's sandbox (POST /_sandbox/knobs)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.sandbox_port}/_sandbox/knobs",
                                     data=orjson.dumps(knobs), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 (loopback only)
            if r.status != 200:
                raise RuntimeError(f"sandbox refused knobs {knobs}: {r.status}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, lines: int = 20) -> str:
        return procs.log_tail(self.log, lines)

    def stop(self) -> list[int]:
        """SIGINT to the launcher, then SIGTERM/SIGKILL by PID; the PIDs of descendants left."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        tree = procs.snapshot(self.pid)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S if sig == signal.SIGINT else 10)
                break
            except subprocess.TimeoutExpired:
                print(f"bench: paycell up ignored signal {sig}; escalating", file=sys.stderr)
        time.sleep(1.0)
        left = [pid for pid, s in tree.items() if pid != self.pid and _same_proc(pid, s)]
        for pid in left:   # descendants of our own launcher, by PID
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return left


def _same_proc(pid: int, sample: procs.Sample) -> bool:
    import psutil
    try:
        return psutil.Process(pid).create_time() == sample.create_time
    except psutil.NoSuchProcess:
        return False


def signed_pool(n: int, tag: str) -> list[tuple[dict[str, str], bytes]]:
    """n signed (headers, body) pairs for POST /v1/orders, each with its own nonce/out_trade_no."""
    run = secrets.token_hex(4)
    now = time.time()
    pool = []
    for i in range(n):
        body = orjson.dumps({"out_trade_no": f"bench-{tag}-{run}-{i}", "user_id": "u-bench",
                             "amount": 600, "currency": "CNY", "subject": "bench",
                             "channel": "alipay",
                             "payment": {"type": "barcode", "auth_code": "28763443825664394"}})
        pool.append((signed_headers(APP_ID, APP_SECRET, "POST", "/v1/orders", body, now=now),
                     body))
    return pool


def write_pool(pool: list[tuple[dict[str, str], bytes]], path: Path) -> None:
    with open(path, "wb") as f:
        for h, body in pool:
            f.write("\t".join((h["X-Paycell-App"], h["X-Paycell-Timestamp"], h["X-Paycell-Nonce"],
                               h["X-Paycell-Signature"])).encode() + b"\t" + body + b"\n")


# ---- closed loop: wrk ------------------------------------------------------------------------

def run_wrk(url: str, conns: int, threads: int, seconds: float,
            pool_file: Path, cycle: bool = False) -> tuple[Load, float]:
    """One wrk phase over a written pool; (its figures, its CPU seconds from the kernel).
    ``cycle`` replays the pool round and round (only for a target that checks no nonce)."""
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(seconds))}s",
            "--timeout", f"{REQUEST_TIMEOUT_S:.0f}s", "-s", str(LUA), url, "--",
            str(pool_file), str(threads), *(["cycle"] if cycle else [])]
    cpu0 = _children_cpu_s()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=seconds + PHASE_SLACK_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cpu = _children_cpu_s() - cpu0
    pool_file.unlink(missing_ok=True)
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("PAYCELL_BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no figures (exit {proc.returncode}): {err.decode()[-800:]}")
    return _wrk_load(orjson.loads(line.split(" ", 1)[1])), cpu


def _children_cpu_s() -> float:
    """CPU seconds of every child this process has reaped so far (only wrk, during a phase)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _wrk_load(d: dict[str, Any]) -> Load:
    notes = []
    if d["exhausted"]:
        notes.append(f"INVALID: the pre-signed pool ran out ({d['exhausted']} filler requests); "
                     "raise --max-rate")
    ok = d["n_succeeded"] + d["n_pending"]
    lat = {k: float(v) for k, v in d["latency_us"].items()}
    return Load("wrk (closed loop)", d["duration_us"] / 1e6, d["requests"], ok, d["n_succeeded"],
                d["n_pending"], lat, d["n_non_2xx"], d["errors"], notes)


# ---- the run ---------------------------------------------------------------------------------

def idle_baseline(pid: int, seconds: float) -> dict[str, float]:
    """Cores each group burns with no load (after warm-up), over ``seconds``."""
    if seconds <= 0:
        return {}
    print(f"bench: idle baseline {seconds:g} s ...", flush=True)
    snap0, t0 = procs.snapshot(pid), time.monotonic()
    time.sleep(seconds)
    cpu, _ = procs.cpu_delta(snap0, procs.snapshot(pid))
    wall = time.monotonic() - t0
    return {g: s / wall for g, s in cpu.items()}


def measure(args: argparse.Namespace, stack: Stack, work: Path) -> dict[str, Any]:
    def prepared(seconds: float, tag: str) -> Callable[[], tuple[Load, float]]:
        """Sign the phase's requests now, so signing is outside the measured window."""
        pool = signed_pool(int((args.rate or args.max_rate) * seconds * POOL_SLACK) + 1, tag)
        if args.rate:
            return lambda: run_open(stack.url, args.rate, seconds, pool)
        pool_file = work / f"pool-{tag}.tsv"
        write_pool(pool, pool_file)
        return lambda: run_wrk(stack.url, args.closed, args.threads, seconds, pool_file)
    if args.warmup > 0:
        print(f"bench: warm-up {args.warmup:g} s ...", flush=True)
        prepared(args.warmup, "warm")()
    backlog.drain(stack.sandbox_url)   # the warm-up's notifications: not in the idle baseline
    idle = idle_baseline(stack.pid, args.idle)
    go = prepared(args.duration, "run")
    print(f"bench: measuring {args.duration:g} s ...", flush=True)
    return {**measured_window(stack.url, stack.sandbox_url, lambda: procs.snapshot(stack.pid), go),
            "idle": idle}


def measured_window(url: str, sandbox_url: str | None, snapshot: Callable[[], procs.Snapshot],
                    go: Callable[[], tuple[Load, float]]) -> dict[str, Any]:
    """One measured window of the stack at `url` (bench.run, and each phase of bench.suite):
    started once its sandbox has no notification left from before (bench/backlog.py); its CPU
    from `snapshot`, the collector pauses it added, and what it left the sandbox to deliver.
    What `report` takes."""
    before = backlog.drain(sandbox_url)
    gc0 = gcpauses.scrape(url, sandbox_url)
    stat0, snap0 = procs.read_proc_stat(), snapshot()
    t0 = time.monotonic()
    load, loadgen_cpu = go()
    window = time.monotonic() - t0
    snap1, stat1 = snapshot(), procs.read_proc_stat()
    gc1 = gcpauses.scrape(url, sandbox_url)
    after = backlog.drain(sandbox_url)
    cpu, vanished = procs.cpu_delta(snap0, snap1)
    with_drain, _ = procs.cpu_delta(snap0, snapshot())
    for c in (cpu, with_drain):
        c[procs.LOADGEN] += loadgen_cpu
    return {"load": load, "cpu_s": cpu, "vanished": vanished, "window_s": window, "idle": {},
            "machine": procs.machine_shares(stat0, stat1) if stat0 and stat1 else {},
            "gc_pauses": gcpauses.window(gc0, gc1), "drains": (before, after, with_drain)}


def report(m: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the run, JSON-ready."""
    load: Load = m["load"]
    window = m["window_s"]
    invalid = any(n.startswith("INVALID") for n in load.notes)
    return {"generator": load.generator, "invalid": invalid,
            "orders_per_s": load.ok / load.wall_s if load.wall_s else float("nan"),
            "orders_ok": load.ok, "succeeded": load.succeeded, "pending": load.pending,
            "requests": load.requests, "non_2xx": load.non_2xx, "errors": load.errors,
            "load_wall_s": load.wall_s, "latency_us": load.latency_us, "cpu_window_s": window,
            "cpu_s": m["cpu_s"], "cpu_us_per_order": procs.us_per_order(m["cpu_s"], load.ok),
            "cores_busy": {g: s / window for g, s in m["cpu_s"].items()},
            "idle_cores": m["idle"], "vanished_processes": m["vanished"],
            "machine": m["machine"], "notes": load.notes,
            "send_lag_p99_ms": load.send_lag_p99_ms,
            "pending_latency_us": load.pending_latency_us, "gc_pauses": m["gc_pauses"],
            "notifications": backlog.summary(load.ok, load.wall_s, *m["drains"])}


def print_report(fig: dict[str, Any]) -> None:
    lat = fig["latency_us"]
    if fig["invalid"]:
        print("\n!! INVALID RUN: see the notes below")
    print(f"\ngenerator  {fig['generator']}")
    print(f"orders     {fig['orders_ok']:,} ok ({fig['succeeded']:,} SUCCEEDED, "
          f"{fig['pending']:,} PENDING) of {fig['requests']:,} requests; non-2xx "
          f"{fig['non_2xx']:,}; errors {fig['errors']}")
    print(f"orders/s   {procs.fmt_num(fig['orders_per_s'])}  over {fig['load_wall_s']:.1f} s")
    print("latency    " + "  ".join(f"{k} {procs.fmt_ms(lat[k])}"
                                    for k in ("p50", "p97", "p99", "p99.9", "max") if k in lat))
    pend = fig.get("pending_latency_us") or {}
    if pend:
        print(f"202s       {pend['count']:,} PENDING answered, from their send: p50 "
              f"{procs.fmt_ms(pend['p50'])}  p99 {procs.fmt_ms(pend['p99'])}  "
              f"max {procs.fmt_ms(pend['max'])}")
    idle = fig["idle_cores"]
    rows = [[g, f"{fig['cpu_s'][g]:.2f}", f"{fig['cores_busy'][g]:.2f}",
             f"{idle[g]:.2f}" if g in idle else "n/a", procs.fmt_num(fig["cpu_us_per_order"][g])]
            for g in procs.GROUPS if fig["cpu_s"][g] > 0 or g not in (procs.OTHER,
                                                                       procs.OTHER_ACTORS)]
    total = sum(fig["cpu_s"].values())
    rows.append(["total", f"{total:.2f}", f"{total / fig['cpu_window_s']:.2f}",
                 f"{sum(idle.values()):.2f}" if idle else "n/a",
                 procs.fmt_num(fig["cpu_us_per_order"]["total"])])
    print(f"\nCPU over the {fig['cpu_window_s']:.1f} s measured window "
          "(idle cores: the same stack with no load, before the window)")
    print(procs.format_table(rows, ["group", "cpu s", "cores", "idle cores", "µs/order"]))
    mach = fig["machine"]
    if mach:
        print(f"\nmachine    idle {mach['idle_share']:.0%}, steal {mach['steal_share']:.0%} "
              f"of {os.cpu_count()} cores")
    for line in gcpauses.lines(fig["gc_pauses"]):
        print("gc         " + line)
    print("notices    " + backlog.line(fig["notifications"]))
    for note in fig["notes"]:
        print("note       " + note)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": sys.version.split()[0]}
    for pkg in ("ray", "aiohttp", "redis", "uvloop", "orjson", "psutil"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    out["redis-server"] = _cmd_out(["redis-server", "--version"])
    out["wrk"] = (_cmd_out(["wrk", "-v"]) + "\n").splitlines()[0] if shutil.which("wrk") else ""
    return out


def _cmd_out(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({type(e).__name__})"
    return (r.stdout or r.stderr).decode(errors="replace").strip()


def save(fig: dict[str, Any], args: argparse.Namespace, started: str, out_dir: Path) -> Path:
    git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    doc = {"started_utc": started, "command": [sys.executable, "-m", "bench.run", *sys.argv[1:]],
           "args": vars(args), "git_commit": _cmd_out([*git, "rev-parse", "HEAD"]),
           "git_status": _cmd_out([*git, "status", "--porcelain"]).splitlines(),
           "versions": _versions(), "cpu_count": os.cpu_count(), "figures": fig}
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = f"rate{args.rate:g}" if args.rate else f"closed{args.closed}"
    path = out_dir / f"{started}-{mode}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--closed", type=int, metavar="C", help="wrk, C connections (default 32)")
    mode.add_argument("--rate", type=float, metavar="R", help="open loop, R orders/s")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds (default 3)")
    p.add_argument("--idle", type=float, default=3.0,
                   help="seconds of no load to measure the stack's idle CPU (default 3; 0: skip)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--max-rate", type=float, default=5000.0,
                   help="closed loop: orders/s to pre-sign for (default 5000)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results dir (default bench/results)")
    p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="a sandbox fault knob, e.g. hang_rate=0.3 hang_ms=3000 (repeatable)")
    args = p.parse_args(argv)
    try:
        args.knobs = {k: orjson.loads(v) for k, v in (kv.split("=", 1) for kv in args.knob)}
    except (ValueError, orjson.JSONDecodeError):
        p.error("--knob takes NAME=VALUE with a JSON value, e.g. hang_rate=0.3")
    if not args.rate and not args.closed:
        args.closed = 32
    need = (args.rate or args.max_rate) * max(args.duration, args.warmup) * POOL_SLACK
    if need > POOL_MAX:
        p.error(f"would pre-sign {need:,.0f} requests per phase (> {POOL_MAX:,}); lower the "
                "rate or the duration")
    if not 0 < args.duration <= AUTH_WINDOW_S - 60 or not 0 <= args.warmup <= 60 \
            or not 0 <= args.idle <= 60:
        p.error(f"--duration must be in (0, {AUTH_WINDOW_S - 60}] s (signatures age out) and "
                "--warmup and --idle in [0, 60] s")
    if args.closed is not None and args.closed < 1 or args.threads < 1:
        p.error("--closed and --threads must be >= 1")
    if args.closed and not shutil.which("wrk"):
        p.error("wrk is not installed (apt-get install -y wrk); or use --rate R")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--suite" in argv:       # the comparison suite (bench/suite.py) takes the other options
        from bench import suite
        return suite.main([a for a in argv if a != "--suite"])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)   # `kill PID` stops the stack like Ctrl-C does
    work = Path(tempfile.mkdtemp(prefix="paycell-bench-"))
    stack = Stack(work)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        print(f"bench: starting paycell up on {stack.url} (data {work}) ...", flush=True)
        stack.start()
        if args.knobs:
            stack.set_knobs(args.knobs)
            print(f"bench: sandbox knobs {args.knobs}", flush=True)
        fig = report(measure(args, stack, work))
        fig["sandbox_knobs"] = args.knobs
        print_report(fig)
        print(f"\nresults    {save(fig, args, started, args.out)}")
        return 2 if fig["invalid"] else 0
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the stop below is bounded; let it finish
        print("bench: stopping the stack ...", flush=True)
        left = stack.stop()
        if left:
            print(f"bench: WARNING stack processes outlived the launcher: {left} "
                  "(sent SIGTERM by PID)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
