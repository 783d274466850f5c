"""`observe_all` gives a histogram exactly what one `observe` per amount gives."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from workers.metrics import LAG_BUCKETS, observe_all

AMOUNTS = [0.0, 0.009, 0.01, 0.0100001, 0.05, 0.3, 1.0, 59.9, 60.0, 299.0, 300.0, 300.5, 86400.0, 0.0, 0.01]


def exposed(observe: bool) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("lag_seconds", "lag", buckets=LAG_BUCKETS, registry=registry)
    if observe:
        for amount in AMOUNTS:
            histogram.observe(amount)
    else:
        observe_all(histogram, AMOUNTS)
        observe_all(histogram, [])
    return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)


def test_observe_all_matches_one_observe_per_amount_bounds_included() -> None:
    assert exposed(observe=False) == exposed(observe=True)
    assert b'lag_seconds_bucket{le="0.01"} 5.0' in exposed(observe=False)  # a bound is inclusive (le)
    assert b'lag_seconds_count 15.0' in exposed(observe=False)
