"""The raw archive's upkeep: a partition per UTC day made ahead of time, old days dropped whole.

Partitions are named `raw_archive_YYYYMMDD`. Only days from today on are ever created: a row of a
past day that has no partition lives in the default partition, and a partition can never be
created over rows the default already holds. Several processes may run this at once: an advisory
lock makes them take turns.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

log = logging.getLogger("hookstream.archive")

LOCK_ID = 0x61726368  # "arch"
DAYS_AHEAD = 7
PARTITION = re.compile(r"^raw_archive_(\d{8})$")

LIST_SQL = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'raw_archive'")


def partition_name(day: date) -> str:
    return f"raw_archive_{day:%Y%m%d}"


def plan(existing: set[str], today: date, retention_days: int) -> tuple[list[date], list[str]]:
    """(days to create, partitions to drop): pure, so the rules can be tested without a database."""
    create = [today + timedelta(days=n) for n in range(DAYS_AHEAD + 1)
              if partition_name(today + timedelta(days=n)) not in existing]
    oldest_kept = today - timedelta(days=retention_days)
    drop = sorted(name for name in existing
                  if (m := PARTITION.match(name)) and datetime.strptime(m.group(1), "%Y%m%d").date() < oldest_kept)
    return create, drop


def maintain(conn: psycopg.Connection[Any], retention_s: int, now: datetime | None = None) -> tuple[int, int]:
    """Create the coming days' partitions and drop the expired ones; returns (created, dropped)."""
    now = now or datetime.now(UTC)
    retention_days = max(1, retention_s // 86400)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        existing = {row[0] for row in conn.execute(LIST_SQL)}
        create, drop = plan(existing, now.date(), retention_days)
        for day in create:
            start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
            conn.execute(f"CREATE TABLE {partition_name(day)} PARTITION OF raw_archive"
                         f" FOR VALUES FROM ('{start} 00:00+00') TO ('{end} 00:00+00')")
        for name in drop:
            conn.execute(f"DROP TABLE {name}")
        cutoff = datetime.combine(now.date() - timedelta(days=retention_days), datetime.min.time(), UTC)
        conn.execute("DELETE FROM raw_archive_default WHERE received_at < %s", (cutoff,))
    if create or drop:
        log.info("raw archive: %d partition(s) created, %d dropped", len(create), len(drop))
    return len(create), len(drop)


def maintain_url(database_url: str, retention_s: int) -> None:
    """`maintain` on a connection of its own; trouble is logged, never raised (it runs again later)."""
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            maintain(conn, retention_s)
    except psycopg.Error as exc:
        log.warning("raw archive upkeep failed, will retry: %s", type(exc).__name__)
