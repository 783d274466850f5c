"""One batch, in four named phases: read entries → normalize → write (one transaction) → ack.

Entries are acknowledged only after their batch committed. Connection trouble is retried with
backoff for most of the job's time and then fails the job (the entries stay pending and are
reclaimed); a batch the database refuses is split in halves until the one bad record is found
and dead-lettered.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from redis import Redis
from redis.exceptions import RedisError

from shared import erasure
from shared.consent import REACH_SCOPE
from shared.errors import DatabaseUnavailable
from shared.record import RawRecord
from shared.settings import Settings
from shared.shards import Shard
from shared.streamids import id_to_tuple
from workers import consent
from workers.context import WorkerContext
from workers.metrics import WorkerMetrics, observe_all
from workers.normalize import Entry, NormalizeContext, normalize_entries
from workers.store import WriteResult, write_entries

log = logging.getLogger("hookstream.worker")

RawEntry = tuple[str, Mapping[bytes, bytes]]


def read_entries(redis: Redis, stream: str, ids: list[str]) -> list[RawEntry]:
    """The batch's entries: one XRANGE over its span, then single look-ups for any left out."""
    if not ids:
        return []
    ordered = sorted(ids, key=id_to_tuple)
    wanted = set(ids)
    found: dict[str, Mapping[bytes, bytes]] = {}
    for sid, fields in redis.xrange(stream, ordered[0], ordered[-1], count=len(ids) * 2 + 16):
        key = sid.decode()
        if key in wanted:
            found[key] = fields
    missing = [i for i in ordered if i not in found]
    if missing:
        pipe = redis.pipeline(transaction=False)
        for sid in missing:
            pipe.xrange(stream, sid, sid, count=1)
        for result in pipe.execute():
            for sid, fields in result:
                found[sid.decode()] = fields
    return [(sid, found[sid]) for sid in ordered if sid in found]


def _merge(a: WriteResult, b: WriteResult) -> WriteResult:
    return WriteResult(
        events=a.events + b.events, inserted=a.inserted + b.inserted, updated=a.updated + b.updated,
        statuses=a.statuses + b.statuses,
        consent_changes=a.consent_changes + b.consent_changes, dead_letters=a.dead_letters + b.dead_letters,
        changes=a.changes + b.changes, parked=a.parked + b.parked,
    )


# SQLSTATE classes of the server's own trouble, never of one record: connection exceptions (08),
# insufficient resources such as a full disk or too many connections (53), system errors (58),
# and the serialization failures and deadlocks that a second try resolves (40).
# Class 42 too: a missing table, column or privilege means the schema is not what this code expects
# (new workers started before `hookstream migrate`). Values are bound as parameters, so no record
# can cause one: wait for the deployment to be put right instead of dead-lettering every record.
OUTAGE_CLASSES = ("08", "40", "42", "53", "58", "57P")


def is_outage(exc: BaseException) -> bool:
    """Connection-class failures: the batch waits and is tried again whole. Anything else, database
    error or not (an index row too large, a value jsonb refuses, JSON too deep to serialize), is the
    fault of some record in the batch, and the batch is bisected down to it."""
    if isinstance(exc, (PoolTimeout, psycopg.InterfaceError)):
        return True
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
        return exc.sqlstate.startswith(OUTAGE_CLASSES)
    return isinstance(exc, psycopg.OperationalError)  # no SQLSTATE: the connection itself failed


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        return f"database refused the record: {exc.sqlstate or ''} {str(exc).splitlines()[0] if str(exc) else ''}"
    return f"record could not be written: {type(exc).__name__}: {exc}"


