"""The reconciliation benchmark (bench/reconcile.py) with a small day, on its own stack: the
counts it reports are the ones the day must give, and every check it makes passes. The large
day: ``python -m bench.reconcile`` (20,000 orders)."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench import reconcile
from bench.reconcile_day import expected_reports

pytestmark = pytest.mark.integration
ORDERS = 400


@pytest.fixture(autouse=True)
def _ray_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def test_a_small_day_is_settled_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    args = reconcile.parse_args(["--orders", str(ORDERS), "--concurrency", "32", "--seed", "3",
                                 "--out", str(tmp_path)])
    r, path = reconcile.run(args)
    assert r is not None and path is not None
    assert {name: problems for name, problems in r["checks"].items() if problems} == {}
    assert r["ok"] is True

    k, strays = r["kinds"], r["stray_payments"]
    # 400 orders with the default mix: every kind is there
    assert (k["lost"], k["unpaid"], k["unknown"], k["twice"], k["mismatch"], strays) == \
        (20, 4, 2, 1, 1, 1)
    assert sum(k.values()) == ORDERS
    first, second = r["runs"]
    want1, want2, by_kind = expected_reports(k, strays)
    assert first["statement_rows"] == k["paid"] + 2 * k["twice"] + k["notify"] + k["lost"] \
        + k["mismatch"] + strays
    assert (first["counts"]["settled_paid"], first["counts"]["settled_closed"],
            first["counts"]["refunds_sent"]) == (20, 6, 1)
    assert (second["counts"]["settled_paid"], second["counts"]["settled_closed"],
            second["counts"]["already_settled"], second["counts"]["refunds_already_done"]) \
        == (0, 0, 26, 1)
    assert first["mismatches_by_kind"] == second["mismatches_by_kind"] == by_kind == \
        {"amount_mismatch": 1, "missing_in_paycell": 1, "paid_twice": 1}
    for f in (first, second):
        assert f["status"] == "complete" and f["cli_exit"] == 0
        assert f["run_wall_s"] > 0 and f["orders_per_s"] == pytest.approx(ORDERS / f["run_wall_s"])
        assert 0 < f["reconciler_cpu_s"] <= f["stack_cpu_s"]
        assert f["reconciler_peak_rss_mib"] >= f["reconciler_rss_before_mib"] > 10

    saved = orjson.loads(path.read_bytes())
    assert path.name.startswith("reconcile-") and saved["result"]["ok"] is True
    assert saved["result"]["runs"][0]["counts"] == first["counts"]
