"""A replay analyzes the tables it looks rows up in when they were never analyzed, partitions included.

The tables here are the test's own, with autovacuum off, so that nothing analyzes them behind its back.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from workers import statistics

pytestmark = pytest.mark.integration

TABLES = ("stats_plain", "stats_parted")


@pytest.fixture
def tables(db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    db.execute("CREATE TABLE stats_plain (k text PRIMARY KEY) WITH (autovacuum_enabled = false)")
    db.execute("CREATE TABLE stats_parted (at int NOT NULL, k text) PARTITION BY RANGE (at)")
    db.execute("CREATE TABLE stats_parted_1 PARTITION OF stats_parted FOR VALUES FROM (0) TO (100)"
               " WITH (autovacuum_enabled = false)")
    db.execute("CREATE TABLE stats_parted_2 PARTITION OF stats_parted FOR VALUES FROM (100) TO (200)"
               " WITH (autovacuum_enabled = false)")
    db.execute("CREATE TABLE stats_parted_empty PARTITION OF stats_parted FOR VALUES FROM (200) TO (300)"
               " WITH (autovacuum_enabled = false)")
    try:
        yield db
    finally:
        db.execute("DROP TABLE stats_plain, stats_parted")


def analyzed(db: psycopg.Connection, name: str) -> bool:
    row = db.execute("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = %s", (name,)).fetchone()
    return bool(row and row[0])


def test_tables_and_partitions_with_rows_and_no_statistics_are_analyzed_once(tables: psycopg.Connection) -> None:
    db = tables
    db.execute("INSERT INTO stats_plain SELECT g::text FROM generate_series(1, 5000) g")
    db.execute("INSERT INTO stats_parted SELECT g % 200, g::text FROM generate_series(1, 5000) g")
    assert sorted(statistics.analyze_missing(db, TABLES)) == ["stats_parted_1", "stats_parted_2", "stats_plain"]
    assert all(analyzed(db, name) for name in ("stats_plain", "stats_parted_1", "stats_parted_2"))
    assert not analyzed(db, "stats_parted_empty")  # nothing to learn from an empty partition
    # The planner now knows the table's size: a look-up by key goes through its index.
    plan = db.execute("EXPLAIN SELECT * FROM stats_plain WHERE k = ANY(%s)", (["1", "2"],)).fetchall()
    assert "Index" in " ".join(row[0] for row in plan)
    # Analyzed tables are left to autovacuum from then on.
    db.execute("INSERT INTO stats_plain SELECT g::text FROM generate_series(5001, 6000) g")
    assert statistics.analyze_missing(db, TABLES) == []


def test_the_lookup_tables_exist_after_migrate(db: psycopg.Connection) -> None:
    found = {name for (name,) in db.execute("SELECT relname FROM pg_class WHERE relname = ANY(%s)",
                                            (list(statistics.LOOKED_UP),))}
    assert found == set(statistics.LOOKED_UP)
    statistics.analyze_missing(db)  # on the project's own tables: runs, whatever autovacuum did already
    assert statistics.never_analyzed(db) == []
