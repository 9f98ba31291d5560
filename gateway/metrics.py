"""Prometheus metrics of one gateway, in a registry owned by its app (no module globals)."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1, 2.5, 5)


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
