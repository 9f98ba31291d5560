"""bench.load's open-loop generator against the bare aiohttp server (a process of its own)."""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Iterator

import pytest

from bench.load import run_open
from gateway.local import free_port, http_ok

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bare_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.baselines.bare", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if http_ok(url + "/healthz"):
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_every_scheduled_request_is_sent_once_and_answered(bare_url: str) -> None:
    pool = [({"X-Paycell-Nonce": f"n{i:015d}"}, b'{"i":%d}' % i) for i in range(400)]
    t0 = time.monotonic()
    load, cpu_s = run_open(bare_url, 200, 1.5, pool)
    wall = time.monotonic() - t0
    # 200/s for 1.5 s: requests 0..300 are due (the one due at 1.5 s is the last)
    assert 299 <= load.requests <= 301 and load.ok == load.requests == load.succeeded
    assert load.non_2xx == 0 and load.errors == {"client": 0}
    assert 1.4 < load.wall_s < 2.5 and wall < 10
    assert 0 < load.latency_us["p50"] <= load.latency_us["p99"] <= load.latency_us["max"]
    assert load.send_lag_p99_ms < 50
    assert 0 < cpu_s < load.wall_s * 2          # its own CPU while sending (2 cores at most)
    assert load.pending_latency_us == {}          # the bare server answers 200 only


def test_a_rate_the_pool_cannot_fill_stops_at_the_pool(bare_url: str) -> None:
    pool = [({}, b"{}")] * 50
    load, _ = run_open(bare_url, 1000, 1.0, pool)
    assert load.requests == 50 and load.ok == 50
