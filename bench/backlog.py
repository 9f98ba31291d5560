"""The channel sandbox's notifications that a phase left undelivered.

The sandbox notifies the stack of every paid order (Alipay's asynchronous notification, after
its `notify_delay_ms`). At a target's maximum its notifier falls behind, so a closed-loop phase
ends with part of its orders' notification work still to do: a later phase would pay for it
(the first open phase after the closed ones showed p99 twice the later ones' for exactly this),
and the phase's own orders/s would leave it out. So every measured phase starts from a sandbox
with nothing pending (`drain`), and a phase's figures say what it left behind and how long
delivering it took, and from that the sustained rate (`summary`: the window's orders over the
window plus the time its notifications still needed).
"""
from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from bench import procs

DRAIN_MAX_S = 120.0
POLL_S = 0.05


@dataclass
class Drained:
    pending: int          # notifications not yet delivered when the drain began
    seconds: float        # until none was left (or DRAIN_MAX_S)
    delay_s: float        # the sandbox's notify_delay_ms: the channel's wait, not the stack's work
    left: int             # still pending when the drain gave up (0: all delivered)

    @property
    def work_s(self) -> float:
        """The drain's time beyond the channel's own delay before its first delivery."""
        return max(0.0, self.seconds - self.delay_s) if self.pending else 0.0


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback only)
        out: dict[str, Any] = orjson.loads(r.read())
        return out


def pending(sandbox_url: str) -> int:
    return int(_get(sandbox_url + "/_sandbox/health").get("notify_pending", 0))


def drain(sandbox_url: str | None, max_s: float = DRAIN_MAX_S) -> Drained:
    """Wait until the sandbox has no notification pending; None: a target without one."""
    if sandbox_url is None:
        return Drained(0, 0.0, 0.0, 0)
    t0 = time.monotonic()
    first = left = pending(sandbox_url)
    while left and time.monotonic() - t0 < max_s:
        time.sleep(POLL_S)
        left = pending(sandbox_url)
    seconds = time.monotonic() - t0
    delay_ms = _get(sandbox_url + "/_sandbox/knobs").get("notify_delay_ms", 0)
    return Drained(first, seconds, float(delay_ms) / 1000, left)


def summary(ok: int, wall_s: float, before: Drained, after: Drained,
            cpu_with_drain: dict[str, float]) -> dict[str, Any]:
    """What a window of `ok` orders over `wall_s` left to deliver, and its figures had it waited
    for that: orders/s over the window plus the drain (less the channel's own notify delay) and
    CPU per order with the drain's CPU."""
    return {"pending_before": before.pending, "settle_s": before.seconds,
            "pending_at_end": after.pending, "drain_s": after.seconds,
            "left_after_drain": after.left,
            "sustained_orders_per_s": ok / (wall_s + after.work_s) if wall_s else float("nan"),
            "cpu_us_per_order_with_drain": procs.us_per_order(cpu_with_drain, ok)}


def line(n: dict[str, Any]) -> str:
    """The phase's notification backlog, for a report."""
    out = (f"{n['pending_at_end']:,} channel notifications left undelivered at the end, "
           f"delivered in {n['drain_s']:.1f} s after it: sustained "
           f"{procs.fmt_num(n['sustained_orders_per_s'])} orders/s, CPU "
           f"{procs.fmt_num(n['cpu_us_per_order_with_drain']['total'])} µs per order with them")
    if n["left_after_drain"]:
        out += f" ({n['left_after_drain']:,} still pending after {DRAIN_MAX_S:.0f} s)"
    return out
