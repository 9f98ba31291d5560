"""Running many seeds: the summary, the failure report, the replay command."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tests.sim.world import Result, run_seed

REPORT_SEEDS_MAX = 10      # failing seeds described in full in a report
REPORT_VIOLATIONS_MAX = 5  # violations shown per failing seed


def replay_command(seed: int, with_faults: frozenset[str] = frozenset()) -> str:
    kinds = ",".join(sorted(k.removeprefix("p_") for k in with_faults))
    with_env = f"PAYCELL_SIM_WITH={kinds} " if kinds else ""
    with_arg = f" --with {kinds}" if kinds else ""
    return (f"{with_env}PAYCELL_SIM_SEED={seed} .venv/bin/pytest -q tests/sim/test_simulation.py"
            f"   # or: .venv/bin/python -m tests.sim --seed {seed}{with_arg} --trace")


@dataclass
class Summary:
    with_faults: frozenset[str] = frozenset()
    seeds: int = 0
    failed: list[Result] = field(default_factory=list)
    orders: int = 0
    answers: int = 0
    conflicts: int = 0
    crashes: int = 0
    given_up: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    resolved_by: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    virtual_s: float = 0.0
    wall_s: float = 0.0

    def add(self, r: Result) -> None:
        self.seeds += 1
        self.orders += r.stats["orders"]
        self.answers += r.stats["answers"]
        self.conflicts += r.stats["conflicts_409"]
        self.crashes += r.stats["crashes"]
        self.given_up += r.stats["given_up"]
        self.faults.update(r.faults)
        self.statuses.update(r.stats["statuses"])
        self.resolved_by.update(r.stats["resolved_by"])
        self.violations.update(v.kind for v in r.violations)
        self.virtual_s += r.stats["virtual_s"]
        if not r.ok:
            self.failed.append(r)

    def text(self) -> str:
        lines = [
            f"seeds {self.seeds}, failed {len(self.failed)}"
            f"{' ' + str([r.seed for r in self.failed[:20]]) if self.failed else ''}; "
            f"{self.wall_s:.1f} s real for {self.virtual_s:.0f} s simulated",
            f"orders {self.orders}, client answers {self.answers} (409: {self.conflicts}), "
            f"shard crashes {self.crashes}, "
            f"orders left for reconciliation {self.given_up}",
            f"final statuses {dict(sorted(self.statuses.items()))}",
            f"resolved by {dict(sorted(self.resolved_by.items()))}",
            f"faults injected ({sum(self.faults.values())}): "
            f"{dict(sorted(self.faults.items()))}",
            f"violations {dict(sorted(self.violations.items())) or 0}",
        ]
        if self.with_faults:
            kinds = sorted(k.removeprefix("p_") for k in self.with_faults)
            lines.append(f"opt-in faults on: {kinds}")
        return "\n".join(lines)

    def failure_report(self) -> str:
        out = [f"{len(self.failed)} of {self.seeds} seeds violated an invariant."]
        for r in self.failed[:REPORT_SEEDS_MAX]:
            out.append(f"\nseed {r.seed}: faults on {r.swarm.fault_kinds_on()}")
            kinds = Counter(v.kind for v in r.violations)
            out.append("  violations: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
            for v in r.violations[:REPORT_VIOLATIONS_MAX]:
                out.append(f"  [{v.at:.3f}s] {v.kind}: {v.detail}")
            if len(r.violations) > REPORT_VIOLATIONS_MAX:
                out.append(f"  ... {len(r.violations) - REPORT_VIOLATIONS_MAX} more")
            out.append(f"  replay: {replay_command(r.seed, self.with_faults)}")
        return "\n".join(out)


def run_many(seeds: Iterable[int], *, with_faults: frozenset[str] = frozenset(),
             bugs: frozenset[str] = frozenset(),
             progress: Callable[[Summary], None] | None = None) -> Summary:
    summary = Summary(with_faults=with_faults)
    started = time.perf_counter()
    for seed in seeds:
        summary.add(run_seed(seed, bugs=bugs, with_faults=with_faults))
        summary.wall_s = time.perf_counter() - started
        if progress is not None:
            progress(summary)
    return summary
