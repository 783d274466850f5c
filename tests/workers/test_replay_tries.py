"""A replay is not another delivery: replaying a record that is still a dead letter updates its
reason but never counts a try (the `tries` that `hookstream dead-letters` shows)."""

from __future__ import annotations

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from shared.record import RawRecord
from shared.settings import Settings
from workers.batch import observe
from workers.context import normalize_context
from workers.metrics import WorkerMetrics
from workers.normalize import normalize_entries
from workers.store import WriteResult, write_entries

pytestmark = pytest.mark.integration

BROKEN = RawRecord(provider="mx2", feed="webhook", method="POST", query=b"", content_type="application/json",
                   headers={}, client="127.0.0.1", received_at_ms=1_790_000_000_000, body=b"{not json")


def tries(db: psycopg.Connection) -> int:
    row = db.execute("SELECT attempts FROM dead_letters WHERE stream_id = '1790000000000-0'").fetchone()
    assert row is not None
    return int(row[0])


def test_replays_leave_the_tries_alone(db: psycopg.Connection) -> None:
    entries = normalize_entries([("1790000000000-0", BROKEN.to_fields())], normalize_context(Settings()))
    assert entries[0].dead_reason is not None
    for replay, expected in ((False, 1), (False, 2), (True, 2), (True, 2)):
        with db.transaction():
            write_entries(db, entries, replay=replay)
        assert tries(db) == expected, ("replay" if replay else "delivery", expected)


def test_a_replay_is_counted_apart_from_live_traffic() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    entries = normalize_entries([("1790000000000-0", BROKEN.to_fields())], normalize_context(Settings()))
    observe(metrics, "replay", entries, WriteResult(), 0.01)
    assert registry.get_sample_value("hookstream_worker_dead_letters_total", {"mode": "replay", "provider": "mx2"}) == 1
    assert registry.get_sample_value("hookstream_worker_dead_letters_total", {"mode": "live", "provider": "mx2"}) is None
