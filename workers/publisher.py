"""The outbound consent-change feed: committed consent_changes → Redis stream `<prefix>:consent-changes`.

Why publish from Postgres and not from the worker that applied the change: a worker that dies
between its commit and an XADD would lose the change, and one that publishes before committing
could announce a change that is rolled back. Here the committed table is the source and a cursor
says how far it has been published, so a crash anywhere only delays a change.

The changes are read in commit order, never in `consent_changes.id` order: `shared.feed` says
why, and its FEED_SQL is the one statement that reads them (here and in the API).

Exactly once: the records and the new cursor are written in ONE Redis MULTI/EXEC, guarded by
WATCH on the cursor key. A second publisher that moved the cursor in between makes EXEC fail and
this one re-reads from the new cursor; a crash before EXEC publishes nothing and moves nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from redis import Redis
from redis.exceptions import WatchError

from shared.feed import FEED_SQL, Change, Position
from shared.settings import Settings

log = logging.getLogger("hookstream.publisher")

# Entries kept in the outbound stream (XADD MAXLEN ~): about 300 bytes each, so ~300 MB at most.
DEFAULT_MAXLEN = 1_000_000
# Publishers that lose the WATCH race re-read; after this many losses the others are publishing.
MAX_ATTEMPTS = 5


def stream_key(settings: Settings) -> str:
    return f"{settings.key_prefix}:consent-changes"


def cursor_key(settings: Settings) -> str:
    """Beside the stream. On a Redis Cluster its hash tag is the stream's whole name, so that both are
    on one slot (WATCH and MULTI cannot span two); elsewhere the key stays as it always was."""
    if settings.redis_cluster:
        return f"{{{stream_key(settings)}}}:cursor"
    return f"{settings.key_prefix}:consent-changes:cursor"


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
                    pipe.xadd(stream, change.as_fields(), maxlen=maxlen, approximate=True)
                pipe.set(cursor, changes[-1].position.encode())
                pipe.execute()
                return len(changes)
            except WatchError:
                log.debug("another publisher moved the consent feed cursor; reading again")
                continue
    return 0
