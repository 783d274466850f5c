"""The stream consumer: reads the raw stream through a consumer group and enqueues batches to RQ.

Jobs carry stream ids, never bodies. Reading pauses while K batches are queued or running, so
a backlog waits in the stream rather than in RQ. Entries whose job is gone, failed, or finished
without acknowledging are reclaimed after the visibility timeout; after too many deliveries
they become dead letters (`plan_reclaim` decides, from data the I/O around it gathered).
Several dispatchers may run: consumer names are unique, and a claim is atomic, so no entry is
handed out twice at once. The chores between reads (trimming, the consent feed, the archive)
are workers.upkeep's.

With several shards (shared/shards.py) each is a stream with a consumer group of its own; a
dispatcher reads them in turn, one batch at a time (XREADGROUP cannot read two slots of a cluster
at once), and every job names its shard, whose stream its worker reads and acknowledges. Reclaim,
dead letters and trimming go shard by shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from prometheus_client import CollectorRegistry
from redis import Redis
from redis.exceptions import AskError, ClusterError, ReadOnlyError, RedisClusterException, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared import connections
from shared.settings import Settings
from shared.shards import Shard
from shared.streamids import group_lag
from workers.jobs import failed_for_outage
from workers.metrics import DispatchMetrics
from workers.upkeep import Upkeep

log = logging.getLogger("hookstream.dispatch")

PROCESS_JOB = "workers.jobs.process_batch"
DEAD_LETTER_JOB = "workers.jobs.dead_letter_batch"
RECLAIM_SCAN = 1000
# A started job older than its timeout plus this cannot still be running: SimpleWorker's death
# penalty stops it at the timeout, so its worker died (SIGKILL, OOM, lost host).
STARTED_GRACE_S = 5
# A Redis that is away, or a cluster whose slot is failing over (after the client's own retries):
# waited out, never a crash.
REDIS_OUTAGE = (RedisConnectionError, RedisTimeoutError, ClusterError, RedisClusterException, TryAgainError, AskError,
                ReadOnlyError)
# Replies of a Redis that refuses writes for a moment: a primary left without the replicas its
# `min-replicas-to-write` asks for (a failover, a replica restarting), or one whose last save
# failed (`stop-writes-on-bgsave-error`). Waited out like an outage, never a reason to exit.
REFUSED_FOR_NOW = ("NOREPLICAS", "MISCONF")
# With several shards, how long one read waits on one shard before the next is read: an entry on
# another shard waits at most this long (times the shards) when everything is quiet.
SHARD_BLOCK_MS = 100
# How long the dispatcher waits to look again while max_inflight_batches are queued or running. The
# queue then holds several batches of work, so a slot freed is taken well before the workers run
# dry; a shorter wait only costs round trips (each ~25 µs of the dispatcher's CPU and some of Redis's).
FULL_WAIT_S = 0.02


def refused_for_now(exc: ResponseError) -> bool:
    """A reply of REFUSED_FOR_NOW, also when redis-py names the pipeline command it answered."""
    return str(exc).rpartition("caused error: ")[2].startswith(REFUSED_FOR_NOW)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def batch_job_id(ids: list[str], attempt: int = 1, shard: int = 0) -> str:
    """Deterministic per batch (and per delivery, so a retry is a new job, not a clash), and per
    shard: two shards' streams may hold the same ids."""
    digest = hashlib.sha1(",".join(ids).encode()).hexdigest()[:20]
    return f"batch-{shard}-{ids[0]}-{digest}-{attempt}"


def make_queue(name: str, redis: Redis) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer)


# -- the reclaim decision: pure ---------------------------------------------------------------------


class JobState(Enum):
    """Where the job holding an entry stands, as far as its entries are concerned."""

    QUEUED = "queued"  # waiting in the queue (or in a state before it)
    STARTED = "started"  # a live worker runs it
    FAILED = "failed"  # failed for its records' sake, or was stopped or canceled
    OUTAGE = "failed-for-outage"  # failed because Postgres stayed down (workers.jobs marks it)
    FINISHED = "finished"  # done, yet its entries are still pending: it did not acknowledge them
    GONE = "gone"  # no job: expired, deleted, never enqueued, or its worker died

    @property
    def over(self) -> bool:
        """Nothing will acknowledge the job's entries any more: they may be claimed."""
        return self not in (JobState.QUEUED, JobState.STARTED)


