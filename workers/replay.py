"""`hookstream replay`: a chosen part of the raw stream (or the archive) again through the current code.

Pages through the source (never all of it in memory) and hands each page to the replay RQ queue,
which workers take only when the live queue is empty, keeping a few pages in flight. Events are
upserted, so a corrected normalizer fixes stored rows; consent changes are keyed by their event
and statuses are monotonic, so nothing is applied twice. `--dry-run` runs the same writes here,
in transactions that are rolled back, and reports what would change.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, TextIO

import psycopg
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.errors import ParseError
from shared.settings import Settings
from shared.streamids import MAX_PART, id_to_tuple
from workers import statistics
from workers.batch import RawEntry, read_archive, replay_entries
from workers.context import WorkerContext

STREAM_JOB = "workers.jobs.replay_stream_batch"
ARCHIVE_JOB = "workers.jobs.replay_archive_batch"
COUNTED = ("entries", "events", "inserted", "updated", "statuses", "consent_changes", "dead_letters")


@dataclass(frozen=True, slots=True)
class Selection:
    """What to replay: a time range and/or a stream id range, optionally one provider/feed."""

    since: datetime | None = None
    until: datetime | None = None
    from_id: str | None = None
    to_id: str | None = None
    provider: str | None = None
    feed: str | None = None

    def __post_init__(self) -> None:
        # A mistyped id is refused before anything is read, not by Redis halfway through.
        for name, stream_id in (("from_id", self.from_id), ("to_id", self.to_id)):
            if stream_id is not None:
                try:
                    id_to_tuple(stream_id)
                except ValueError as exc:
                    raise ParseError(f"{name}: {exc}") from None

    def id_range(self) -> tuple[str, str]:
        """XRANGE bounds: the narrower of the id range and the time range (ids start with ms)."""
        start, end = self.from_id or "-", self.to_id or "+"
        if self.since is not None:
            start = max(start, f"{max(int(self.since.timestamp() * 1000), 0)}-0", key=id_to_tuple)
        if self.until is not None:
            end = min(end, f"{max(int(self.until.timestamp() * 1000) - 1, 0)}-{MAX_PART}", key=id_to_tuple)
        return start, end

    def wants(self, provider: str, feed: str) -> bool:
        return (self.provider in (None, provider)) and (self.feed in (None, feed))


def stream_pages(redis: Redis, stream: str, selection: Selection, page: int) -> Iterator[list[RawEntry]]:
    """Pages of selected entries, in stream order."""
    start, end = selection.id_range()
    while True:
        chunk = redis.xrange(stream, start, end, count=page)
        if not chunk:
            return
        if selection.provider is None and selection.feed is None:
            yield [(sid.decode(), fields) for sid, fields in chunk]
        else:
            yield [(sid.decode(), fields) for sid, fields in chunk
                   if selection.wants(fields.get(b"p", b"").decode(), fields.get(b"f", b"").decode())]
        start = "(" + chunk[-1][0].decode()  # exclusive: after the last one seen


ARCHIVE_PAGE_SQL = (
    "SELECT received_at, stream_id FROM raw_archive WHERE (received_at, stream_id) > (%s, %s)"
    " AND (%s::timestamptz IS NULL OR received_at >= %s) AND (%s::timestamptz IS NULL OR received_at < %s)"
    " AND (%s::text IS NULL OR provider = %s) AND (%s::text IS NULL OR feed = %s)"
    " ORDER BY received_at, stream_id LIMIT %s"
)


def archive_pages(conn: psycopg.Connection[Any], selection: Selection, page: int) -> Iterator[list[tuple[str, str]]]:
    """Pages of (received_at ISO, stream id) keys of selected archive rows, keyset-paginated."""
    after: tuple[Any, str] = (datetime.fromtimestamp(0).astimezone(), "")
    s = selection
    while True:
        rows = conn.execute(ARCHIVE_PAGE_SQL, (*after, s.since, s.since, s.until, s.until, s.provider, s.provider,
                                               s.feed, s.feed, page)).fetchall()
        if not rows:
            return
        yield [(at.isoformat(), sid) for at, sid in rows]
        after = rows[-1]


class Progress:
    """One line on stderr, redrawn: entries done, rate and time left."""

    def __init__(self, total: int | None, out: TextIO = sys.stderr) -> None:
        self.total, self.out, self.started, self.done = total, out, time.monotonic(), 0

    def add(self, count: int) -> None:
        self.done += count
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        line = f"replay: {self.done:,} entries, {rate:,.0f}/s"
        if self.total:
            left = max(self.total - self.done, 0) / max(rate, 1e-6)
            line += f", {100 * self.done / self.total:.0f}% of {self.total:,}, ETA {left:.0f}s"
        self.out.write("\r" + line.ljust(72))
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")


def add_counts(total: dict[str, int], result: dict[str, Any]) -> None:
    for name in COUNTED:
        total[name] = total.get(name, 0) + int(result.get(name, 0))


def run_jobs(redis: Redis, settings: Settings, func: str, pages: Iterator[tuple[Any, ...]], progress: Progress,
             in_flight: int) -> tuple[dict[str, int], int]:
    """Enqueue a job of each page's arguments (the page first) on the replay queue, at most `in_flight`
    at once; (summed results, failed jobs)."""
    queue = Queue(settings.replay_queue, connection=redis, serializer=JSONSerializer)
    total: dict[str, int] = {}
    waiting: list[Job] = []
    failed = 0

    def settle(block_until: int) -> None:
        nonlocal failed
        while len(waiting) > block_until:
            for job in list(waiting):
                status = job.get_status(refresh=True)
                if status == JobStatus.FINISHED:
                    add_counts(total, job.return_value() or {})
                elif status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, None):
                    failed += 1
                else:
                    continue
                waiting.remove(job)
                progress.add(len(job.args[0]))
            if len(waiting) > block_until:
                time.sleep(0.05)

    for args in pages:
        if not args[0]:
            continue
        digest = hashlib.sha1(repr(args).encode()).hexdigest()[:16]
        waiting.append(queue.enqueue_call(func, args=args, job_id=f"replay-{digest}-{time.time_ns()}",
                                          timeout=settings.job_timeout_s, result_ttl=max(settings.result_ttl_s, 600),
                                          failure_ttl=settings.failure_ttl_s))
        settle(in_flight - 1)
    settle(0)
    return total, failed


def replay(ctx: WorkerContext, selection: Selection, *, from_archive: bool = False, dry_run: bool = False,
           page: int | None = None, out: TextIO = sys.stderr) -> dict[str, Any]:
    """Replay the selection; the summary counts entries, events inserted/updated, consent changes…"""
    settings, page = ctx.settings, page or ctx.settings.batch_size
    started = time.monotonic()
    progress = Progress(_estimate(ctx, selection, from_archive), out)
    with ctx.pool.connection() as conn:
        analyzed = statistics.analyze_missing(conn)
        # A stream replay reads the shards one after the other, each in its own order.
        pages: Iterator[list[Any]] = (
            archive_pages(conn, selection, page) if from_archive
            else chain.from_iterable(stream_pages(ctx.redis, shard.stream, selection, page) for shard in ctx.shards))
        if dry_run:
            load: Callable[[list[Any]], list[RawEntry]] = (
                (lambda keys: read_archive(ctx.pool, keys)) if from_archive else (lambda entries: entries))
            total: dict[str, int] = {}
            for chunk in pages:
                add_counts(total, replay_entries(ctx, load(chunk), dry_run=True))
                progress.add(len(chunk))
            failed = 0
        else:
            # Jobs carry ids, never bodies: the worker reads the records itself.
            jobs: Iterator[tuple[Any, ...]] = (
                ((keys,) for keys in archive_pages(conn, selection, page)) if from_archive
                else (([sid for sid, _ in chunk], shard.index) for shard in ctx.shards
                      for chunk in stream_pages(ctx.redis, shard.stream, selection, page)))
            total, failed = run_jobs(ctx.queue_redis, settings, ARCHIVE_JOB if from_archive else STREAM_JOB, jobs,
                                     progress, settings.max_inflight_batches)
    progress.close()
    seconds = time.monotonic() - started
    return {**{name: total.get(name, 0) for name in COUNTED}, "failed_jobs": failed, "dry_run": dry_run,
            "source": "archive" if from_archive else "stream", "analyzed": analyzed, "seconds": round(seconds, 3),
            "entries_per_s": round(total.get("entries", 0) / max(seconds, 1e-6))}


def _estimate(ctx: WorkerContext, selection: Selection, from_archive: bool) -> int | None:
    """How many entries the selection holds, for the ETA (the stream: before the provider filter)."""
    if from_archive:
        with ctx.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM raw_archive WHERE (%s::timestamptz IS NULL OR received_at >= %s)"
                               " AND (%s::timestamptz IS NULL OR received_at < %s)",
                               (selection.since, selection.since, selection.until, selection.until)).fetchone()
        return int(row[0]) if row else None
    start, end = selection.id_range()
    if start == "-" and end == "+":
        return sum(int(ctx.redis.xlen(shard.stream)) for shard in ctx.shards)
    return None
