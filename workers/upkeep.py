"""What the dispatcher does besides reading: a table of (every_s, task) rows and one small scheduler.

The rows are its own reclaim and gauges (passed in: they belong to the consumer), trimming the
stream, publishing the consent feed, the raw archive's and the events' partitions, and the retention of
the tables that are not partitioned by time (workers/retention.py). Each task is a plain
function or method; the scheduler only decides which are due, so it is tested with a fake clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

import psycopg
from redis import Redis

from shared import connections
from shared.settings import Settings
from shared.shards import Shard, layout
from shared.streamids import id_to_tuple
from workers import archive, expiry, flow_history, publisher
from workers.event_partitions import EVENTS, STATUS_HISTORY
from workers.retention import Retention

log = logging.getLogger("hookstream.upkeep")

TRIM_EVERY_S = 60.0
PUBLISH_EVERY_S = 1.0
ARCHIVE_EVERY_S = 3600.0
EVENTS_PARTITIONS_EVERY_S = 3600.0
# Keys expire at the rate they are made: small rounds often, each bounded (workers/retention.py).
KEYS_RETENTION_EVERY_S = 15.0
STATUS_RETENTION_EVERY_S = 3600.0
EVIDENCE_RETENTION_EVERY_S = 86400.0
RECEIPT_EXPIRY_EVERY_S = 300.0
FLOW_HISTORY_EVERY_S = 60.0

Task = Callable[[], object]
Clock = Callable[[], float]


class Row(NamedTuple):
    every_s: float
    task: Task


class Schedule:
    """Runs each row's task when `every_s` has passed since it last ran, in table order.

    Every row is due at the first call. A row counts as run when its task starts, so a task that
    raises (Redis down) waits its interval like any other instead of running again at every turn;
    the rows after it in that turn stay due and run at the next one.
    """

    def __init__(self, rows: Sequence[Row], clock: Clock = time.monotonic) -> None:
        self.rows = list(rows)
        self._clock = clock
        self._last = [float("-inf")] * len(self.rows)  # -inf, not 0: monotonic time may start near 0

    def run_due(self) -> int:
        """Run the rows that are due; returns how many ran."""
        now = self._clock()
        ran = 0
        for i, row in enumerate(self.rows):
            if now - self._last[i] >= row.every_s:
                self._last[i] = now
                row.task()
                ran += 1
        return ran


# -- trimming -------------------------------------------------------------------------------------


def trim_floor(now_ms: int, retention_s: int, groups: Iterable[tuple[str, str | None]]) -> str:
    """The lowest id that must stay: the retention edge, unless a group still needs older entries.

    `groups`: each group's (last-delivered id, oldest pending id or None). Entries after the last
    delivered one were never read, and pending ones are not yet acknowledged: both stay.
    """
    floor = (now_ms - retention_s * 1000, 0)
    for last_delivered, oldest_pending in groups:
        ms, seq = id_to_tuple(last_delivered)
        floor = min(floor, (ms, seq + 1))
        if oldest_pending is not None:
            floor = min(floor, id_to_tuple(oldest_pending))
    return f"{floor[0]}-{floor[1]}"


def trim_cutoff(redis: Redis, settings: Settings, now_ms: int, stream: str | None = None) -> str | None:
    """`trim_floor` of the groups of `stream` (default: the single stream) as Redis has them now; None
    while the stream has no group."""
    stream = stream or settings.stream
    groups = redis.xinfo_groups(stream)
    if not groups:
        return None
    marks = []
    for group in groups:
        oldest = redis.xpending(stream, group["name"])["min"] if group["pending"] else None
        marks.append((group["last-delivered-id"].decode(), oldest.decode() if oldest else None))
    return trim_floor(now_ms, settings.stream_retention_s, marks)


def trim(redis: Redis, settings: Settings, shards: Sequence[Shard] | None = None) -> int:
    """XTRIM MINID ~ at each shard's cutoff: unprocessed entries are never trimmed. Returns entries removed."""
    removed = 0
    for shard in shards or layout(settings.key_prefix, 1):
        cutoff = trim_cutoff(redis, settings, int(time.time() * 1000), shard.stream)
        if cutoff is not None:
            removed += int(redis.xtrim(shard.stream, minid=cutoff, approximate=True))
    return removed


# -- the consent feed -----------------------------------------------------------------------------


class ConsentFeed:
    """Publishes committed consent changes to the outbound stream (workers.publisher) on a Postgres
    connection of its own, opened when first needed and again after trouble."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self._database: psycopg.Connection[Any] | None = None

    def publish(self) -> int:
        """Changes published; Postgres trouble waits for the next round."""
        try:
            if self._database is None or self._database.closed:
                self._database = connections.connect(self.settings.database_url_or_default(),
                                                     connections.Role.DISPATCHER)
            return publisher.publish_pending(self._database, self.redis, self.settings)
        except ValueError as exc:  # a cursor key that is not ours: an operator must look
            log.error("consent feed not published: %s", exc)
            return 0
        except psycopg.Error as exc:
            log.warning("consent feed: postgres unavailable (%s), will retry", type(exc).__name__)
            self.close()
            return 0

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
        self._database = None


# -- the table ------------------------------------------------------------------------------------


def table(settings: Settings, redis: Redis, feed: ConsentFeed, *, reclaim: Task, observe: Task,
          retention: Retention | None = None, shards: Sequence[Shard] | None = None) -> list[Row]:
    """The rows, in the order they run when several are due."""
    retention = retention or Retention(settings)
    # Several looks per visibility timeout, so an entry waits little past it; at most one a second.
    reclaim_every_s = max(1.0, settings.visibility_timeout_s / 4)
    return [
        Row(reclaim_every_s, reclaim),
        Row(reclaim_every_s, observe),
        Row(TRIM_EVERY_S, partial(trim, redis, settings, shards)),
        Row(PUBLISH_EVERY_S, feed.publish),
        Row(ARCHIVE_EVERY_S, partial(archive.maintain_url, settings.database_url_or_default(),
                                     settings.archive_retention_s)),
        Row(EVENTS_PARTITIONS_EVERY_S, partial(EVENTS.maintain_url, settings.database_url_or_default(),
                                               settings.events_retention_s)),
        Row(EVENTS_PARTITIONS_EVERY_S, partial(STATUS_HISTORY.maintain_url, settings.database_url_or_default(),
                                               settings.status_history_retention_s)),
        Row(KEYS_RETENTION_EVERY_S, retention.event_keys),
        Row(STATUS_RETENTION_EVERY_S, retention.statuses),
        Row(EVIDENCE_RETENTION_EVERY_S, retention.consent_evidence),
        Row(RECEIPT_EXPIRY_EVERY_S, partial(expiry.sweep_url, settings.database_url_or_default(),
                                            settings.receipt_expiry_s)),
        Row(FLOW_HISTORY_EVERY_S, partial(flow_history.sample, redis, settings, shards)),
    ]


class Upkeep:
    """The table on its schedule, and the consent feed's connection it holds until closed."""

    def __init__(self, settings: Settings, redis: Redis, shards: Sequence[Shard] | None = None, *, reclaim: Task,
                 observe: Task, clock: Clock = time.monotonic) -> None:
        self.feed = ConsentFeed(settings, redis)
        self.retention = Retention(settings)
        self.schedule = Schedule(table(settings, redis, self.feed, reclaim=reclaim, observe=observe,
                                       retention=self.retention, shards=shards), clock)

    def run_due(self) -> int:
        return self.schedule.run_due()

    def close(self) -> None:
        self.feed.close()
        self.retention.close()

    def __enter__(self) -> Upkeep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
