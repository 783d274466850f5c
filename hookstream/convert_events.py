"""Converting an unpartitioned `events` into the weekly-partitioned one, online.

Migration 005 made `events_next` (partitioned, no unique key) and `event_keys`. The workers keep
writing into `events` by name throughout: their keys go into event_keys first, and the old table's
unique key still skips an old event whose key is not copied yet (workers/store.py). This module:

1. makes the weekly partitions the old rows need;
2. installs a trigger mirroring UPDATEs and DELETEs of old rows (a replay) into events_next;
3. copies rows in id order, a batch per transaction, each batch's keys into event_keys (the
   earliest receive time wins: a redelivery during the conversion may have claimed a key first);
   a batch reads its rows FOR SHARE, so an update committing meanwhile is copied, not lost;
   it copies only up to an id every writer has committed: that bound is read under a SHARE lock,
   which waits for the writes in flight and holds new ones for an instant;
4. swaps under a short ACCESS EXCLUSIVE lock: the last rows copied, the old table dropped,
   events_next renamed to events, the view consent_review made again on it.

Every step is resumable: progress is a row of events_conversion, in the copying transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from workers.event_partitions import EVENTS_NEXT, WEEKS_AHEAD
from workers.store import EVENT_COLUMNS

log = logging.getLogger("hookstream.migrate")

BATCH_IDS = 20_000
SWAP_WHEN_LEFT = BATCH_IDS  # rows left when the last ones are copied under the swap's lock
LOCK_TIMEOUT = "5s"  # a lock the conversion waits for longer than this is tried again later

COLUMNS = ("id", *EVENT_COLUMNS, "created_at", "updated_at")
_LIST = ", ".join(COLUMNS)

COPY_SQL = (
    f"INSERT INTO events_next ({_LIST}) OVERRIDING SYSTEM VALUE"
    f" SELECT {_LIST} FROM events WHERE id > %s AND id <= %s ORDER BY id FOR SHARE"
)
KEYS_SQL = (
    "INSERT INTO event_keys (dedupe_key, received_at)"
    " SELECT dedupe_key, received_at FROM events WHERE id > %s AND id <= %s"
    " ON CONFLICT (dedupe_key) DO UPDATE SET received_at = excluded.received_at"
    " WHERE event_keys.received_at > excluded.received_at"
)
PROGRESS_SQL = "UPDATE events_conversion SET copied_to = %s"

_MIRRORED = [c for c in COLUMNS if c != "id"]
MIRROR_SQL = f"""
CREATE OR REPLACE FUNCTION events_conversion_mirror() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM events_next WHERE received_at = OLD.received_at AND dedupe_key = OLD.dedupe_key;
        RETURN OLD;
    END IF;
    UPDATE events_next SET ({", ".join(_MIRRORED)}) = ({", ".join(f"NEW.{c}" for c in _MIRRORED)})
        WHERE received_at = OLD.received_at AND dedupe_key = OLD.dedupe_key;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS events_conversion_mirror ON events;
CREATE TRIGGER events_conversion_mirror AFTER UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_conversion_mirror();
"""

# The queue of 004, on the new table (a view is bound to the table it was made on, not its name).
REVIEW_VIEW_SQL = """
CREATE VIEW consent_review AS
    SELECT e.id, e.dedupe_key AS event_key, e.provider, e.phone AS subject, e.scope, e.body, e.keyword,
           e.occurred_at, e.received_at
    FROM events e
    WHERE e.keyword_outcome = 'possible_opt_out'
      AND NOT EXISTS (SELECT 1 FROM review_decisions d WHERE d.event_key = e.dedupe_key)