def write_bisecting(pool: ConnectionPool, entries: list[Entry], *, replay: bool = False,
                    wait_s: float | None = None, reach: str = REACH_SCOPE) -> WriteResult:
    """`wait_s`: how long to wait for a pooled connection (None: the pool's own 30 s)."""
    try:
        with pool.connection(timeout=wait_s) as conn, conn.transaction():
            return write_entries(conn, entries, replay=replay, reach=reach)
    except Exception as exc:
        if is_outage(exc):
            raise
        if len(entries) > 1:
            middle = len(entries) // 2
            return _merge(write_bisecting(pool, entries[:middle], replay=replay, wait_s=wait_s, reach=reach),
                          write_bisecting(pool, entries[middle:], replay=replay, wait_s=wait_s, reach=reach))
        return dead_letter(pool, entries[0], _refusal(exc), replay=replay, wait_s=wait_s)


def dead_letter(pool: ConnectionPool, entry: Entry, reason: str, *, replay: bool = False,
                wait_s: float | None = None) -> WriteResult:
    """One record as a dead letter: whole; else its raw bytes only; else parked in Redis (see `park`)."""
    log.warning("dead-lettering %s: %s", entry.stream_id, reason[:300])
    for dead in (entry.as_dead(reason), entry.as_raw_dead(reason)):
        try:
            with pool.connection(timeout=wait_s) as conn, conn.transaction():
                return write_entries(conn, [dead], replay=replay)
        except Exception as exc:
            if is_outage(exc):
                raise
            log.error("dead letter of %s not writable: %s", entry.stream_id, _refusal(exc)[:300])
    return WriteResult(parked=[entry.as_dead(reason)])


def park(redis: Redis, settings: Settings, parked: list[Entry]) -> None:
    """Entries that not even a raw dead letter could hold: copied whole to the parked stream, so that
    acknowledging them loses nothing and no job loops on them."""
    if not parked:
        return
    pipe = redis.pipeline(transaction=False)
    for entry in parked:
        pipe.xadd(settings.parked_stream, {**entry.fields, b"parked_from": entry.stream_id.encode(),
                                           b"parked_reason": (entry.dead_reason or "").encode()[:500]})
    pipe.execute()
    log.error("parked %d entries in %s", len(parked), settings.parked_stream)


