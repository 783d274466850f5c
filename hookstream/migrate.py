"""Ordered SQL migrations, applied once each under an advisory lock (replicas may start together)."""

from __future__ import annotations

from importlib import resources

import psycopg

from workers import archive

LOCK_ID = 0x686F6F6B  # "hook"


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("hookstream") / "migrations"
    files = sorted((entry.name, entry.read_text()) for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return files


def migrate(database_url: str, archive_retention_s: int = 30 * 86400) -> list[str]:
    """Apply what is missing and make the raw archive's coming partitions; returns the names applied now."""
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for name, sql in migration_files():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied_now.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
        archive.maintain(conn, archive_retention_s)
    return applied_now