@dataclass(frozen=True)
class Claimed:
    stream_id: str
    deliveries: int  # counting the delivery this claim starts
    job_id: str | None  # the job the entry was in, None if it never was in one


@dataclass(frozen=True)
class ReclaimPlan:
    retry: list[Claimed]
    give_up: list[Claimed]  # to the dead letters


def state_of(job_id: str | None, states: Mapping[str, JobState]) -> JobState:
    """An entry that was never in a job, or whose job `states` lacks, has no job: gone."""
    return states.get(job_id, JobState.GONE) if job_id else JobState.GONE


def plan_reclaim(claimed: Sequence[Claimed], states: Mapping[str, JobState], max_deliveries: int) -> ReclaimPlan:
    """Claimed entries go to a new job, or to the dead letters once past `max_deliveries`.

    A delivery whose job failed because Postgres was down says nothing about the record: an
    outage longer than max_deliveries reclaims must not turn healthy records into dead letters,
    so an entry whose job failed for an outage is always retried. An entry whose job is not
    over is not ours to decide and is left out.
    """
    retry: list[Claimed] = []
    give_up: list[Claimed] = []
    for entry in claimed:
        state = state_of(entry.job_id, states)
        if not state.over:
            continue
        spent = entry.deliveries > max_deliveries and state is not JobState.OUTAGE
        (give_up if spent else retry).append(entry)
    return ReclaimPlan(retry, give_up)


def job_state(job: Job | None, *, now: float, run_limit_s: float, taken: set[str]) -> JobState:
    """The state of a fetched job (no round trip). `run_limit_s`: how long a started job may have
    been running before its worker must have died; `taken`: ids of queued-status jobs that are
    neither waiting in the queue nor running."""
    if job is None:
        return JobState.GONE
    status = job.get_status(refresh=False)
    if status == JobStatus.FAILED:
        return JobState.OUTAGE if failed_for_outage(job) else JobState.FAILED
    if status in (JobStatus.STOPPED, JobStatus.CANCELED):
        return JobState.FAILED
    if status == JobStatus.FINISHED:
        return JobState.FINISHED
    if status == JobStatus.STARTED:
        if job.started_at is not None and now - job.started_at.timestamp() > run_limit_s:
            return JobState.GONE
        return JobState.STARTED
    # A worker that died between taking the job off the queue and starting it leaves its status
    # "queued" for good: no longer queued, not running, so gone.
    if status == JobStatus.QUEUED and job.id in taken:
        return JobState.GONE
    return JobState.QUEUED