def write_with_retry(pool: ConnectionPool, entries: list[Entry], budget_s: float, *,
                     replay: bool = False, reach: str = REACH_SCOPE) -> WriteResult:
    """Retry connection trouble with backoff within `budget_s`, then fail with DatabaseUnavailable.

    Waiting for a pooled connection is bounded by what is left of the budget: the pool's own
    30 s wait would outlast the job, and RQ would kill the job with a timeout instead.
    """
    deadline = time.monotonic() + budget_s
    delay = 0.1
    while True:
        try:
            return write_bisecting(pool, entries, replay=replay, wait_s=max(deadline - time.monotonic(), 0.1),
                                   reach=reach)
        except Exception as exc:
            if not is_outage(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"postgres unavailable for {budget_s:.1f}s: {type(exc).__name__}") from exc
            log.warning("postgres unavailable (%s), retrying in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def observe(metrics: WorkerMetrics, mode: str, entries: list[Entry], result: WriteResult, seconds: float) -> None:
    metrics.batches.labels(mode, "ok").inc()
    metrics.batch_size.observe(len(entries))
    metrics.batch_seconds.observe(seconds)
    committed_at = time.time()
    if mode == "live":
        consent.observe_revocations(metrics.revocation, result.changes, committed_at)
    metrics.observe_events((event for entry in entries for event in entry.events), mode)
    dead = collections.Counter(entry.record.provider if entry.record else "unknown"
                               for entry in entries if entry.dead_reason is not None)
    for provider, count in dead.items():
        metrics.dead_letters.labels(mode, provider).inc(count)
    if mode == "live":
        lags = [max(committed_at - entry.record.received_at_ms / 1000, 0.0)
                for entry in entries if entry.dead_reason is None and entry.record is not None]
        observe_all(metrics.commit_lag, lags)
    for change in result.changes:
        metrics.consent_changes.labels(mode, change["outcome"]).inc()


def ack(redis: Redis, queue_redis: Redis, settings: Settings, shard: Shard, ids: list[str]) -> None:
    """XACK on the shard's stream, then the entries' rows of its entry → job map on the queue Redis.

    The acknowledgement is the one that matters, so it comes first and its failure fails the job
    (the entries stay pending and are reclaimed; their events are keyed, so writing them again
    changes nothing). The map's rows only point at the job: one left behind by a queue Redis that
    failed in between is never read (its entry is no longer pending), so that failure is logged,
    not raised."""
    redis.xack(shard.stream, settings.group, *ids)
    try:
        queue_redis.hdel(shard.inflight_key, *ids)
    except RedisError as exc:
        log.warning("acknowledged %d entries, but the queue Redis kept their job rows (%s)", len(ids),
                    type(exc).__name__)


def run_batch(ctx: WorkerContext, ids: list[str], *, shard: int = 0, dead_reason: str | None = None) -> dict[str, Any]:
    """Process entries `ids` of shard `shard` and acknowledge them; with `dead_reason`, dead-letter them all."""
    started = time.perf_counter()
    stream = ctx.shard(shard)
    entries = normalize_batch(read_entries(ctx.redis, stream.stream, ids), ctx.normalize, dead_reason)
    result = write_with_retry(ctx.pool, entries, ctx.settings.job_timeout_s * 0.8, reach=ctx.settings.opt_out_reach)
    park(ctx.redis, ctx.settings, result.parked)
    observe(ctx.metrics, "live", entries, result, time.perf_counter() - started)
    ack(ctx.redis, ctx.queue_redis, ctx.settings, stream, ids)
    erasure.erase_committed(ctx.redis, ctx.pool.connection, stream.stream, ids)
    return result.summary(entries=len(entries), missing=len(ids) - len(entries),
                          seconds=round(time.perf_counter() - started, 4))


def replay_entries(ctx: WorkerContext, raw: list[RawEntry], *, dry_run: bool = False) -> dict[str, Any]:
    """Entries again through the current normalizers: events upserted, nothing acknowledged.

    Consent changes (keyed by their event) and statuses (monotonic) are never applied twice.
    A dry run does all the same work in a transaction that is rolled back.
    """
    started = time.perf_counter()
    entries = normalize_batch(raw, ctx.normalize)
    if dry_run:
        with ctx.pool.connection() as conn, conn.transaction(force_rollback=True):
            result = write_entries(conn, entries, replay=True, reach=ctx.settings.opt_out_reach)
    else:
        result = write_with_retry(ctx.pool, entries, ctx.settings.job_timeout_s * 0.8, replay=True,
                                  reach=ctx.settings.opt_out_reach)
        observe(ctx.metrics, "replay", entries, result, time.perf_counter() - started)
    return result.summary(entries=len(entries), seconds=round(time.perf_counter() - started, 4))


def read_archive(pool: ConnectionPool, keys: list[tuple[str, str]]) -> list[RawEntry]:
    """Archived records by (received_at ISO, stream id), rebuilt into stream fields, in stream order."""
    sql = ("SELECT received_at, stream_id, provider, feed, method, query, content_type, headers, client, body,"
           " version FROM raw_archive WHERE (received_at, stream_id) IN"
           " (SELECT * FROM unnest(%s::timestamptz[], %s::text[])) ORDER BY received_at, stream_id")
    with pool.connection() as conn:
        rows = conn.execute(sql, ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    return [(sid, RawRecord(provider, feed, method, bytes(query), content_type, headers, client,
                            round(at.timestamp() * 1000), bytes(body), version).to_fields())
            for at, sid, provider, feed, method, query, content_type, headers, client, body, version in rows]


def normalize_batch(raw: list[RawEntry], ctx: NormalizeContext, dead_reason: str | None = None) -> list[Entry]:
    entries = normalize_entries(raw, ctx)
    if dead_reason is not None:
        entries = [entry.as_dead(dead_reason) for entry in entries]
    return entries
