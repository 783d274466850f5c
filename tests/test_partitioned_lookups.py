"""Look-ups of the partitioned events table probe its indexes per key, whatever its statistics.

Autovacuum never analyzes a partitioned table itself, only its partitions. A look-up asked as a
correlated `EXISTS` was then planned as one hash of the whole events table: the replay's look-up of
first deliveries once per page of 500 keys (18 ms a page at 50,000 events instead of 1.7), and the
consent API's bulk check once per call with 1,000 ids or more among its subjects. Both grow with the
table.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from api.queries import check_sql
from workers import statistics
from workers.store import FIRST_SEEN_SQL

pytestmark = pytest.mark.integration

EVENTS = 20_000


@pytest.fixture
def stored(db: psycopg.Connection) -> psycopg.Connection:
    """EVENTS events (and their keys), the partitions analyzed, the partitioned table as autovacuum
    leaves it: never analyzed itself."""
    db.execute(
        "INSERT INTO event_keys (dedupe_key, received_at)"
        " SELECT 'k' || g, now() - g * interval '1 second' FROM generate_series(1, %s) g", (EVENTS,))
    db.execute(
        "INSERT INTO events (dedupe_key, provider, feed, kind, phone, received_at, stream_id, payload,"
        " normalizer_version)"
        " SELECT dedupe_key, 'mx2', 'webhook', 'inbound', 'sub-' || dedupe_key, received_at, '1-0', '{}', 1"
        " FROM event_keys")
    statistics.analyze_missing(db)
    db.execute("DELETE FROM pg_statistic WHERE starelid = 'events'::regclass")
    db.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = 'events'::regclass")
    return db


def events_scanned(db: psycopg.Connection, sql: str, params: list[object]) -> int:
    """Rows the statement read from the events' partitions by sequential scan."""
    with db.cursor(binary=True) as cur:
        plan = "\n".join(row[0] for row in cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql, params))
    return sum(int(rows) for rows in re.findall(r"Seq Scan on events\S* \S+ \(actual rows=(\d+)", plan))


def test_first_seen_reads_events_by_index(stored: psycopg.Connection) -> None:
    keys = [f"k{n}" for n in range(1, EVENTS, EVENTS // 500)]
    assert events_scanned(stored, FIRST_SEEN_SQL, [keys]) == 0
    found = stored.execute(FIRST_SEEN_SQL, (keys,)).fetchall()
    assert len(found) == len(keys) and all(there for _, _, there in found)


@pytest.mark.parametrize("scoped", [True, False])
def test_the_bulk_check_finds_known_ids_by_index(stored: psycopg.Connection, scoped: bool) -> None:
    ids = [f"sub-k{n}" for n in range(1, 1_001)] + ["never-seen"]
    params: list[object] = [ids, [False] * len(ids), *([["3669", "*"]] if scoped else []), ids]
    assert events_scanned(stored, check_sql(scoped, False), params) == 0
    with stored.cursor(binary=True) as cur:
        states = [row[0] for row in cur.execute(check_sql(scoped, False), params)]
    assert states == ["unknown"] * 1_000 + ["invalid"]
