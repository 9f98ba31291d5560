"""bench.scale's summary of repeated runs."""
from bench.scale import median_row


def test_median_row_is_the_middle_run_by_throughput():
    runs = [{"orders_per_s": x, "tag": t} for x, t in ((500, "a"), (300, "b"), (450, "c"))]
    assert median_row(runs)["tag"] == "c"
    assert median_row(runs[:2])["tag"] == "b"          # even count: the lower middle one
    assert median_row(runs[:1])["tag"] == "a"
