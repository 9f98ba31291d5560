"""Latency against offered load, one line per target (p50 solid, p99 dashed), as a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any

SEND_LAG_SATURATED_MS = 5.0      # beyond this the generator, not the target, set the pace


def points(curve: list[dict[str, Any]]) -> list[tuple[float, float, float, bool]]:
    """(offered/s, p50 ms, p99 ms, generator saturated) sorted by offered load."""
    out = [(f["offered_per_s"], f["latency_us"]["p50"] / 1e3, f["latency_us"]["p99"] / 1e3,
            f.get("send_lag_p99_ms", 0.0) > SEND_LAG_SATURATED_MS) for f in curve]
    return sorted(out)


def draw(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (name, curve) in enumerate(curves.items()):
        pts = points(curve)
        if not pts:
            continue
        color = f"C{i}"
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], "o-", color=color, label=f"{name} p50")
        ax.plot(xs, [p[2] for p in pts], "s--", color=color, label=f"{name} p99")
        for x, _, p99, saturated in pts:
            if saturated:
                ax.plot([x], [p99], "x", color="black", markersize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load, orders/s (open loop)")
    ax.set_ylabel("latency, ms")
    ax.set_title(title + "\n(x: the load generator lagged its schedule > 5 ms at p99)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
