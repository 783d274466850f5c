"""The RQ job functions: small, importable, JSON-serializable arguments (stream ids, never bodies).

A batch job that fails because Postgres stayed down says so in its RQ meta before the failure
propagates: the dispatcher reads that mark, not the traceback, to tell an outage from a bad
record. The mark is saved while the job still runs, so it is in Redis before RQ records the job
as failed, and RQ's own saves of the job leave meta alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rq import get_current_job
from rq.job import Job

from shared.errors import DatabaseUnavailable
from workers import context
from workers.batch import read_archive, read_entries, replay_entries, run_batch

OUTAGE_MARK = "failed_for_outage"


def mark_outage(job: Job) -> None:
    job.meta[OUTAGE_MARK] = True
    job.save_meta()  # type: ignore[no-untyped-call]  # rq is unannotated


def failed_for_outage(job: Job) -> bool:
    """The job's failure was Postgres being down, not its records (meta as fetched, no round trip)."""
    return bool(job.meta.get(OUTAGE_MARK))


@contextmanager
def outage_marked() -> Iterator[None]:
    """Mark the running job when DatabaseUnavailable leaves it; outside a job, just let it pass."""
    try:
        yield
    except DatabaseUnavailable:
        job = get_current_job()
        if job is not None:
            mark_outage(job)
        raise


def process_batch(ids: list[str], shard: int = 0) -> dict[str, Any]:
    """Entries `ids` of the stream of shard `shard` (jobs enqueued before shards existed have none: 0)."""
    with outage_marked():
        return run_batch(context.current(), ids, shard=shard)


def dead_letter_batch(ids: list[str], reason: str, shard: int = 0) -> dict[str, Any]:
    """Entries that failed too many deliveries: stored as dead letters with the raw record."""
    with outage_marked():
        return run_batch(context.current(), ids, shard=shard, dead_reason=reason)


def replay_stream_batch(ids: list[str], shard: int = 0) -> dict[str, Any]:
    ctx = context.current()
    return replay_entries(ctx, read_entries(ctx.redis, ctx.shard(shard).stream, ids))


def replay_archive_batch(keys: list[list[str]]) -> dict[str, Any]:
    """`keys`: [received_at ISO-8601, stream id] pairs of raw_archive rows."""
    ctx = context.current()
    return replay_entries(ctx, read_archive(ctx.pool, [(k[0], k[1]) for k in keys]))
