"""The raw archive's upkeep: a partition per UTC day made ahead of time, old days dropped whole.

Partitions are named `raw_archive_YYYYMMDD`; the rules are those of every time-partitioned table
(workers/partitions.py).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import psycopg

from workers.partitions import TimePartitions

DAYS_AHEAD = 7
ARCHIVE = TimePartitions("raw_archive", days=1, ahead=DAYS_AHEAD, default="raw_archive_default")

LIST_SQL = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'raw_archive'")


def partition_name(day: date) -> str:
    return ARCHIVE.name(day)


def plan(existing: set[str], today: date, retention_days: int) -> tuple[list[date], list[str]]:
    """(days to create, partitions to drop): pure, so the rules can be tested without a database."""
    return ARCHIVE.plan(existing, today, retention_days)


def maintain(conn: psycopg.Connection[Any], retention_s: int, now: datetime | None = None) -> tuple[int, int]:
    """Create the coming days' partitions and drop the expired ones; returns (created, dropped)."""
    return ARCHIVE.maintain(conn, retention_s, now)


def maintain_url(database_url: str, retention_s: int) -> None:
    """`maintain` on a connection of its own; trouble is logged, never raised (it runs again later)."""
    ARCHIVE.maintain_url(database_url, retention_s)
