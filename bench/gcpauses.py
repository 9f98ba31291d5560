"""What a measured window added to paycell's collector pauses (paycell_gc_pause_seconds on
/metrics: the gateway and each shard host; the sandbox's from /_sandbox/health), by process and
generation.

A target without that metric (the baselines) gives an empty result, and nothing is printed.
"""
from __future__ import annotations

import urllib.request
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from core.heap import PAUSE_BUCKETS_S

SLOW_S = 0.02     # a pause this long or longer is what a p99 of 30 ms cannot absorb

Counts = dict[tuple[str, str], dict[str, float]]   # (process, generation) -> figures


def _get(url: str, timeout_s: float) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (loopback)
            return bytes(r.read())
    except OSError:
        return None


def scrape(url: str, sandbox_url: str | None = None, timeout_s: float = 5.0) -> Counts:
    """The pause histograms on `url`/metrics, and the sandbox's (at `sandbox_url`) if given;
    {} when there are none."""
    out: Counts = {}
    if sandbox_url:
        body = _get(sandbox_url + "/_sandbox/health", timeout_s)
        slow_at = PAUSE_BUCKETS_S.index(SLOW_S)
        for gen, p in (orjson.loads(body).get("gc", {}) if body else {}).items():
            out[("sandbox", gen)] = {"count": p["count"], "seconds": p["seconds"],
                                     "fast": p["buckets"][slow_at]}
    raw = _get(url + "/metrics", timeout_s)
    if raw is None:
        return out
    text = raw.decode()
    for family in text_string_to_metric_families(text):
        if family.name != "paycell_gc_pause_seconds":
            continue
        for s in family.samples:
            key = (s.labels["process"], s.labels["generation"])
            figs = out.setdefault(key, {})
            if s.name.endswith("_count"):
                figs["count"] = s.value
            elif s.name.endswith("_sum"):
                figs["seconds"] = s.value
            elif s.name.endswith("_bucket") and float(s.labels["le"]) == SLOW_S:
                figs["fast"] = s.value
    return out


def window(before: Counts, after: Counts) -> dict[str, Any]:
    """Per process: collections, pause milliseconds and pauses of SLOW_S or more that the
    window added, by generation ("0", "1", "2")."""
    out: dict[str, Any] = {}
    for (process, gen), a in sorted(after.items()):
        b = before.get((process, gen), {})
        count = a.get("count", 0) - b.get("count", 0)
        slow = count - (a.get("fast", 0) - b.get("fast", 0))
        ms = (a.get("seconds", 0) - b.get("seconds", 0)) * 1e3
        out.setdefault(process, {})[gen] = {"collections": int(count), "pause_ms": ms,
                                            "slow": int(slow)}
    return out


def lines(pauses: dict[str, Any]) -> list[str]:
    """One line per process, for a report: full collections, slow pauses, pause time."""
    out = []
    for process, gens in pauses.items():
        total_ms = sum(g["pause_ms"] for g in gens.values())
        slow = sum(g["slow"] for g in gens.values())
        full = gens.get("2", {"collections": 0, "pause_ms": 0.0})
        out.append(f"{process}: {sum(g['collections'] for g in gens.values()):,} collections "
                   f"({full['collections']} full, {full['pause_ms']:.0f} ms), "
                   f"{slow} of {SLOW_S * 1e3:.0f} ms or more, {total_ms:.0f} ms paused in all")
    return out
