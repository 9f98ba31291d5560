"""Channel selection: eligibility, elimination, exploration, latency, breaker, limiter, window."""
from __future__ import annotations

import random

import pytest

from channels.base import Capabilities
from channels.routing import (Attempt, BreakerState, ChannelsBusy, CircuitBreaker, NoChannel,
                              Payment, Router, RoutingPolicy, SlidingWindow, TokenBucket)

CARD_USD = Capabilities(currencies=frozenset({"USD"}), payment_types=frozenset({"card"}),
                        amount_min=50, amount_max=1_000_000, qps=1000)
CARD_USD_CNY = Capabilities(currencies=frozenset({"USD", "CNY"}),
                            payment_types=frozenset({"card"}), countries=frozenset({"CN", "HK"}),
                            qps=1000)
BARCODE_CNY = Capabilities(currencies=frozenset({"CNY"}), payment_types=frozenset({"barcode"}),
                           qps=1000)
USD = Payment(1000, "USD", "card")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _router(caps: dict[str, Capabilities], clock: Clock | None = None, seed: int = 1,
            **policy: object) -> Router:
    base = dict(window_s=60, window_buckets=12, min_samples=10, exploration_pct=0,
                tie_margin_pct=2,
                elimination_success_pct=50, latency_weight_ms=2000,
                fallback_order=("stripe", "paypal", "unionpay"), breaker_failures=3,
                breaker_open_ms=5000, failovers_max=2)
    base.update(policy)
    return Router(RoutingPolicy(**base), caps, clock=clock or Clock(),  # type: ignore[arg-type]
                  rng=random.Random(seed))


def _feed(r: Router, name: str, n: int, attempt: Attempt, latency_ms: float = 100) -> None:
    for _ in range(n):
        r.record(name, attempt, latency_ms)


def test_eligibility_by_capabilities_and_fallback_order() -> None:
    r = _router({"stripe": CARD_USD, "paypal": CARD_USD, "unionpay": CARD_USD_CNY})
    assert r.candidates(USD) == ["stripe", "paypal", "unionpay"]
    assert r.candidates(Payment(1000, "CNY", "card")) == ["unionpay"]
    assert r.candidates(Payment(10, "USD", "card")) == ["unionpay"]         # under stripe's min
    assert r.candidates(Payment(1000, "USD", "card", country="US")) == ["stripe", "paypal"]
    assert r.candidates(USD, exclude=["stripe"]) == ["paypal", "unionpay"]
    with pytest.raises(NoChannel):
        r.candidates(Payment(1000, "EUR", "card"))


def test_barcode_goes_by_the_auth_code_prefix() -> None:
    r = _router({"alipay": BARCODE_CNY, "wechatpay": BARCODE_CNY, "qpay": BARCODE_CNY})
    assert r.candidates(Payment(100, "CNY", "barcode", auth_code="28763443825664394")) == ["alipay"]
    assert r.candidates(Payment(100, "CNY", "barcode", auth_code="134567890123456789")) == [
        "wechatpay"]
    assert r.candidates(Payment(100, "CNY", "barcode", auth_code="910123456789012345")) == ["qpay"]
    with pytest.raises(NoChannel):
        r.candidates(Payment(100, "CNY", "barcode", auth_code="990000000000000000"))


def test_success_rate_ranks_and_elimination_removes() -> None:
    r = _router({"stripe": CARD_USD, "paypal": CARD_USD})
    _feed(r, "stripe", 6, Attempt.SUCCESS)
    _feed(r, "stripe", 6, Attempt.DECLINED)        # 50%: kept, ranked below a 90% channel
    _feed(r, "paypal", 9, Attempt.SUCCESS)
    _feed(r, "paypal", 1, Attempt.DECLINED)
    assert r.candidates(USD) == ["paypal", "stripe"]
    _feed(r, "stripe", 4, Attempt.DECLINED)        # 6/16 = 37.5% < 50%: eliminated, last resort
    assert r.candidates(USD) == ["paypal", "stripe"]
    _feed(r, "paypal", 20, Attempt.DECLINED)       # both eliminated: rank among all by fallback
    assert r.candidates(USD) == ["stripe", "paypal"]


def test_cold_channels_count_as_healthy_and_latency_breaks_ties() -> None:
    r = _router({"stripe": CARD_USD, "paypal": CARD_USD})
    _feed(r, "stripe", 10, Attempt.SUCCESS, latency_ms=900)
    _feed(r, "paypal", 10, Attempt.SUCCESS, latency_ms=100)
    assert r.candidates(USD)[0] == "paypal"     # same success, 800 ms faster
    r3 = _router({"stripe": CARD_USD, "paypal": CARD_USD})
    _feed(r3, "stripe", 10, Attempt.SUCCESS, latency_ms=130)
    _feed(r3, "paypal", 10, Attempt.SUCCESS, latency_ms=100)
    assert r3.candidates(USD) == ["stripe", "paypal"]   # 30 ms is within the tie margin
    r2 = _router({"stripe": CARD_USD, "paypal": CARD_USD})
    _feed(r2, "stripe", 9, Attempt.DECLINED)    # under min_samples: not judged yet
    assert r2.candidates(USD)[0] == "stripe"