class Dispatcher:
    """`redis`: the stream's client (reads, claims, trimming); `queue_redis`: RQ's (jobs, their
    states, the entry → job map, the in-flight count), by default the same client. `shards`: by
    default as connections.stream_shards finds them."""

    def __init__(self, settings: Settings, redis: Redis, *, queue_redis: Redis | None = None,
                 shards: tuple[Shard, ...] | None = None, name: str | None = None,
                 metrics: DispatchMetrics | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.shards = shards if shards is not None else connections.stream_shards(settings, redis)
        self._turn = 0
        self.queue_redis = queue_redis if queue_redis is not None else redis
        self.metrics = metrics or DispatchMetrics(CollectorRegistry())
        self.name = name or consumer_name()
        self.queue = make_queue(settings.queue, self.queue_redis)
        self._outage_since: float | None = None
        self._unsent: tuple[Shard, list[str]] | None = None  # read, not yet enqueued (see `step`)

    # -- group -------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create each shard's group at id 0 (never `$`, which would skip what is already there)."""
        for shard in self.shards:
            try:
                self.redis.xgroup_create(shard.stream, self.settings.group, id="0", mkstream=True)
                log.info("created consumer group %s on %s", self.settings.group, shard.stream)
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
        pipe = self.queue_redis.pipeline(transaction=False)
        pipe.llen(self.queue.key)
        pipe.zcount(self.queue.started_job_registry.key, time.time(), "+inf")
        return sum(pipe.execute())

    def read_batch(self, first_block_ms: int = 1000, shard: Shard | None = None) -> list[str]:
        """Up to batch_size new ids of `shard` (default: the first): waits for the first, then at
        most batch_wait_ms for more."""
        s = self.settings
        stream = (shard or self.shards[0]).stream
        ids: list[str] = []
        deadline: float | None = None
        block = first_block_ms
        while len(ids) < s.batch_size:
            reply = self.redis.xreadgroup(s.group, self.name, {stream: ">"}, count=s.batch_size - len(ids),
                                          block=block)
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

    def enqueue(self, ids: list[str], *, shard: Shard | None = None, attempt: int = 1,
                dead_reason: str | None = None) -> Job:
        """One job of `shard`'s (default: the first) entries `ids`; its arguments name the shard."""
        s = self.settings
        shard = shard or self.shards[0]
        job_id = batch_job_id(ids, attempt, shard.index)
        pipe = self.queue_redis.pipeline()
        if dead_reason is None:
            job = self.queue.enqueue_call(PROCESS_JOB, args=(ids, shard.index), job_id=job_id, timeout=s.job_timeout_s,
                                          result_ttl=s.result_ttl_s, failure_ttl=s.failure_ttl_s, pipeline=pipe)
        else:
            job = self.queue.enqueue_call(DEAD_LETTER_JOB, args=(ids, dead_reason, shard.index), job_id=job_id,
                                          timeout=s.job_timeout_s, result_ttl=s.result_ttl_s,
                                          failure_ttl=s.failure_ttl_s, pipeline=pipe)
        # In the same MULTI as the job (RQ opens it), on the queue Redis: the job → entries map is
        # never half-written, and is lost only with the jobs it names (their entries are then gone:
        # reclaimed after the visibility timeout).
        pipe.hset(shard.inflight_key, mapping={sid: job_id for sid in ids})
        pipe.execute()
        self.metrics.batches.inc()
        return job

    # -- reclaiming: the I/O around plan_reclaim ---------------------------------------------------

    def _taken_and_abandoned(self, queued: list[str]) -> set[str]:
        """Of these queued-status jobs, those not in the queue and without a live started entry."""
        if not queued:
            return set()
        pipe = self.queue_redis.pipeline(transaction=False)
        pipe.lrange(self.queue.key, 0, -1)
        pipe.zrangebyscore(self.queue.started_job_registry.key, time.time(), "+inf")  # entries are job_id:execution
        waiting, running = pipe.execute()
        alive = {j.decode() for j in waiting} | {e.decode().rsplit(":", 1)[0] for e in running}
        return {job_id for job_id in queued if job_id not in alive}

    def job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        jobs = dict(zip(job_ids, Job.fetch_many(job_ids, connection=self.queue_redis, serializer=JSONSerializer)))
        taken = self._taken_and_abandoned([job_id for job_id, job in jobs.items()
                                           if job is not None and job.get_status(refresh=False) == JobStatus.QUEUED])
        now, run_limit_s = time.time(), self.settings.job_timeout_s + STARTED_GRACE_S
        return {job_id: job_state(job, now=now, run_limit_s=run_limit_s, taken=taken) for job_id, job in jobs.items()}

    def reclaim(self) -> int:
        """Hand idle entries whose job is over to a new job (or to the dead letters), shard by shard."""
        return sum(self.reclaim_shard(shard) for shard in self.shards)

    def reclaim_shard(self, shard: Shard) -> int:
        s = self.settings
        idle_ms = s.visibility_timeout_s * 1000
        pending = self.redis.xpending_range(shard.stream, s.group, min="-", max="+", count=RECLAIM_SCAN, idle=idle_ms)
        if not pending:
            return 0
        ids = [p["message_id"].decode() for p in pending]
        job_of = {sid: j.decode() if j else None
                  for sid, j in zip(ids, self.queue_redis.hmget(shard.inflight_key, ids))}
        states = self.job_states(sorted({j for j in job_of.values() if j}))
        over = [sid for sid in ids if state_of(job_of[sid], states).over]
        if not over:
            return 0
        claimed = self.redis.xclaim(shard.stream, s.group, self.name, min_idle_time=idle_ms, message_ids=over)
        deliveries = {p["message_id"].decode(): p["times_delivered"] + 1 for p in pending}
        plan = plan_reclaim([Claimed(sid, deliveries.get(sid, 1), job_of.get(sid))
                             for sid in (sid.decode() for sid, _ in claimed)], states, s.max_deliveries)
        for chunk in _chunks(plan.retry, s.batch_size):
            self.enqueue([c.stream_id for c in chunk], shard=shard, attempt=max(c.deliveries for c in chunk))
        for chunk in _chunks(plan.give_up, s.batch_size):
            reason = f"gave up after {s.max_deliveries} deliveries (jobs failed or their workers died)"
            self.enqueue([c.stream_id for c in chunk], shard=shard, attempt=max(c.deliveries for c in chunk),
                         dead_reason=reason)
        self.metrics.reclaimed.inc(len(plan.retry))
        self.metrics.dead_lettered.inc(len(plan.give_up))
        if claimed:
            log.warning("reclaimed %d entries of %s, %d of them to the dead letters", len(claimed), shard.stream,
                        len(plan.give_up))
        return len(claimed)

    def observe_stream(self) -> None:
        """Each shard's length, group lag and pending entries for the gauges (label `shard`)."""
        s, m = self.settings, self.metrics
        m.inflight.set(self.inflight())
        for shard in self.shards:
            length = self.redis.xlen(shard.stream)
            m.length.labels(shard.label).set(length)
            for group in self.redis.xinfo_groups(shard.stream):
                if group["name"].decode() == s.group:
                    newest = self.redis.xrevrange(shard.stream, count=1) if length else []
                    lag = group_lag(group.get("lag"), group["last-delivered-id"],
                                    newest[0][0] if newest else None, length)
                    m.pending.labels(shard.label).set(group["pending"])
                    m.lag.labels(shard.label).set(lag or 0)
            oldest = self.redis.xpending_range(shard.stream, s.group, min="-", max="+", count=1)
            m.oldest_pending_s.labels(shard.label).set(oldest[0]["time_since_delivered"] / 1000 if oldest else 0)

    # -- the loop ----------------------------------------------------------------------------

    def step(self, first_block_ms: int = 1000) -> int:
        """At most one batch, unless enough are in flight. Returns entries enqueued.

        A batch read but not enqueued (the queue Redis went away in between) is enqueued first at
        the next step; should this process die meanwhile, its entries are pending without a job
        and reclaimed after the visibility timeout."""
        if self._unsent is not None:
            shard, ids = self._unsent
            self.enqueue(ids, shard=shard)
            self._unsent = None
            self.metrics.enqueued.inc(len(ids))
            return len(ids)
        if self.inflight() >= self.settings.max_inflight_batches:
            time.sleep(FULL_WAIT_S)
            return 0
        shard = self.shards[self._turn % len(self.shards)]
        self._turn += 1
        ids = self.read_batch(first_block_ms if len(self.shards) == 1 else min(first_block_ms, SHARD_BLOCK_MS), shard)
        if ids:
            self._unsent = (shard, ids)
            self.enqueue(ids, shard=shard)
            self._unsent = None
            self.metrics.enqueued.inc(len(ids))
        return len(ids)

    def _unavailable(self, exc: Exception, backoff: float) -> None:
        """An outage is logged when it starts and when it ends, not at every retry."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("redis unavailable (%s: %s), retrying every %.1f-5 s", type(exc).__name__,
                        str(exc)[:200], backoff)
        else:
            log.debug("redis still unavailable (%s)", type(exc).__name__)

    def _available(self) -> None:
        if self._outage_since is not None:
            log.warning("redis available again after %.1f s", time.monotonic() - self._outage_since)
            self._outage_since = None

    def run(self, stop: threading.Event) -> None:
        log.info("dispatching %s as %s", ", ".join(shard.stream for shard in self.shards), self.name)
        backoff = 0.1
        group_ready = False  # made inside the loop: Redis may be down when the dispatcher starts
        with Upkeep(self.settings, self.redis, self.shards, reclaim=self.reclaim,
                    observe=self.observe_stream) as upkeep:
            while not stop.is_set():
                try:
                    if not group_ready:
                        self.ensure_group()
                        group_ready = True
                    upkeep.run_due()
                    self.step()
                    self._available()
                    backoff = 0.1
                except REDIS_OUTAGE as exc:
                    self._unavailable(exc, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                except ResponseError as exc:
                    if refused_for_now(exc):
                        self._unavailable(exc, backoff)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    if "NOGROUP" not in str(exc):
                        raise
                    # Redis restarted without its data, or a replica promoted before the group reached it.
                    log.warning("consumer group missing (%s), creating it again at 0", str(exc)[:200])
                    group_ready = False


def _chunks(items: list[Claimed], size: int) -> list[list[Claimed]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
