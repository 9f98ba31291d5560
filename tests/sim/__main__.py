"""python -m tests.sim: run many seeds with progress and a summary, or replay one.

  .venv/bin/python -m tests.sim --seeds 10000 --jobs 2    seeds 0..9999 on two processes
  .venv/bin/python -m tests.sim --seed 123 --trace        one seed, with its event trace
  .venv/bin/python -m tests.sim --seeds 1000 --with redis_late   an opt-in fault kind too
Exit status 1 when a seed violated an invariant.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from tests.sim.runner import Summary, replay_command
from tests.sim.swarm import OPT_IN
from tests.sim.world import Result, World, run_seed

PROGRESS_EVERY_S = 2.0
_T = TypeVar("_T")
_R = TypeVar("_R")


def _opt_in(text: str) -> frozenset[str]:
    kinds = frozenset(f"p_{k.strip()}" for k in text.split(",") if k.strip())
    unknown = kinds - OPT_IN
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown opt-in fault kind(s) {sorted(unknown)}; known: "
            f"{sorted(k[2:] for k in OPT_IN)}")
    return kinds


def _one(args: tuple[int, frozenset[str], frozenset[str]]) -> Result:
    seed, with_faults, bugs = args
    return run_seed(seed, with_faults=with_faults, bugs=bugs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=1000, help="how many seeds (default 1000)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seed", type=int, help="replay this one seed")
    p.add_argument("--trace", action="store_true", help="with --seed: print its event trace")
    p.add_argument("--with", dest="with_faults", type=_opt_in, default=frozenset(),
                   help=f"opt-in fault kinds, comma-separated: {sorted(k[2:] for k in OPT_IN)}")
    p.add_argument("--bug", action="append", default=[],
                   choices=("double_charge", "no_fence", "amnesia", "no_final_guard",
                            "no_one_way_guard"),
                   help="inject a known bug into the simulated parts (checks the checkers)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    a = p.parse_args(argv)
    bugs = frozenset(a.bug)

    if a.seed is not None:
        world = World(a.seed, bugs=bugs, with_faults=a.with_faults)
        r = world.run()
        if a.trace:
            print("\n".join(world.trace_lines()))
        print(f"seed {r.seed}: swarm faults on {r.swarm.fault_kinds_on()}")
        print(f"  stats {r.stats}")
        print(f"  faults injected {dict(r.faults)}")
        print(f"  trace hash {r.trace_hash}")
        for v in r.violations:
            print(f"  VIOLATION [{v.at:.3f}s] {v.kind}: {v.detail}")
        print("  PASSED" if r.ok else f"  FAILED; replay: {replay_command(r.seed, a.with_faults)}")
        return 0 if r.ok else 1

    seeds = range(a.start, a.start + a.seeds)
    summary = Summary(with_faults=a.with_faults)
    started = last = time.perf_counter()
    work = [(s, a.with_faults, bugs) for s in seeds]
    with multiprocessing.Pool(a.jobs) if a.jobs > 1 else _Inline() as pool:
        for r in pool.imap(_one, work, chunksize=8):
            summary.add(r)
            now = time.perf_counter()
            summary.wall_s = now - started
            if not r.ok:
                print(f"seed {r.seed} FAILED: {[v.kind for v in r.violations][:5]}", flush=True)
            if now - last >= PROGRESS_EVERY_S:
                last = now
                print(f"  {summary.seeds}/{len(seeds)} seeds, {len(summary.failed)} failed, "
                      f"{summary.seeds / summary.wall_s:.0f} seeds/s", flush=True)
    print(summary.text())
    if summary.failed:
        print(summary.failure_report())
    return 1 if summary.failed else 0


class _Inline:
    """multiprocessing.Pool's imap, in this process."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    @staticmethod
    def imap(fn: Callable[[_T], _R], items: Iterable[_T], chunksize: int = 1) -> Iterator[_R]:
        return map(fn, items)


if __name__ == "__main__":
    sys.exit(main())