def test_exploration_share_sends_some_traffic_to_the_second_best() -> None:
    r = _router({"stripe": CARD_USD, "paypal": CARD_USD}, exploration_pct=10, seed=3)
    _feed(r, "paypal", 20, Attempt.SUCCESS)
    _feed(r, "stripe", 20, Attempt.SUCCESS, latency_ms=600)
    firsts = [r.candidates(USD)[0] for _ in range(2000)]
    share = firsts.count("stripe") / len(firsts)
    assert 0.07 < share < 0.13, share


def test_window_forgets_old_failures() -> None:
    clock = Clock()
    r = _router({"stripe": CARD_USD, "paypal": CARD_USD}, clock)
    _feed(r, "stripe", 20, Attempt.DECLINED)
    assert r.candidates(USD)[0] == "paypal"
    clock.t += 61
    assert r.candidates(USD)[0] == "stripe"
    assert r.snapshot()["stripe"]["attempts"] == 0


def test_sliding_window_counts_only_recent_buckets() -> None:
    w = SlidingWindow(10, 5)          # 2 s buckets
    w.add(100.0, True, 10)
    w.add(103.0, False, 30)
    assert w.totals(103.5) == (2, 1, 40.0)
    assert w.totals(109.9) == (2, 1, 40.0)     # the 100 s bucket (100-102) is still in the window
    assert w.totals(110.0) == (1, 0, 30.0)     # slid out
    assert w.totals(114.0) == (0, 0, 0.0)


def test_breaker_opens_on_faults_probes_once_and_closes() -> None:
    b = CircuitBreaker(failures_max=3, open_s=5)
    for _ in range(2):
        b.record(0, fault=True)
    assert b.state(0) is BreakerState.CLOSED
    b.record(0, fault=False)                   # a success resets the count
    for _ in range(3):
        b.record(1, fault=True)
    assert b.state(1) is BreakerState.OPEN and not b.allows(5.9)
    assert b.state(6) is BreakerState.HALF_OPEN and b.allows(6)
    b.on_send(6)
    assert not b.allows(6)                     # one probe at a time
    b.record(6.5, fault=True)                  # the probe failed: open again
    assert b.state(7) is BreakerState.OPEN and b.opened_count == 2
    b.on_send(12)
    b.record(12, fault=False)
    assert b.state(12) is BreakerState.CLOSED and b.allows(12)


def test_router_breaker_takes_a_faulty_channel_out_and_back() -> None:
    clock = Clock()
    r = _router({"stripe": CARD_USD, "paypal": CARD_USD}, clock)
    for _ in range(3):
        assert r.admit("stripe")
        r.record("stripe", Attempt.FAULT, 5000)
    assert r.candidates(USD) == ["paypal"]
    assert not r.admit("stripe")
    clock.t += 5
    assert r.candidates(USD)[0] == "stripe"      # half-open, cold: ranked by fallback order
    assert r.admit("stripe") and not r.admit("stripe")     # half-open: one probe
    r.record("stripe", Attempt.SUCCESS, 100)
    assert r.snapshot()["stripe"]["breaker"] == "closed"


def test_declines_never_open_the_breaker() -> None:
    r = _router({"stripe": CARD_USD})
    for _ in range(50):
        assert r.admit("stripe")
        r.record("stripe", Attempt.DECLINED, 100)
    assert r.snapshot()["stripe"]["breaker"] == "closed"


def test_limiter_caps_the_rate_and_refills() -> None:
    clock = Clock()
    slow = Capabilities(currencies=frozenset({"USD"}), payment_types=frozenset({"card"}), qps=4)
    r = _router({"stripe": slow, "paypal": CARD_USD}, clock, qps_share=0.5)   # 2/s here
    assert r.admit("stripe") and r.admit("stripe") and not r.admit("stripe")
    assert r.candidates(USD) == ["paypal"]
    clock.t += 0.5
    assert r.admit("stripe") and not r.admit("stripe")
    r_only = _router({"stripe": slow}, clock, qps_share=0.25)
    assert r_only.admit("stripe")
    with pytest.raises(ChannelsBusy):
        r_only.candidates(USD)


def test_token_bucket() -> None:
    t = TokenBucket(rate=10, burst=2)
    assert t.take(0) and t.take(0) and not t.take(0)
    assert not t.take(0.05) and t.take(0.1)


def test_unmanaged_channels_are_always_admitted() -> None:
    r = _router({"stripe": CARD_USD})
    assert r.admit("other")
    r.record("other", Attempt.FAULT, 1)          # ignored, no error
