"""The stream consumer: reads the raw stream through a consumer group and enqueues batches to RQ.

Jobs carry stream ids, never bodies. Reading pauses while K batches are queued or running, so
a backlog waits in the stream rather than in RQ. Entries whose job is gone, failed, or finished
without acknowledging are reclaimed after the visibility timeout; after too many deliveries
they become dead letters. Several dispatchers may run: consumer names are unique, and a claim
is atomic, so no entry is handed out twice at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.settings import Settings
from workers import archive, publisher
from workers.metrics import DispatchMetrics

log = logging.getLogger("hookstream.dispatch")

PROCESS_JOB = "workers.jobs.process_batch"
DEAD_LETTER_JOB = "workers.jobs.dead_letter_batch"
RECLAIM_SCAN = 1000
TRIM_EVERY_S = 60.0
ARCHIVE_EVERY_S = 3600.0
PUBLISH_EVERY_S = 1.0
# A started job older than its timeout plus this cannot still be running: SimpleWorker's death
# penalty stops it at the timeout, so its worker died (SIGKILL, OOM, lost host).
STARTED_GRACE_S = 5
DONE_STATUSES = {JobStatus.FAILED, JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.CANCELED}


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def batch_job_id(ids: list[str], attempt: int = 1) -> str:
    """Deterministic per batch (and per delivery, so a retry is a new job, not a clash)."""
    digest = hashlib.sha1(",".join(ids).encode()).hexdigest()[:20]
    return f"batch-{ids[0]}-{digest}-{attempt}"


def id_to_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def make_queue(name: str, redis: Redis) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer)


class Dispatcher:
    def __init__(self, settings: Settings, redis: Redis, *, name: str | None = None,
                 metrics: DispatchMetrics | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics or DispatchMetrics(CollectorRegistry())
        self.name = name or consumer_name()
        self.queue = make_queue(settings.queue, redis)
        self._last_reclaim = float("-inf")  # due at once: monotonic time may start near 0
        self._last_trim = float("-inf")
        self._last_archive = float("-inf")
        self._last_publish = float("-inf")
        self._database: psycopg.Connection[Any] | None = None

    # -- group -------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the group at id 0 (never `$`, which would skip what is already there)."""
        try:
            self.redis.xgroup_create(self.settings.stream, self.settings.group, id="0", mkstream=True)
            log.info("created consumer group %s", self.settings.group)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- reading and enqueueing --------------------------------------------------------------

    def inflight(self) -> int:
        """Batches queued or running, in one round trip (RQ's registry count would also clean up).

        A started entry's score is its expiry, which the running worker's heartbeat pushes on; the
        entry of a worker that died stays until RQ's 10-minute maintenance. Only live ones count,
        or a few dead workers would stop the reading for minutes.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.queue.key)
        pipe.zcount(self.queue.started_job_registry.key, time.time(), "+inf")
        return sum(pipe.execute())

    def read_batch(self, first_block_ms: int = 1000) -> list[str]:
        """Up to batch_size new ids: waits for the first, then at most batch_wait_ms for more."""
        s = self.settings
        ids: list[str] = []
        deadline: float | None = None
        block = first_block_ms
        while len(ids) < s.batch_size:
            reply = self.redis.xreadgroup(s.group, self.name, {s.stream: ">"}, count=s.batch_size - len(ids), block=block)
            new = [sid.decode() for _, entries in reply for sid, _ in entries]
            if not new and (ids or deadline is not None):
                break
            if not new:
                return ids
            ids += new
            if deadline is None:
                deadline = time.monotonic() + s.batch_wait_ms / 1000
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            block = remaining_ms
        return ids

    def enqueue(self, ids: list[str], *, attempt: int = 1, dead_reason: str | None = None) -> Job:
        s = self.settings
        job_id = batch_job_id(ids, attempt)
        pipe = self.redis.pipeline()
        if dead_reason is None:
            job = self.queue.enqueue_call(PROCESS_JOB, args=(ids,), job_id=job_id, timeout=s.job_timeout_s,
                                          result_ttl=s.result_ttl_s, failure_ttl=s.failure_ttl_s, pipeline=pipe)
        else:
            job = self.queue.enqueue_call(DEAD_LETTER_JOB, args=(ids, dead_reason), job_id=job_id,
                                          timeout=s.job_timeout_s, result_ttl=s.result_ttl_s,
                                          failure_ttl=s.failure_ttl_s, pipeline=pipe)
        # In the same MULTI as the job (RQ opens it): the job → entries map is never half-written.
        pipe.hset(s.inflight_key, mapping={sid: job_id for sid in ids})
        pipe.execute()
        self.metrics.batches.inc()
        return job

    # -- reclaiming --------------------------------------------------------------------------

    def _job_is_done(self, job: Job | None, taken: set[str] | None = None) -> bool:
        """`taken`: ids of queued-status jobs that are neither waiting in the queue nor running."""
        if job is None:
            return True
        status = job.get_status(refresh=False)
        if status in DONE_STATUSES:
            return True
        if status == JobStatus.STARTED and job.started_at is not None:
            age = time.time() - job.started_at.timestamp()
            return age > self.settings.job_timeout_s + STARTED_GRACE_S
        # A worker that died between taking the job off the queue and starting it leaves its
        # status "queued" for good: no longer queued, not running, so over.
        return status == JobStatus.QUEUED and taken is not None and job.id in taken

    def _taken_and_abandoned(self, queued: list[str]) -> set[str]:
        """Of these queued-status jobs, those not in the queue and without a live started entry."""
        if not queued:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(self.queue.key, 0, -1)
        pipe.zrangebyscore(self.queue.started_job_registry.key, time.time(), "+inf")  # entries are job_id:execution
        waiting, running = pipe.execute()
        alive = {j.decode() for j in waiting} | {e.decode().rsplit(":", 1)[0] for e in running}
        return {job_id for job_id in queued if job_id not in alive}

    @staticmethod
    def _failed_for_outage(job: Job | None) -> bool:
        """The job failed with DatabaseUnavailable (workers.batch): Postgres was down, not the records' fault."""
        if job is None or job.get_status(refresh=False) != JobStatus.FAILED:
            return False
        result = job.latest_result()
        return result is not None and "DatabaseUnavailable" in (result.exc_string or "")

    def reclaim(self) -> int:
        """Hand idle entries whose job is over to a new job (or to the dead letters)."""
        s = self.settings
        idle_ms = s.visibility_timeout_s * 1000
        pending = self.redis.xpending_range(s.stream, s.group, min="-", max="+", count=RECLAIM_SCAN, idle=idle_ms)
        if not pending:
            return 0
        ids = [p["message_id"].decode() for p in pending]
        job_ids = [j.decode() if j else None for j in self.redis.hmget(s.inflight_key, ids)]
        unique = sorted({j for j in job_ids if j})
        jobs = dict(zip(unique, Job.fetch_many(unique, connection=self.redis, serializer=JSONSerializer)))
        taken = self._taken_and_abandoned([job_id for job_id, job in jobs.items()
                                           if job is not None and job.get_status(refresh=False) == JobStatus.QUEUED])
        over = [sid for sid, job_id in zip(ids, job_ids)
                if self._job_is_done(jobs.get(job_id) if job_id else None, taken)]
        if not over:
            return 0
        claimed = self.redis.xclaim(s.stream, s.group, self.name, min_idle_time=idle_ms, message_ids=over)
        claimed_ids = [sid.decode() for sid, _ in claimed]
        deliveries = {p["message_id"].decode(): p["times_delivered"] + 1 for p in pending}
        # A delivery that failed because Postgres was down says nothing about the record: an
        # outage longer than max_deliveries reclaims must not turn healthy records into dead letters.
        job_of = dict(zip(ids, job_ids))
        suspects = {job_of[sid] for sid in claimed_ids if deliveries.get(sid, 1) > s.max_deliveries and job_of.get(sid)}
        outage = {job_id for job_id in suspects if self._failed_for_outage(jobs.get(job_id))}
        retry = [sid for sid in claimed_ids if deliveries.get(sid, 1) <= s.max_deliveries or job_of.get(sid) in outage]
        give_up = [sid for sid in claimed_ids if deliveries.get(sid, 1) > s.max_deliveries
                   and job_of.get(sid) not in outage]
        for chunk in _chunks(retry, s.batch_size):
            self.enqueue(chunk, attempt=max(deliveries.get(sid, 1) for sid in chunk))
        for chunk in _chunks(give_up, s.batch_size):
            reason = f"gave up after {s.max_deliveries} deliveries (jobs failed or their workers died)"
            self.enqueue(chunk, attempt=max(deliveries.get(sid, 1) for sid in chunk), dead_reason=reason)
        self.metrics.reclaimed.inc(len(retry))
        self.metrics.dead_lettered.inc(len(give_up))
        if claimed_ids:
            log.warning("reclaimed %d entries, %d of them to the dead letters", len(claimed_ids), len(give_up))
        return len(claimed_ids)

    def observe_stream(self) -> None:
        """Stream length, group lag and pending entries for the gauges."""
        s, m = self.settings, self.metrics
        m.inflight.set(self.inflight())
        m.length.set(self.redis.xlen(s.stream))
        for group in self.redis.xinfo_groups(s.stream):
            if group["name"].decode() == s.group:
                m.pending.set(group["pending"])
                m.lag.set(group.get("lag") or 0)
        oldest = self.redis.xpending_range(s.stream, s.group, min="-", max="+", count=1)
        m.oldest_pending_s.set(oldest[0]["time_since_delivered"] / 1000 if oldest else 0)

    def publish(self) -> int:
        """Committed consent changes to the outbound stream; Postgres trouble waits for the next round."""
        try:
            if self._database is None or self._database.closed:
                self._database = psycopg.connect(self.settings.database_url_or_default(), autocommit=True,
                                                 connect_timeout=5)
            return publisher.publish_pending(self._database, self.redis, self.settings)
        except ValueError as exc:  # a cursor key that is not ours: an operator must look
            log.error("consent feed not published: %s", exc)
            return 0
        except psycopg.Error as exc:
            log.warning("consent feed: postgres unavailable (%s), will retry", type(exc).__name__)
            if self._database is not None:
                self._database.close()
            self._database = None
            return 0

    # -- trimming ----------------------------------------------------------------------------

    def trim_cutoff(self, now_ms: int) -> str | None:
        """The lowest id that must stay: the older of the retention edge and any unacknowledged entry."""
        s = self.settings
        groups = self.redis.xinfo_groups(s.stream)
        if not groups:
            return None
        cutoff = (now_ms - s.stream_retention_s * 1000, 0)
        for group in groups:
            last = id_to_tuple(group["last-delivered-id"].decode())
            cutoff = min(cutoff, (last[0], last[1] + 1))
            if group["pending"]:
                summary = self.redis.xpending(s.stream, group["name"])
                cutoff = min(cutoff, id_to_tuple(summary["min"].decode()))
        return f"{cutoff[0]}-{cutoff[1]}"

    def trim(self) -> int:
        cutoff = self.trim_cutoff(int(time.time() * 1000))
        if cutoff is None:
            return 0
        return int(self.redis.xtrim(self.settings.stream, minid=cutoff, approximate=True))

    # -- the loop ----------------------------------------------------------------------------

    def step(self, first_block_ms: int = 1000) -> int:
        """One round: maintenance when due, then at most one batch. Returns entries enqueued."""
        now = time.monotonic()
        if now - self._last_reclaim >= max(1.0, self.settings.visibility_timeout_s / 4):
            self._last_reclaim = now
            self.reclaim()
            self.observe_stream()
        if now - self._last_trim >= TRIM_EVERY_S:
            self._last_trim = now
            self.trim()
        if now - self._last_publish >= PUBLISH_EVERY_S:
            self._last_publish = now
            self.publish()
        if now - self._last_archive >= ARCHIVE_EVERY_S:
            self._last_archive = now
            archive.maintain_url(self.settings.database_url_or_default(), self.settings.archive_retention_s)
        if self.inflight() >= self.settings.max_inflight_batches:
            time.sleep(0.005)
            return 0
        ids = self.read_batch(first_block_ms)
        if ids:
            self.enqueue(ids)
            self.metrics.enqueued.inc(len(ids))
        return len(ids)

    def run(self, stop: threading.Event) -> None:
        log.info("dispatching %s as %s", self.settings.stream, self.name)
        backoff = 0.1
        group_ready = False  # made inside the loop: Redis may be down when the dispatcher starts
        try:
            while not stop.is_set():
                try:
                    if not group_ready:
                        self.ensure_group()
                        group_ready = True
                    self.step()
                    backoff = 0.1
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning("consumer group missing (Redis restarted?), creating it again")
                    group_ready = False
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    log.warning("redis unavailable (%s), retrying in %.1fs", type(exc).__name__, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            if self._database is not None:
                self._database.close()


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
