"""core.heap's pause clock, and how /metrics shows it (gateway.metrics.GcPauseMetrics)."""
import gc

from prometheus_client import CollectorRegistry, generate_latest

from core import heap
from gateway.metrics import GcPauseMetrics


def test_the_clock_counts_and_times_each_collection_by_generation():
    clock = heap.PauseClock()
    gc.callbacks.append(clock)
    try:
        garbage = [[i] for i in range(20_000)]
        for item in garbage:
            item.append(item)        # cycles: only the collector frees them
        del garbage, item
        gc.collect(2)
        gc.collect(1)
        gc.collect(1)
    finally:
        gc.callbacks.remove(clock)
    snap = clock.snapshot()
    assert snap["2"]["count"] >= 1 and snap["1"]["count"] >= 2
    full = snap["2"]
    assert 0 < full["max_s"] <= full["seconds"]
    assert full["buckets"] == sorted(full["buckets"])       # cumulative
    assert full["buckets"][-1] <= full["count"]


def test_a_pause_lands_in_every_bucket_at_or_above_its_length():
    clock = heap.PauseClock()
    clock("start", {"generation": 2})
    clock._started -= 0.010          # a 10 ms full collection
    clock("stop", {"generation": 2})
    assert clock.count == [0, 0, 1]
    assert 0.010 <= clock.max_s[2] < 0.015
    assert clock.buckets[2] == [0, 0, 1, 1, 1]     # > 1 ms, > 5 ms, <= 20 ms


def test_watch_installs_one_clock_per_process():
    first = heap.watch()
    assert heap.watch() is first and gc.callbacks.count(first) == 1
    gc.collect(0)
    assert heap.pauses()["0"]["count"] >= 1


def test_metrics_show_the_gateway_and_each_host_as_a_histogram():
    m = GcPauseMetrics()
    m.update("host-1", {"2": {"count": 3, "seconds": 0.06, "max_s": 0.03,
                              "buckets": [0, 1, 2, 3, 3]}})
    registry = CollectorRegistry()
    registry.register(m)
    text = generate_latest(registry).decode()
    assert 'paycell_gc_pause_seconds_bucket{generation="2",le="0.02",process="host-1"} 2.0' in text
    assert 'paycell_gc_pause_seconds_bucket{generation="2",le="+Inf",process="host-1"} 3.0' in text
    assert 'paycell_gc_pause_seconds_sum{generation="2",process="host-1"} 0.06' in text
    assert 'paycell_gc_pause_max_seconds{generation="2",process="host-1"} 0.03' in text
    heap.watch()
    assert 'process="gateway"' in generate_latest(registry).decode()
