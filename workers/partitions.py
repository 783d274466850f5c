"""Range partitions by time, made ahead and dropped whole behind: the raw archive's days, the events' weeks.

A partition is named `<table>_YYYYMMDD` after its first UTC day and covers `days` days (a week
starts on Monday). Only partitions from the current one on are created ahead; older ones are made
only on purpose (`create_range`, for a conversion's old rows). A partition is never created over
rows the default partition already holds for its range (that would fail): those rows stay in the
default, which is pruned by a DELETE of what is past the retention. Several processes may run this
at once: an advisory lock per table makes them take turns.

Creating or dropping a partition locks the whole table (ACCESS EXCLUSIVE on the parent and on the
default partition), and a lock request queues every later insert behind it: a DROP that waits for
a long reader (a report, pg_dump) would stall the workers' batches for as long. DETACH PARTITION
CONCURRENTLY, which avoids the parent's lock, refuses a table with a default partition. So each
statement runs in a transaction of its own that gives up after LOCK_TIMEOUT_MS, bounding the
pause it can cause; what gave up is done at a later round (partitions are made weeks ahead, and a
late drop only keeps rows a little longer).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import psycopg

from shared import connections

log = logging.getLogger("hookstream.partitions")

# The longest a partition's CREATE or DROP waits for the table's lock, and so the longest the
# inserts queued behind it wait: about one worker batch.
LOCK_TIMEOUT_MS = 100

LIST_SQL = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s")


@dataclass(frozen=True, slots=True)
class TimePartitions:
    table: str  # the partitioned table
    days: int  # 1: a partition per day; 7: per ISO week
    ahead: int  # partitions made ahead of the current one
    default: str  # its default partition
    prefix: str = ""  # of the partitions' names, when not the table's (a table made to be renamed)

    @property
    def lock_id(self) -> int:
        return zlib.crc32(f"partitions:{self.table}".encode())

    def start_of(self, day: date) -> date:
        """The first day of the partition holding `day`."""
        return day - timedelta(days=day.weekday()) if self.days == 7 else day

    def name(self, start: date) -> str:
        return f"{self.prefix or self.table}_{start:%Y%m%d}"

    def start_in(self, name: str) -> date | None:
        """The first day of a partition by its name; None for the default or anything else."""
        found = re.fullmatch(rf"{re.escape(self.prefix or self.table)}_(\d{{8}})", name)
        return datetime.strptime(found.group(1), "%Y%m%d").date() if found else None

    def plan(self, existing: set[str], today: date, retention_days: int) -> tuple[list[date], list[str]]:
        """(starts to create, partitions to drop): pure. A partition goes when its last day is past the
        retention, so rows are kept at least `retention_days` and at most a partition longer."""
        first = self.start_of(today)
        starts = [first + timedelta(days=self.days * n) for n in range(self.ahead + 1)]
        create = [start for start in starts if self.name(start) not in existing]
        oldest_kept = today - timedelta(days=retention_days)
        drop = sorted(name for name in existing if (start := self.start_in(name)) is not None
                      and start + timedelta(days=self.days) <= oldest_kept)
        return create, drop

    def is_partitioned(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (self.table,)).fetchone()
        return row is not None and row[0] == "p"

    def existing(self, conn: psycopg.Connection[Any]) -> set[str]:
        return {row[0] for row in conn.execute(LIST_SQL, (self.table,))}

    def create(self, conn: psycopg.Connection[Any], start: date) -> bool:
        """Make the partition starting `start`, unless the default holds rows of its range (logged)."""
        low = datetime.combine(start, datetime.min.time(), UTC)
        high = low + timedelta(days=self.days)
        held = conn.execute(f"SELECT 1 FROM {self.default} WHERE received_at >= %s AND received_at < %s LIMIT 1",
                            (low, high)).fetchone()
        if held:
            log.error("%s: rows of %s..%s are in %s; that partition is not made", self.table, low.date(),
                      high.date(), self.default)
            return False
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.name(start)} PARTITION OF {self.table}"
                     f" FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')")
        return True

    def drop(self, conn: psycopg.Connection[Any], name: str) -> bool:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        return True

    def create_range(self, conn: psycopg.Connection[Any], first: datetime, last: datetime) -> int:
        """Every partition from the one holding `first` to the one holding `last`; returns how many."""
        made, start, existing = 0, self.start_of(first.astimezone(UTC).date()), self.existing(conn)
        while start <= last.astimezone(UTC).date():
            if self.name(start) not in existing and self.create(conn, start):
                made += 1
            start += timedelta(days=self.days)
        return made

    def maintain(self, conn: psycopg.Connection[Any], retention_s: int, now: datetime | None = None, *,
                 lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> tuple[int, int]:
        """Create the coming partitions and drop the expired ones, each in a transaction of its own
        bounded by `lock_timeout_ms`; returns (created, dropped) this round."""
        now = now or datetime.now(UTC)
        retention_days = max(1, retention_s // 86400)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_id,))
            if not self.is_partitioned(conn):  # not yet converted (hookstream migrate does it)
                return 0, 0
            create, drop = self.plan(self.existing(conn), now.date(), retention_days)
        created = sum(self._locked(conn, lock_timeout_ms, f"create {self.name(start)}",
                                   partial(self.create, conn, start)) for start in create)
        dropped = sum(self._locked(conn, lock_timeout_ms, f"drop {name}", partial(self.drop, conn, name))
                      for name in drop)
        cutoff = datetime.combine(now.date() - timedelta(days=retention_days), datetime.min.time(), UTC)
        with conn.transaction():  # row locks on the default only: no table lock to bound
            conn.execute(f"DELETE FROM {self.default} WHERE received_at < %s", (cutoff,))
        if created or dropped:
            log.info("%s: %d partition(s) created, %d dropped", self.table, created, dropped)
        return created, dropped

    def _locked(self, conn: psycopg.Connection[Any], lock_timeout_ms: int, what: str,
                statement: Callable[[], bool]) -> bool:
        """One DDL statement in its own transaction, after the table's advisory lock, waiting at most
        `lock_timeout_ms` for the table's own lock; False when it did not happen (logged)."""
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_id,))
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
                return statement()
        except psycopg.errors.LockNotAvailable:
            log.warning("%s: %s waited %d ms for the table's lock (a long transaction holds it); tried again"
                        " at the next round", self.table, what, lock_timeout_ms)
            return False

    def maintain_url(self, database_url: str, retention_s: int) -> None:
        """`maintain` on a connection of its own; trouble is logged, never raised (it runs again later)."""
        try:
            with connections.connect(database_url, connections.Role.DISPATCHER) as conn:
                self.maintain(conn, retention_s)
        except psycopg.Error as exc:
            log.warning("%s partition upkeep failed, will retry: %s", self.table, type(exc).__name__)