"""
SWAP_SQL = [
    "DROP TRIGGER events_conversion_mirror ON events",
    "DROP FUNCTION events_conversion_mirror()",
    "DROP VIEW consent_review",
    "DROP TABLE events",
    "ALTER TABLE events_next RENAME TO events",
    "ALTER SEQUENCE events_next_id_seq RENAME TO events_id_seq",
    "ALTER TABLE events_next_default RENAME TO events_default",
    "ALTER INDEX events_next_received_at RENAME TO events_received_at",
    "ALTER INDEX events_next_phone RENAME TO events_phone",
    "ALTER INDEX events_next_review_queue RENAME TO events_review_queue",
    "ALTER INDEX events_next_review_key RENAME TO events_review_key",
    REVIEW_VIEW_SQL,
    "DROP TABLE events_conversion",
]


@dataclass
class Conversion:
    """What `convert` found and did; `steps` is what `--plan` prints."""

    rows: int = 0  # the old table's rows (the planner's estimate)
    max_id: int = 0
    copied: int = 0
    partitions: int = 0
    steps: list[str] | None = None


def needed(conn: psycopg.Connection[Any]) -> bool:
    """True while events is the unpartitioned table and events_next waits to replace it."""
    row = conn.execute("SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass('events')),"
                       " to_regclass('events_next') IS NOT NULL").fetchone()
    return row is not None and row[0] == "r" and bool(row[1])


def plan(conn: psycopg.Connection[Any]) -> list[str]:
    """The conversion's steps for this database, read without changing anything."""
    if conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('events')").fetchone() != ("r",):
        return []
    rows, first, last, max_id = conn.execute(  # rows: the planner's estimate (-1 before any ANALYZE)
        "SELECT (SELECT reltuples::bigint FROM pg_class WHERE oid = 'events'::regclass),"
        " min(received_at), max(received_at), max(id) FROM events").fetchone() or (0, None, None, 0)
    now = datetime.now(UTC)
    weeks = _weeks(first or now, now + timedelta(weeks=WEEKS_AHEAD))
    return [
        f"events: convert about {rows if rows > 0 else max_id or 0:,} rows (ids up to {max_id or 0:,})"
        " into weekly partitions",
        f"  make {weeks} weekly partition(s) of events_next from the week of"
        f" {(first or now).date().isoformat()} to {WEEKS_AHEAD} week(s) ahead",
        "  mirror updates and deletes of old rows into events_next (a trigger, until the swap)",
        f"  copy rows and fill event_keys in batches of {BATCH_IDS:,} ids behind live traffic",
        f"  swap under an ACCESS EXCLUSIVE lock (timeout {LOCK_TIMEOUT}, tried again): last rows copied,"
        " old table dropped, events_next renamed to events, consent_review made again",
    ]


def _weeks(first: datetime, last: datetime) -> int:
    start = EVENTS_NEXT.start_of(first.astimezone(UTC).date())
    return (last.astimezone(UTC).date() - start).days // 7 + 1


def convert(conn: psycopg.Connection[Any], *, batch: int = BATCH_IDS,
            between_batches: Callable[[], None] | None = None) -> Conversion:
    """Convert events (autocommit connection); a no-op when done. `between_batches`: tests slow it down."""
    done = Conversion()
    if not needed(conn):
        return done
    first = conn.execute("SELECT min(received_at) FROM events").fetchone()
    now = datetime.now(UTC)
    with conn.transaction():
        done.partitions = EVENTS_NEXT.create_range(conn, first[0] if first and first[0] else now,
                                                   now + timedelta(weeks=WEEKS_AHEAD))
    _locked(conn, lambda: conn.execute(MIRROR_SQL))
    log.info("events: converting online, %d partition(s) made", done.partitions)
    while True:
        copied_to = _copied_to(conn)
        bound = _locked(conn, lambda: _committed_max(conn), mode="SHARE")
        done.max_id = bound
        if bound - copied_to <= SWAP_WHEN_LEFT:
            break
        while copied_to < bound:
            upper = min(copied_to + batch, bound)
            with conn.transaction():
                done.copied += _copy(conn, copied_to, upper)
            copied_to = upper
            if between_batches is not None:
                between_batches()
        log.info("events: copied up to id %d", copied_to)
    done.copied += _locked(conn, lambda: _swap(conn), mode="ACCESS EXCLUSIVE")
    log.info("events: converted, %d row(s) copied", done.copied)
    return done


def _copy(conn: psycopg.Connection[Any], low: int, high: int) -> int:
    copied = conn.execute(COPY_SQL, (low, high)).rowcount
    conn.execute(KEYS_SQL, (low, high))
    conn.execute(PROGRESS_SQL, (high,))
    return max(copied, 0)


def _copied_to(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT copied_to FROM events_conversion").fetchone()
    return int(row[0]) if row else 0


def _committed_max(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
    return int(row[0]) if row else 0


def _swap(conn: psycopg.Connection[Any]) -> int:
    copied_to, last = _copied_to(conn), _committed_max(conn)
    copied = _copy(conn, copied_to, last) if last > copied_to else 0
    conn.execute("SELECT setval(pg_get_serial_sequence('events_next', 'id'), greatest(%s, 1))", (last,))
    for sql in SWAP_SQL:
        conn.execute(sql)
    return copied


def _locked(conn: psycopg.Connection[Any], work: Callable[[], Any], mode: str = "SHARE ROW EXCLUSIVE") -> Any:
    """`work` in a transaction holding a lock on events, with a lock timeout so that live writes
    never queue behind it for long; tried again until it gets the lock."""
    while True:
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                conn.execute(f"LOCK TABLE events IN {mode} MODE")
                return work()
        except psycopg.errors.LockNotAvailable:
            log.warning("events: lock %s not granted within %s, trying again", mode, LOCK_TIMEOUT)
            time.sleep(1)
