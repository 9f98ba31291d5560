"""Prometheus metrics of one gateway, in a registry owned by its app (no module globals)."""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                   Metric)
from prometheus_client.registry import Collector

from core import heap

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1, 2.5, 5)


class ReconcilerMetrics(Collector):
    """The SET's reconciler counters, as the reconciler actor last reported them
    (Reconciler.stats: counted since the actor started, so they start again from 0 when it is
    restarted, as any Prometheus counter of a restarted process). `update` is called by the
    /metrics handler before it renders; until the first answer nothing is shown."""

    def __init__(self) -> None:
        self._stats: dict[str, Any] | None = None

    def update(self, stats: dict[str, Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        if s is None:
            return
        yield _by_channel(CounterMetricFamily(
            "paycell_reconciler_runs", "Reconciliation runs finished, by channel and outcome "
            "(complete, failed)", labels=["channel", "outcome"]), s["runs"])
        yield _by_channel(CounterMetricFamily(
            "paycell_reconciler_settled", "What reconciliation runs settled, by channel and "
            "kind: paid (PENDING -> SUCCEEDED), closed (cancelled at the channel), refunded "
            "(extra payments refunded: duplicates, paid after close, on a channel left), "
            "refund_settled (paycell's own refunds)", labels=["channel", "kind"]), s["settled"])
        yield _by_channel(CounterMetricFamily(
            "paycell_reconciler_mismatches", "Mismatches reported by reconciliation runs, by "
            "channel and kind (a rerun of a day reports its mismatches again)",
            labels=["channel", "kind"]), s["mismatches"])
        duration = GaugeMetricFamily(
            "paycell_reconciler_last_run_duration_seconds",
            "How long the last finished reconciliation run of the channel took",
            labels=["channel"])
        finished = GaugeMetricFamily(
            "paycell_reconciler_last_run_timestamp_seconds",
            "When the last reconciliation run of the channel finished (Unix time)",
            labels=["channel"])
        for channel, last in sorted(s["last_run"].items()):
            duration.add_metric([channel], last["duration_s"])
            finished.add_metric([channel], last["finished_at"])
        yield duration
        yield finished
        yield GaugeMetricFamily("paycell_reconciler_runs_inflight",
                                "Reconciliation runs in progress", value=s["runs_inflight"])


class GcPauseMetrics(Collector):
    """The collector's pauses (core.heap) of the gateway itself and of each shard host, as the
    hosts last reported them (`update`, from their pings, before /metrics renders). A pause
    stops every request the process holds, so this is where latency spikes of a process show."""

    def __init__(self) -> None:
        self._hosts: dict[str, dict[str, Any]] = {}

    def update(self, process: str, pauses: dict[str, Any]) -> None:
        self._hosts[process] = pauses

    def collect(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "paycell_gc_pause_seconds", "Garbage collector pauses by process (gateway, "
            "host-N) and generation (2: full collections), since the process started",
            labels=["process", "generation"])
        longest = GaugeMetricFamily(
            "paycell_gc_pause_max_seconds", "The longest collector pause by process and "
            "generation, since the process started", labels=["process", "generation"])
        for process, pauses in [("gateway", heap.pauses()), *sorted(self._hosts.items())]:
            for gen, p in sorted(pauses.items()):
                buckets = [(str(b), n) for b, n in zip(heap.PAUSE_BUCKETS_S, p["buckets"])]
                hist.add_metric([process, gen], [*buckets, ("+Inf", p["count"])], p["seconds"])
                longest.add_metric([process, gen], p["max_s"])
        yield hist
        yield longest


def _by_channel(family: CounterMetricFamily,
                counts: dict[str, dict[str, int]]) -> CounterMetricFamily:
    for channel, by_label in sorted(counts.items()):
        for label, n in sorted(by_label.items()):
            family.add_metric([channel, label], n)
    return family


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("paycell_gateway_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("paycell_gateway_request_duration_seconds",
                                 "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.orders = Counter("paycell_gateway_orders", "Order replies by status",
                              ["status"], registry=self.registry)
        self.refunds = Counter("paycell_gateway_refunds", "Refund replies by status",
                               ["status"], registry=self.registry)
        self.notifications = Counter("paycell_gateway_notifications",
                                     "Channel notifications by channel and result",
                                     ["channel", "result"], registry=self.registry)

        self.events_due = Gauge("paycell_merchant_events_due",
                                "Merchant events waiting for delivery (incl. retries), by shard",
                                ["shard"], registry=self.registry)
        self.events_dead = Gauge("paycell_merchant_events_dead",
                                 "Merchant events given up (dead or refused) and kept for "
                                 "operators, by shard", ["shard"], registry=self.registry)
        self.reconciler = ReconcilerMetrics()
        self.registry.register(self.reconciler)
        self.gc = GcPauseMetrics()
        self.registry.register(self.gc)

        # Labelled children, looked up once per (route, status): labels() costs more than the
        # increment itself on every request.
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, status))
        if children is None:
            children = self._request_children[(route, status)] = (
                self.requests.labels(route, str(status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
