"""bench.backlog (the notifications a phase leaves undelivered) and bench.gcpauses (what a phase
added to the collector pauses): their arithmetic, and the drain against a small HTTP server."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import orjson
import pytest

from bench import backlog, gcpauses, suite


def test_the_sustained_rate_adds_the_drain_less_the_channels_own_delay() -> None:
    cpu = {"gateway": 2.0, "sandbox": 3.0}
    before = backlog.Drained(0, 0.0, 0.2, 0)
    after = backlog.Drained(pending=500, seconds=2.2, delay_s=0.2, left=0)
    s = backlog.summary(1000, 10.0, before, after, cpu)
    assert s["sustained_orders_per_s"] == pytest.approx(1000 / 12.0)
    assert s["pending_at_end"] == 500 and s["left_after_drain"] == 0
    assert s["cpu_us_per_order_with_drain"]["total"] == pytest.approx(5000.0)
    # nothing left: the window alone
    idle = backlog.summary(1000, 10.0, before, backlog.Drained(0, 0.0, 0.2, 0), cpu)
    assert idle["sustained_orders_per_s"] == pytest.approx(100.0)
    assert "500 channel notifications left undelivered" in backlog.line(s)


class _Sandbox(BaseHTTPRequestHandler):
    pending = [3, 2, 1, 0]        # what successive health answers say

    def do_GET(self) -> None:
        if self.path == "/_sandbox/health":
            left = self.pending.pop(0) if len(self.pending) > 1 else self.pending[0]
            body = {"ok": True, "notify_pending": left}
        else:
            body = {"notify_delay_ms": 200}
        raw = orjson.dumps(body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sandbox() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sandbox)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_drain_waits_until_nothing_is_pending(sandbox: str) -> None:
    d = backlog.drain(sandbox)
    assert d.pending == 3 and d.left == 0 and d.delay_s == pytest.approx(0.2)
    assert d.seconds >= 3 * backlog.POLL_S
    assert backlog.drain(None) == backlog.Drained(0, 0.0, 0.0, 0)


def test_a_window_counts_what_it_added_by_process_and_generation() -> None:
    before = {("host-0", "2"): {"count": 4, "seconds": 0.05, "fast": 4},
              ("host-0", "0"): {"count": 100, "seconds": 0.1, "fast": 100}}
    after = {("host-0", "2"): {"count": 6, "seconds": 0.11, "fast": 5},
             ("host-0", "0"): {"count": 130, "seconds": 0.13, "fast": 130},
             ("sandbox", "2"): {"count": 1, "seconds": 0.03, "fast": 0}}
    w = gcpauses.window(before, after)
    assert w["host-0"]["2"] == {"collections": 2, "pause_ms": pytest.approx(60.0), "slow": 1}
    assert w["host-0"]["0"]["collections"] == 30 and w["host-0"]["0"]["slow"] == 0
    assert w["sandbox"]["2"]["slow"] == 1
    text = gcpauses.lines(w)
    assert text[0].startswith("host-0: 32 collections (2 full, 60 ms), 1 of 20 ms or more")


def test_derive_gives_the_ratios_of_the_sustained_maxima() -> None:
    results = {"paycell": {"max_orders_per_s": 700.0, "sustained_max_orders_per_s": 600.0,
                           "cpu_us_per_order": {},
                           "half_load": {"latency_us": {"p99": 20_000.0}}},
               "naive_ray": {"max_orders_per_s": 500.0, "sustained_max_orders_per_s": 300.0}}
    d = suite.derive(results, {})
    assert d["ratio_max_paycell_over_naive_ray"] == pytest.approx(1.4)
    assert d["ratio_sustained_paycell_over_naive_ray"] == pytest.approx(2.0)
    assert d["ratio_sustained_paycell_over_ray_serve"] is None
