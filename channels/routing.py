"""Automatic channel selection: which channel takes an order that names none.

Per channel, over a sliding window (``routing.window_s`` in ``window_buckets`` buckets), the router
keeps attempts, successes and latency of charges. A success is a charge the channel accepted
(paid, or waiting for the payer); a failure is a decline, an unknown outcome or a request that
could not be sent. Choosing works the way auth-rate routing does in hyperswitch:

1. eligible channels: the order's currency, payment type, amount and country are within the
   channel's capabilities; a barcode's auth code has the channel's documented prefix; the
   channel's circuit is not open; its QPS limiter has a token;
2. eliminated: channels whose success rate is below ``elimination_success_pct`` once they have
   ``min_samples`` attempts in the window (unless that would eliminate every eligible channel);
3. ranked by score = success rate - mean latency / ``latency_weight_ms`` (a channel with fewer
   than ``min_samples`` attempts scores as fully successful, so new and recovering channels get
   traffic); scores within ``tie_margin_pct`` points of the best count as ties, broken by
   ``fallback_order`` (so a few milliseconds of latency do not flip a stable choice);
4. explored: with probability ``exploration_pct`` % the best channel swaps places with a random
   other eligible (not eliminated) one, so an eliminated channel's recovery is noticed through
   the half-open breaker and exploration keeps the ranking honest.

The result is an ordered list: the first is tried; the rest are the failover candidates, used
only when the first certainly did not charge (not sent, or declined before taking money).

Per channel too: a circuit breaker (``breaker_failures`` consecutive channel faults -- not sent or
outcome unknown, never business declines -- open it for ``breaker_open_ms``; then one probe is let
through: half-open) and a token-bucket limiter at the channel's documented QPS (this process's
share of it).

Nothing here does I/O; time comes from an injected monotonic clock, randomness from an injected
Random, so every decision is reproducible in tests.
"""
from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from channels.base import Capabilities
from core.settings import RoutingSettings

# Documented payer-code (付款码) prefixes: the code's first digits say which wallet issued it.
# WeChat Pay: 18 digits starting 10-15; Alipay: 16-24 digits starting 25-30; QQ Wallet: 18 digits
# starting 91; UnionPay QR code payment: 19 digits starting 62.
BARCODE_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "wechatpay": ("10", "11", "12", "13", "14", "15"),
    "alipay": ("25", "26", "27", "28", "29", "30"),
    "qpay": ("91",),
    "unionpay": ("62",),
}


class Attempt(str, enum.Enum):
    """How one charge went, as routing sees it."""
    SUCCESS = "success"            # paid, or accepted and waiting for the payer
    DECLINED = "declined"          # a business decline: the channel works, the payment did not
    FAULT = "fault"                # not sent, or outcome unknown: the channel misbehaves


@dataclass
class _Bucket:
    start: float = 0.0
    attempts: int = 0
    successes: int = 0
    latency_ms_sum: float = 0.0


