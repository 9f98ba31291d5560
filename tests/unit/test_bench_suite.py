"""bench.suite's pure parts: the ceiling, the own-CPU ratio, the goals, the chart points, and how
the suite's extra processes are grouped. No Ray, Redis or network."""
from __future__ import annotations

import math

import pytest

from bench import ceiling, chart, phases, procs, suite
from bench.procs import ProcInfo

PARTS = {"sandbox_us": 2000.0, "http_server_hop_us": 50.0, "http_client_call_us": 150.0,
         "rsa2_sign_us": 600.0, "rsa2_verify_us": 40.0, "loadgen_us": 60.0}


def test_ceiling_is_cores_over_the_sum_of_the_parts() -> None:
    c = ceiling.ceiling(PARTS, cores=2)
    assert c["per_order_us"] == pytest.approx(2900.0)
    assert c["orders_per_s"] == pytest.approx(2e6 / 2900.0)
    assert set(c["parts_us"]) == set(PARTS)


def test_own_cpu_ratio_takes_away_rsa2_and_the_channel_call() -> None:
    paycell = {"gateway": 900.0, "actors": 600.0, "ray-system": 100.0, "redis": 200.0}
    o = ceiling.own_cpu_ratio(paycell, PARTS, bare_hop_us=50.0)
    # RSA2: one sign and two verifies (answer + notification); plus one client call
    assert o["minus_us"] == pytest.approx(600 + 80 + 150)
    assert o["ratio"] == pytest.approx((1800 - 830) / 50)
    assert o["ratio_without_ray_system"] == pytest.approx((1700 - 830) / 50)


def _figure(p99_ms: float) -> dict:
    return {"latency_us": {"p50": 1000.0, "p97": 2000.0, "p99": p99_ms * 1000}}


def test_goals_compare_against_the_issue_bounds() -> None:
    d = {"ratio_max_paycell_over_naive_ray": 2.0, "ratio_max_paycell_over_ray_serve": 1.9,
         "ceiling_fraction": 0.81, "own_cpu": {"ratio": 3.5}}
    g = suite._goals(d, {"half_load": _figure(30.0)})
    assert g == {"paycell_ge_2x_naive_ray": True, "paycell_ge_2x_ray_serve": False,
                 "paycell_ge_80pct_of_ceiling": True, "paycell_p99_at_half_max_le_30ms": True,
                 "paycell_own_cpu_le_3x_bare_hop": False}


def test_goals_unknown_when_a_baseline_is_missing() -> None:
    g = suite._goals({"ratio_max_paycell_over_naive_ray": None}, {"half_load": _figure(31.0)})
    assert g["paycell_ge_2x_naive_ray"] is None and g["paycell_own_cpu_le_3x_bare_hop"] is None
    assert g["paycell_p99_at_half_max_le_30ms"] is False


def test_derive_uses_paycell_sandbox_bare_hop_and_paycell_loadgen() -> None:
    per = {"gateway": 900.0, "actors": 600.0, "ray-system": 100.0, "redis": 200.0,
           "sandbox": 2000.0, "loadgen": 60.0}
    results = {"paycell": {"max_orders_per_s": 400.0, "cpu_us_per_order": per,
                           "half_load": _figure(20.0)},
               "bare": {"max_orders_per_s": 20000.0, "cpu_us_per_order": {"gateway": 50.0},
                        "client_call": {"http_client_call_us": 150.0}},
               "naive_ray": {"max_orders_per_s": 100.0}}
    d = suite.derive(results, {"rsa2_sign_us": 600.0, "rsa2_verify_us": 40.0})
    assert d["ceiling"]["per_order_us"] == pytest.approx(2900.0)
    assert d["ceiling_fraction"] == pytest.approx(400 / (2e6 / 2900))
    assert d["ratio_max_paycell_over_naive_ray"] == pytest.approx(4.0)
    assert d["ratio_max_paycell_over_ray_serve"] is None


def test_chart_points_sorted_and_flag_a_lagging_generator() -> None:
    curve = [{"offered_per_s": 300.0, "latency_us": {"p50": 4000.0, "p99": 9000.0},
              "send_lag_p99_ms": 7.5},
             {"offered_per_s": 100.0, "latency_us": {"p50": 2000.0, "p99": 5000.0},
              "send_lag_p99_ms": 0.4}]
    assert chart.points(curve) == [(100.0, 2.0, 5.0, False), (300.0, 4.0, 9.0, True)]


def test_grouped_us_sums_the_actor_groups() -> None:
    per = {g: 0.0 for g in procs.GROUPS}
    per.update({procs.SHARD_ACTORS: 10.0, procs.OTHER_ACTORS: 6.0,
                procs.GATEWAY: 7.0, "total": 23.0})
    g = phases.grouped_us({"cpu_us_per_order": per})
    assert g["actors"] == 16.0 and g["gateway"] == 7.0 and g["total"] == 23.0
    assert not math.isnan(g["sandbox"])


def test_serve_proxy_is_gateway_and_controller_is_ray_system() -> None:
    table = [ProcInfo(10, 1, "python3", ("python3", "-m", "bench.baselines.serve_app")),
             ProcInfo(11, 10, "raylet", ("/ray/core/src/ray/raylet/raylet",)),
             ProcInfo(12, 11, "ray::ProxyActor", ("ray::ProxyActor",)),
             ProcInfo(13, 11, "ray::ServeController", ("ray::ServeController",)),
             ProcInfo(14, 11, "ray::ServeReplica:bench:OrderDeployment",
                      ("ray::ServeReplica:bench:OrderDeployment",)),
             ProcInfo(20, 1, "redis-server", ("redis-server 127.0.0.1:7000",))]
    g = procs.group_processes(table, 10)
    assert g == {10: procs.GATEWAY, 11: procs.RAY_SYSTEM, 12: procs.GATEWAY,
                 13: procs.RAY_SYSTEM, 14: procs.OTHER_ACTORS, 20: procs.REDIS}
