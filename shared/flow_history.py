"""Flow over time: one sample a minute of the pipeline's state, kept in a capped Redis stream, read back
as the dashboard's charts of the last hours (throughput, lag, receive→commit latency).

The dispatcher's upkeep writes the samples (workers/flow_history.py); the dashboard reads them. Pure
apart from the key: samples in, series and chart specifications out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

KEEP = 24 * 60  # samples (one a minute): a day
BUCKET_S = 300  # a chart bar: five minutes
HOURS = 6  # shown by the dashboard
FIELDS = ("at", "lag", "pending", "added", "events", "latency_avg_ms", "latency_max_ms")


def key(prefix: str) -> str:
    return f"{prefix}:flow:history"


def encode(sample: Mapping[str, Any]) -> dict[str, str]:
    """A sample as stream fields; a figure not known (None) is left out."""
    return {name: str(sample[name]) for name in FIELDS if sample.get(name) is not None}


def decode(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    for name, value in fields.items():
        text = name.decode()
        if text == "at":
            out["at"] = datetime.fromisoformat(value.decode())
        elif text in FIELDS:
            out[text] = float(value)
    return out


def series(samples: Iterable[Mapping[str, Any]], now: datetime, hours: int = HOURS) -> dict[str, Any]:
    """Five-minute buckets over the last `hours`: requests appended (the streams' entries-added between
    samples), events received (by Postgres' receive time), the highest lag, the mean and the highest
    receive→commit latency. A bucket with no sample is None (the dispatcher was down)."""
    count = hours * 3600 // BUCKET_S
    start = now - timedelta(seconds=count * BUCKET_S)
    start -= timedelta(seconds=start.timestamp() % BUCKET_S)
    labels = [(start + timedelta(seconds=i * BUCKET_S)).astimezone(UTC).isoformat() for i in range(count + 1)]
    out: dict[str, list[float | None]] = {name: [None] * len(labels) for name in
                                          ("added", "events", "lag", "latency_avg_ms", "latency_max_ms")}
    latency: list[list[float]] = [[] for _ in labels]
    previous: float | None = None
    for sample in sorted(samples, key=lambda s: s["at"]):
        index = int((sample["at"] - start).total_seconds() // BUCKET_S)
        added = sample.get("added")
        # entries-added only grows; a drop is a stream made again (or another shard count): no figure.
        delta = added - previous if added is not None and previous is not None and added >= previous else None
        previous = added
        if not 0 <= index < len(labels):
            continue
        for name, value in (("added", delta), ("events", sample.get("events"))):
            if value is not None:
                out[name][index] = (out[name][index] or 0) + value
        for name in ("lag", "latency_max_ms"):
            value = sample.get(name)
            if value is not None:
                out[name][index] = max(out[name][index] or 0, value)
        if sample.get("latency_avg_ms") is not None:
            latency[index].append(sample["latency_avg_ms"])
    out["latency_avg_ms"] = [round(sum(v) / len(v), 1) if v else None for v in latency]
    return {"labels": labels, **out, "samples": sum(1 for v in out["lag"] if v is not None)}


def charts(history: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Chart specifications (static/dashboard.js) of a `series`; bars of no sample are drawn as 0."""
    def values(name: str) -> list[float]:
        return [v or 0 for v in history[name]]

    def spec(kind: str, parts: list[tuple[str, str, str]]) -> dict[str, Any]:
        return {"kind": kind, "format": "time", "labels": history["labels"],
                "series": [{"name": title, "cls": cls, "values": values(name)} for name, title, cls in parts]}

    return [
        {"caption": "Throughput: requests appended and events received per 5 minutes",
         "spec": spec("grouped", [("added", "requests appended", "h-added"), ("events", "events", "h-events")])},
        {"caption": "Lag: the highest number of entries not read yet",
         "spec": spec("stacked", [("lag", "lag", "h-lag")])},
        {"caption": "Receive → commit latency (ms): mean and highest per minute",
         "spec": spec("grouped", [("latency_avg_ms", "mean", "h-latency"),
                                  ("latency_max_ms", "highest", "h-latency-max")])},
    ]
