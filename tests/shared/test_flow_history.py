"""shared.flow_history: samples of a minute into five-minute bars of the last hours. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared import flow_history

NOW = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)


def sample(minutes_ago: int, added: int, **figures: float) -> dict[str, object]:
    return {**dict.fromkeys(flow_history.FIELDS), "at": NOW - timedelta(minutes=minutes_ago), "added": added,
            **figures}


def test_samples_become_bars_of_five_minutes() -> None:
    samples = [sample(12, 1000, lag=5, events=100, latency_avg_ms=20, latency_max_ms=80),
               sample(11, 1100, lag=50, events=90, latency_avg_ms=40, latency_max_ms=300),
               sample(2, 1300, lag=0, events=10, latency_avg_ms=10, latency_max_ms=15),
               sample(1, 5, lag=0)]  # the stream was made again: no throughput figure from it
    history = flow_history.series(samples, NOW, hours=1)
    assert len(history["labels"]) == 13 and history["labels"][-1] == "2026-03-02T12:00:00+00:00"
    bar = history["labels"].index("2026-03-02T11:45:00+00:00")
    assert (history["added"][bar], history["events"][bar], history["lag"][bar]) == (100, 190, 50)
    assert (history["latency_avg_ms"][bar], history["latency_max_ms"][bar]) == (30.0, 300)
    last = history["labels"].index("2026-03-02T11:55:00+00:00")
    assert (history["added"][last], history["events"][last], history["lag"][last]) == (200, 10, 0)
    assert history["lag"][0] is None and history["samples"] == 2
    charts = flow_history.charts(history)
    assert [len(c["spec"]["series"]) for c in charts] == [2, 1, 2]
    assert charts[1]["spec"]["series"][0]["values"][0] == 0, "a bar without a sample is drawn as 0"


def test_samples_round_trip_through_stream_fields() -> None:
    fields = flow_history.encode({"at": NOW.isoformat(), "lag": 3, "pending": None, "added": 7, "events": 2,
                                  "latency_avg_ms": 12.5, "latency_max_ms": None})
    assert "pending" not in fields
    decoded = flow_history.decode({k.encode(): v.encode() for k, v in fields.items()})
    assert decoded["at"] == NOW and decoded["lag"] == 3 and decoded["pending"] is None
    assert decoded["latency_avg_ms"] == 12.5
