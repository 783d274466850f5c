"""Planner statistics for the tables a replay looks its rows up in.

A replay finds stored rows by key: event_keys and the events by receive time and key, the consent
changes by event, the dead letters by stream id. Without statistics (a fresh database, a database
restored from a dump, which carries none, a partition in its first minute before autovacuum has
looked at it) PostgreSQL plans those look-ups as sequential scans, and every page of the replay
reads the whole table: measured on 20,000 stored records, the replay's UPDATE of the events took
23 µs per entry instead of 11, and the cost grows with the table. A replay therefore analyzes
first the tables that were never analyzed; tables autovacuum keeps are left alone.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

LOOKED_UP = ("events", "event_keys", "consent_changes", "dead_letters", "message_status", "status_history")

# The tables themselves and, for the partitioned ones, their partitions (only those hold statistics
# the planner uses for a scan). Whether one holds rows is read from its file's size: the statistics
# views count new rows only a moment later, and pg_class.relpages only after a VACUUM or ANALYZE.
NEVER_ANALYZED_SQL = """
SELECT s.schemaname, s.relname FROM pg_stat_user_tables s
WHERE (s.relname = ANY(%(tables)s) OR s.relid IN (
        SELECT i.inhrelid FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY(%(tables)s)))
  AND s.schemaname = current_schema()
  AND s.last_analyze IS NULL AND s.last_autoanalyze IS NULL
  AND pg_relation_size(s.relid) > 0
ORDER BY s.relname
"""


def never_analyzed(conn: psycopg.Connection[Any], tables: tuple[str, ...] = LOOKED_UP) -> list[tuple[str, str]]:
    return [(schema, name) for schema, name in conn.execute(NEVER_ANALYZED_SQL, {"tables": list(tables)})]


def analyze_missing(conn: psycopg.Connection[Any], tables: tuple[str, ...] = LOOKED_UP) -> list[str]:
    """ANALYZE each table (or partition) of `tables` that holds rows and was never analyzed; their names."""
    missing = never_analyzed(conn, tables)
    for schema, name in missing:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))
    return [name for _, name in missing]