class SlidingWindow:
    """Attempts, successes and latency over the last `window_s`, in `buckets` slices."""

    def __init__(self, window_s: float, buckets: int) -> None:
        assert window_s > 0 and buckets >= 1
        self.width_s = window_s / buckets
        self._buckets = [_Bucket(start=-1e18) for _ in range(buckets)]

    def _bucket(self, now: float) -> _Bucket:
        slot = int(now // self.width_s)
        b = self._buckets[slot % len(self._buckets)]
        start = slot * self.width_s
        if b.start != start:
            b.start, b.attempts, b.successes, b.latency_ms_sum = start, 0, 0, 0.0
        return b

    def add(self, now: float, success: bool, latency_ms: float) -> None:
        b = self._bucket(now)
        b.attempts += 1
        b.successes += int(success)
        b.latency_ms_sum += latency_ms

    def totals(self, now: float) -> tuple[int, int, float]:
        """(attempts, successes, latency sum in ms) of the buckets still inside the window."""
        oldest = (int(now // self.width_s) - len(self._buckets) + 1) * self.width_s
        attempts = successes = 0
        latency = 0.0
        for b in self._buckets:
            if b.start >= oldest:
                attempts += b.attempts
                successes += b.successes
                latency += b.latency_ms_sum
        return attempts, successes, latency


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failures_max: int, open_s: float) -> None:
        self.failures_max, self.open_s = failures_max, open_s
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.probe_at = 0.0
        self.opened_count = 0

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at >= self.open_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allows(self, now: float) -> bool:
        state = self.state(now)
        # A probe whose result never comes (its order was not created after all: the commit
        # failed after the token was taken; or its charge was refused before it was sent)
        # frees the slot after open_s; otherwise the channel stayed shut for good.
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and (
            not self.probing or now - self.probe_at >= self.open_s))

    def on_send(self, now: float) -> None:
        if self.state(now) is BreakerState.HALF_OPEN:
            self.probing, self.probe_at = True, now   # one probe at a time

    def record(self, now: float, fault: bool) -> None:
        if not fault:
            self.failures, self.opened_at, self.probing = 0, None, False
            return
        self.failures += 1
        state = self.state(now)
        if state is BreakerState.HALF_OPEN or (state is BreakerState.CLOSED
                                                and self.failures >= self.failures_max):
            self.opened_at, self.probing = now, False   # (a failure while open changes nothing)
            self.opened_count += 1


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        assert rate > 0
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.tokens = self.burst
        self.at: float | None = None

    def _refill(self, now: float) -> None:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def available(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(frozen=True)
class RoutingPolicy:
    window_s: float = 60
    window_buckets: int = 12
    min_samples: int = 20
    exploration_pct: float = 5
    elimination_success_pct: float = 50
    latency_weight_ms: float = 2000
    tie_margin_pct: float = 2
    fallback_order: tuple[str, ...] = ()
    breaker_failures: int = 5
    breaker_open_ms: int = 10_000
    failovers_max: int = 2
    qps_share: float = 1.0          # this process's share of each channel's documented QPS


@dataclass
class ChannelHealth:
    window: SlidingWindow
    breaker: CircuitBreaker
    limiter: TokenBucket
    capabilities: Capabilities
    chosen: int = 0                  # times ranked first

    def snapshot(self, now: float, min_samples: int) -> dict[str, object]:
        attempts, successes, latency = self.window.totals(now)
        return {"attempts": attempts, "successes": successes,
                "success_rate": round(successes / attempts, 4) if attempts else None,
                "latency_ms_mean": round(latency / attempts, 1) if attempts else None,
                "breaker": self.breaker.state(now).value, "breaker_opened": self.breaker.opened_count,
                "chosen": self.chosen, "warm": attempts >= min_samples}


@dataclass(frozen=True)
class Payment:
    """What eligibility looks at."""
    amount: int
    currency: str
    payment_type: str
    country: str = ""
    auth_code: str = field(default="", repr=False)


class NoChannel(Exception):
    """No channel can take this payment at all (capabilities): a 4xx for the client."""


class ChannelsBusy(Exception):
    """Channels could take it, but every one is open-circuited or rate-limited now: retry later."""


class Router:
    def __init__(self, policy: RoutingPolicy, capabilities: Mapping[str, Capabilities],
                 *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        order = [c for c in policy.fallback_order if c in capabilities]
        order += sorted(c for c in capabilities if c not in order)
        self._rank = {name: i for i, name in enumerate(order)}
        self.health: dict[str, ChannelHealth] = {
            name: ChannelHealth(
                SlidingWindow(policy.window_s, policy.window_buckets),
                CircuitBreaker(policy.breaker_failures, policy.breaker_open_ms / 1000),
                TokenBucket(max(0.1, caps.qps * policy.qps_share)),
                caps)
            for name, caps in capabilities.items()}

    # ---- eligibility and ranking ----------------------------------------------------------

    def takes(self, name: str, p: Payment) -> bool:
        """Whether `name` can take `p` at all (its capabilities), for an order naming it."""
        h = self.health.get(name)
        return h is not None and h.capabilities.accepts(p.amount, p.currency, p.payment_type,
                                                        p.country)

    def _fits(self, name: str, p: Payment) -> bool:
        if not self.takes(name, p):
            return False
        if p.payment_type == "barcode":
            prefixes = BARCODE_PREFIXES.get(name)
            return prefixes is not None and p.auth_code.startswith(prefixes)
        return True

    def candidates(self, p: Payment, exclude: Iterable[str] = ()) -> list[str]:
        """Eligible channels for `p`, best first; NoChannel / ChannelsBusy when there are none."""
        now = self._clock()
        skip = set(exclude)
        fitting = [n for n in self.health if n not in skip and self._fits(n, p)]
        if not fitting:
            raise NoChannel(f"no channel takes {p.currency} {p.payment_type} of {p.amount}")
        ready = [n for n in fitting if self.health[n].breaker.allows(now)
                 and self.health[n].limiter.available(now)]
        if not ready:
            raise ChannelsBusy(f"every channel for {p.currency} {p.payment_type} is "
                               "circuit-open or at its rate limit")
        scored = {n: self._score(n, now) for n in ready}
        kept = {n: score for n, score in scored.items() if score is not None}
        if kept:
            best = max(kept.values())
            near = [n for n in kept if kept[n] >= best - self.policy.tie_margin_pct / 100]
            far = [n for n in kept if n not in near]
            pool = (sorted(near, key=lambda n: self._rank[n])
                    + sorted(far, key=lambda n: (-kept[n], self._rank[n])))
        else:                              # every one eliminated: rank them all by fallback
            pool = sorted(ready, key=lambda n: self._rank[n])
        if len(pool) > 1 and self._rng.random() * 100 < self.policy.exploration_pct:
            i = self._rng.randrange(1, len(pool))
            pool[0], pool[i] = pool[i], pool[0]
        rest = [n for n in ready if n not in pool]
        ordered = pool + sorted(rest, key=lambda n: self._rank[n])
        self.health[ordered[0]].chosen += 1
        return ordered[: 1 + self.policy.failovers_max]

    def _score(self, name: str, now: float) -> float | None:
        """Success rate minus latency penalty; None when eliminated."""
        attempts, successes, latency = self.health[name].window.totals(now)
        if attempts < self.policy.min_samples:
            return 1.0
        rate = successes / attempts
        if rate * 100 < self.policy.elimination_success_pct:
            return None
        return rate - (latency / attempts) / self.policy.latency_weight_ms

    # ---- around each charge -----------------------------------------------------------------

    def admit(self, name: str) -> bool:
        """Just before sending a charge: take a token and, if half-open, the probe slot."""
        h = self.health.get(name)
        if h is None:
            return True                    # a channel routing does not manage (explicit, unknown)
        now = self._clock()
        if not h.breaker.allows(now) or not h.limiter.take(now):
            return False
        h.breaker.on_send(now)
        return True

    def record(self, name: str, attempt: Attempt, latency_ms: float) -> None:
        h = self.health.get(name)
        if h is None:
            return
        now = self._clock()
        h.window.add(now, attempt is Attempt.SUCCESS, latency_ms)
        h.breaker.record(now, attempt is Attempt.FAULT)

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {n: h.snapshot(now, self.policy.min_samples) for n, h in self.health.items()}


def policy_from_settings(r: RoutingSettings, shard_count: int) -> RoutingPolicy:
    return RoutingPolicy(
        window_s=r.window_s, window_buckets=r.window_buckets, min_samples=r.min_samples,
        exploration_pct=r.exploration_pct, elimination_success_pct=r.elimination_success_pct,
        latency_weight_ms=r.latency_weight_ms, tie_margin_pct=r.tie_margin_pct,
        fallback_order=tuple(c for c in r.fallback_order.split(",") if c),
        breaker_failures=r.breaker_failures, breaker_open_ms=r.breaker_open_ms,
        failovers_max=r.failovers_max, qps_share=1.0 / max(1, shard_count))
