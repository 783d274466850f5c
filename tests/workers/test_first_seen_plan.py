"""A replay's look-up of first deliveries probes the events' index per key, whatever the statistics.

The events table is partitioned, and autovacuum never analyzes a partitioned table itself, only its
partitions. Asked as `EXISTS`, the look-up was planned as one hash of the whole events table per page
whenever that table had no statistics of its own: the first replay of a database read every event
once per 500 keys (18 ms a page at 50,000 events instead of 1.7).
"""

from __future__ import annotations

import re

import psycopg
import pytest

from workers import statistics
from workers.store import FIRST_SEEN_SQL

pytestmark = pytest.mark.integration

EVENTS = 20_000


def forget_parent_statistics(db: psycopg.Connection) -> None:
    """The partitioned table as autovacuum leaves it: its partitions analyzed, itself never."""
    db.execute("DELETE FROM pg_statistic WHERE starelid = 'events'::regclass")
    db.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = 'events'::regclass")


def test_first_seen_reads_events_by_index_without_the_partitioned_tables_statistics(db: psycopg.Connection) -> None:
    db.execute(
        "INSERT INTO event_keys (dedupe_key, received_at)"
        " SELECT 'k' || g, now() - g * interval '1 second' FROM generate_series(1, %s) g", (EVENTS,))
    db.execute(
        "INSERT INTO events (dedupe_key, provider, feed, kind, received_at, stream_id, payload, normalizer_version)"
        " SELECT dedupe_key, 'cm', 'status', 'status', received_at, '1-0', '{}', 1 FROM event_keys")
    statistics.analyze_missing(db)
    forget_parent_statistics(db)
    keys = [f"k{n}" for n in range(1, EVENTS, EVENTS // 500)]
    plan = "\n".join(row[0] for row in db.execute(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + FIRST_SEEN_SQL, (keys,)))
    scanned = [int(rows) for rows in re.findall(r"Seq Scan on events\S* \S+ \(actual rows=(\d+)", plan)]
    assert sum(scanned) == 0, plan
    found = db.execute(FIRST_SEEN_SQL, (keys,)).fetchall()
    assert len(found) == len(keys) and all(there for _, _, there in found)
