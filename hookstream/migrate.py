"""Ordered SQL migrations, applied once each under an advisory lock (replicas may start together),
then the online conversion of events (hookstream/convert_events.py) and the coming partitions."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from importlib import resources

import psycopg

from hookstream import convert_events
from shared import connections
from workers import archive
from workers.event_partitions import EVENTS, STATUS_HISTORY

LOCK_ID = 0x686F6F6B  # "hook"
ARCHIVE_RETENTION_S = 30 * 86400
EVENTS_RETENTION_S = 400 * 86400

log = logging.getLogger("hookstream.migrate")


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("hookstream") / "migrations"
    files = sorted((entry.name, entry.read_text()) for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return files


def pending(conn: psycopg.Connection, until: str | None = None) -> list[tuple[str, str]]:
    """The migrations not applied yet, up to and including `until` (a file name) when given."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")} if exists and exists[0] else set()
    return [(name, sql) for name, sql in migration_files() if name not in done and (until is None or name <= until)]


def migrate(database_url: str, archive_retention_s: int = ARCHIVE_RETENTION_S,
            events_retention_s: int = EVENTS_RETENTION_S, *, until: str | None = None,
            convert: bool = True, status_history_retention_s: int = EVENTS_RETENTION_S) -> list[str]:
    """Apply what is missing, convert events when a migration asked for it (unless `convert` is
    False), and make the coming partitions; returns the names applied now. `until`: stop after
    that migration (tests start from an older schema)."""
    applied_now: list[str] = []
    with connections.connect(database_url, connections.Role.MIGRATE) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for name, sql in pending(conn, until):
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied_now.append(name)
            if convert:
                convert_events.convert(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
        archive.maintain(conn, archive_retention_s)
        EVENTS.maintain(conn, events_retention_s)
        STATUS_HISTORY.maintain(conn, status_history_retention_s)
    return applied_now


def plan(database_url: str, archive_retention_s: int = ARCHIVE_RETENTION_S,
         events_retention_s: int = EVENTS_RETENTION_S) -> list[str]:
    """What `migrate` would do, as lines, without changing anything."""
    lines: list[str] = []
    with connections.connect(database_url, connections.Role.MIGRATE) as conn:
        names = [name for name, _ in pending(conn)]
        lines += [f"apply migration {name}" for name in names] or ["migrations: up to date"]
        lines += convert_events.plan(conn)
        today = datetime.now(UTC).date()
        for spec, retention_s in ((archive.ARCHIVE, archive_retention_s), (EVENTS, events_retention_s),
                                  (STATUS_HISTORY, events_retention_s)):
            if not spec.is_partitioned(conn):  # not made yet, or events before its conversion (above)
                continue
            create, drop = spec.plan(spec.existing(conn), today, max(1, retention_s // 86400))
            lines += [f"{spec.table}: create partition {spec.name(start)}" for start in create]
            lines += [f"{spec.table}: drop partition {name}" for name in drop]
    return lines
