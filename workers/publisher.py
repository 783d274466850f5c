"""The outbound consent-change feed: committed consent_changes → Redis stream `<prefix>:consent-changes`.

Why publish from Postgres and not from the worker that applied the change: a worker that dies
between its commit and an XADD would lose the change, and one that publishes before committing
could announce a change that is rolled back. Here the committed table is the source and a cursor
says how far it has been published, so a crash anywhere only delays a change.

Why commit order and not `consent_changes.id`: ids are taken when a row is inserted, not when it
commits, so with several workers id 8 can become visible after id 9 was already read, and an
id cursor would skip it for ever. Every row carries its transaction id (`txid`, xid8); we read
in (txid, id) order and only rows whose txid is below `pg_snapshot_xmin(pg_current_snapshot())`,
the oldest transaction still running: every transaction that can still commit has a txid at or
above it (running ones, and any that starts later), so nothing can commit behind the cursor.
The cost: the feed waits for the oldest open write transaction in the cluster (seconds, normally).

Exactly once: the records and the new cursor are written in ONE Redis MULTI/EXEC, guarded by
WATCH on the cursor key. A second publisher that moved the cursor in between makes EXEC fail and
this one re-reads from the new cursor; a crash before EXEC publishes nothing and moves nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import psycopg
from redis import Redis
from redis.exceptions import WatchError

from shared.settings import Settings

log = logging.getLogger("hookstream.publisher")

RECORD_VERSION = 1
# Entries kept in the outbound stream (XADD MAXLEN ~): about 300 bytes each, so ~300 MB at most.
DEFAULT_MAXLEN = 1_000_000
# Publishers that lose the WATCH race re-read; after this many losses the others are publishing.
MAX_ATTEMPTS = 5

# Every committed change after a position, in commit order (see the module docstring).
FEED_SQL = (
    "SELECT id, txid::text, event_key, subject, scope, old_state, new_state, outcome, keyword, provider,"
    " occurred_at, received_at, decided_by FROM consent_changes"
    " WHERE (txid, id) > (%s::text::xid8, %s) AND txid < pg_snapshot_xmin(pg_current_snapshot())"
    " ORDER BY txid, id LIMIT %s"
)


def stream_key(settings: Settings) -> str:
    return f"{settings.key_prefix}:consent-changes"


def cursor_key(settings: Settings) -> str:
    return f"{settings.key_prefix}:consent-changes:cursor"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the feed: the change's transaction id, then its id (ties inside one transaction)."""

    txid: int = 0
    id: int = 0

    def encode(self) -> str:
        return f"{self.txid}-{self.id}"

    @classmethod
    def decode(cls, raw: str | bytes | None) -> Position:
        """The stored cursor; raises ValueError for anything that is not `<txid>-<id>`."""
        if raw is None:
            return cls()
        text = raw.decode() if isinstance(raw, bytes) else raw
        txid, sep, change_id = text.partition("-")
        if not sep or not txid.isdigit() or not change_id.isdigit():
            raise ValueError(f"not a feed position: {text[:40]!r}")
        return cls(int(txid), int(change_id))


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with a `Z`: the one time format of the API and the stream."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Change:
    """One row of consent_changes as the feeds show it (the API as JSON, the stream as fields)."""

    change_id: int
    position: Position
    event_id: str
    subject: str
    scope: str
    old_state: str | None
    new_state: str
    outcome: str
    keyword: str | None
    provider: str
    occurred_at: datetime
    received_at: datetime
    decided_by: str | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Change:
        change_id, txid, event_key, subject, scope, old, new, outcome, keyword, provider, occurred, received, by = row
        return cls(change_id, Position(int(txid), change_id), event_key, subject, scope, old, new, outcome, keyword,
                   provider, occurred, received, by)

    def as_json(self) -> dict[str, Any]:
        return {
            "change_id": self.change_id, "event_id": self.event_id, "subject": self.subject, "scope": self.scope,
            "old_state": self.old_state, "new_state": self.new_state, "outcome": self.outcome,
            "keyword": self.keyword, "provider": self.provider, "occurred_at": iso(self.occurred_at),
            "received_at": iso(self.received_at), "decided_by": self.decided_by,
        }

    def as_fields(self) -> dict[str, str]:
        """The stream record: every value a string, "" for none; `v` is the record format's version."""
        return {"v": str(RECORD_VERSION), **{k: "" if v is None else str(v) for k, v in self.as_json().items()}}


def read_committed(conn: psycopg.Connection[Any], after: Position, limit: int) -> list[Change]:
    """Committed changes after `after`, in commit order, at most `limit`."""
    with conn.transaction():
        rows = conn.execute(FEED_SQL, (str(after.txid), after.id, limit)).fetchall()
    return [Change.from_row(row) for row in rows]


def publish_pending(conn: psycopg.Connection[Any], redis: Redis, settings: Settings, *, limit: int = 1000,
                    maxlen: int = DEFAULT_MAXLEN) -> int:
    """Append the changes committed since the stored cursor; returns how many this call published.

    Safe to call from several processes at once and to interrupt anywhere: each change reaches the
    stream exactly once (as long as Redis keeps the cursor key with the stream).
    """
    stream, cursor = stream_key(settings), cursor_key(settings)
    with redis.pipeline(transaction=True) as pipe:
        for _ in range(MAX_ATTEMPTS):
            try:
                pipe.watch(cursor)
                after = Position.decode(pipe.get(cursor))
                changes = read_committed(conn, after, limit)
                if not changes:
                    pipe.unwatch()
                    return 0
                pipe.multi()
                for change in changes:
                    pipe.xadd(stream, change.as_fields(), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.set(cursor, changes[-1].position.encode())
                pipe.execute()
                return len(changes)
            except WatchError:
                log.debug("another publisher moved the consent feed cursor; reading again")
                continue
    return 0
