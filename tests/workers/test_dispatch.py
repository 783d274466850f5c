"""The dispatcher: the reclaim decision as a pure function, then against a real Redis: batches,
the group's life, reclaim, dead letters, and a Postgres outage that never makes dead letters."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from redis.exceptions import ResponseError
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.errors import DatabaseUnavailable
from shared.record import RawRecord
from shared.settings import Settings
from tests.providers.util import record
from tests.workers.conftest import entries_enqueued, run_workers
from workers import dispatch, jobs
from workers.context import WorkerContext
from workers.dispatch import (
    DEAD_LETTER_JOB,
    PROCESS_JOB,
    Claimed,
    Dispatcher,
    JobState,
    batch_job_id,
    job_state,
    plan_reclaim,
)

integration = pytest.mark.integration

MX2 = b'{"subscriberId": "s1", "cguid": "c1", "status": "sent", "datetime": "2024-03-25 20:01:58"}'


def append(client: redis.Redis, settings: Settings, count: int, body: bytes = MX2) -> list[str]:
    rec: RawRecord = record("mx2", "webhook", body)
    return [client.xadd(settings.stream, rec.to_fields()).decode() for _ in range(count)]  # type: ignore[arg-type]


# -- plan_reclaim and job_state: pure ------------------------------------------------------------------


def claimed(deliveries: int, job_id: str | None = "job") -> Claimed:
    return Claimed(f"1-{deliveries}", deliveries, job_id)


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.FINISHED, JobState.GONE, JobState.OUTAGE])
def test_an_entry_whose_job_is_over_is_retried_up_to_max_deliveries(state: JobState) -> None:
    entries = [claimed(1), claimed(2), claimed(3)]
    plan = plan_reclaim(entries, {"job": state}, max_deliveries=3)
    assert plan.retry == entries and plan.give_up == []


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.FINISHED, JobState.GONE])
def test_past_max_deliveries_an_entry_is_given_up(state: JobState) -> None:
    plan = plan_reclaim([claimed(3), claimed(4)], {"job": state}, max_deliveries=3)
    assert plan.retry == [claimed(3)] and plan.give_up == [claimed(4)]


def test_a_delivery_failed_by_an_outage_never_counts_toward_giving_up() -> None:
    entries = [claimed(50, "down"), claimed(50, "broke")]
    plan = plan_reclaim(entries, {"down": JobState.OUTAGE, "broke": JobState.FAILED}, max_deliveries=3)
    assert plan.retry == [claimed(50, "down")] and plan.give_up == [claimed(50, "broke")]


def test_entries_without_a_job_count_as_gone() -> None:
    never_enqueued, expired = claimed(9, None), claimed(9, "expired")
    plan = plan_reclaim([never_enqueued, expired], {}, max_deliveries=3)
    assert plan.give_up == [never_enqueued, expired]


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.STARTED])
def test_an_entry_whose_job_is_live_is_left_to_it(state: JobState) -> None:
    plan = plan_reclaim([claimed(1), claimed(9)], {"job": state}, max_deliveries=3)
    assert plan.retry == [] and plan.give_up == []


# A client that cannot connect: job_state must make no round trip.
NO_REDIS = redis.Redis(unix_socket_path="/nonexistent/redis.sock")
NOW = datetime(2024, 3, 25, 20, 0, tzinfo=UTC)


def fetched(status: JobStatus, *, started_s_ago: float | None = None, outage: bool = False) -> Job:
    """A job as Job.fetch hands it over: status, start time and meta, never saved."""
    made = Job.create(PROCESS_JOB, args=(["1-0"],), id="j", status=status, connection=NO_REDIS,
                      serializer=JSONSerializer, meta={jobs.OUTAGE_MARK: True} if outage else None)
    if started_s_ago is not None:
        made.started_at = NOW - timedelta(seconds=started_s_ago)
    return made


@pytest.mark.parametrize(("made", "taken", "expected"), [
    (None, set(), JobState.GONE),
    (fetched(JobStatus.QUEUED), set(), JobState.QUEUED),
    (fetched(JobStatus.QUEUED), {"j"}, JobState.GONE),  # taken off the queue by a worker that then died
    (fetched(JobStatus.DEFERRED), set(), JobState.QUEUED),
    (fetched(JobStatus.STARTED, started_s_ago=5), set(), JobState.STARTED),
    (fetched(JobStatus.STARTED, started_s_ago=50), set(), JobState.GONE),  # past its timeout: its worker died
    (fetched(JobStatus.FINISHED), set(), JobState.FINISHED),
    (fetched(JobStatus.FAILED), set(), JobState.FAILED),
    (fetched(JobStatus.FAILED, outage=True), set(), JobState.OUTAGE),
    (fetched(JobStatus.STOPPED), set(), JobState.FAILED),
    (fetched(JobStatus.CANCELED), set(), JobState.FAILED),
])
def test_job_state(made: Job | None, taken: set[str], expected: JobState) -> None:
    assert job_state(made, now=NOW.timestamp(), run_limit_s=35, taken=taken) is expected


# -- against Redis ---------------------------------------------------------------------------------------


@integration
def test_entries_from_before_the_group_exists_are_delivered(settings: Settings, redis_client: redis.Redis) -> None:
    ids = append(redis_client, settings, 3)
    dispatcher = Dispatcher(settings, redis_client)
    dispatcher.ensure_group()
    dispatcher.ensure_group()  # idempotent
    assert dispatcher.read_batch(first_block_ms=1) == ids


@integration
def test_batches_are_bounded_and_jobs_carry_ids_only(settings: Settings, redis_client: redis.Redis,
                                                     dispatcher: Dispatcher) -> None:
    append(redis_client, settings, 120)
    first = dispatcher.read_batch(first_block_ms=1)
    assert len(first) == settings.batch_size
    job = dispatcher.enqueue(first)
    assert job.id == batch_job_id(first, 1, 0) and job.args == (first, 0)  # the ids and the shard
    raw = redis_client.hget(f"rq:job:{job.id}", "data")
    assert raw is not None
    assert json.loads(zlib.decompress(raw))[2] == [first, 0]  # JSON with the ids, never a pickle of bodies
    assert job.result_ttl == settings.result_ttl_s and job.failure_ttl == settings.failure_ttl_s
    assert job.timeout == settings.job_timeout_s


@integration
def test_the_group_comes_back_after_it_vanished(settings: Settings, redis_client: redis.Redis) -> None:
    dispatcher = Dispatcher(settings, redis_client)
    stop = threading.Event()
    runner = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while not redis_client.exists(settings.stream) and time.monotonic() < deadline:
            time.sleep(0.01)
        redis_client.xgroup_destroy(settings.stream, settings.group)  # as after a Redis restart without data
        append(redis_client, settings, 2)
        deadline = time.monotonic() + 10
        while entries_enqueued(dispatcher) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert entries_enqueued(dispatcher) == 2
    finally:
        stop.set()
        runner.join(5)
    assert not runner.is_alive()


@integration
def test_reclaim_takes_orphans_and_failed_jobs_never_queued_ones(settings: Settings, redis_client: redis.Redis,
                                                                  dispatcher: Dispatcher) -> None:
    ids = append(redis_client, settings, 2)
    assert dispatcher.read_batch(first_block_ms=1) == ids
    first = dispatcher.enqueue(ids[:1])  # the second was read but never enqueued (a dispatcher died)
    time.sleep(settings.visibility_timeout_s + 0.1)
    assert dispatcher.reclaim() == 1, "the orphan comes back"
    time.sleep(settings.visibility_timeout_s + 0.1)
    assert dispatcher.reclaim() == 0, "a queued job keeps its entries, however long it waits"
    first.set_status("failed")
    assert dispatcher.reclaim() == 1
    assert Queue(settings.queue, connection=redis_client, serializer=JSONSerializer).count == 3
    assert redis_client.hget(settings.inflight_key, ids[0]) == batch_job_id([ids[0]], 2).encode()


@integration
def test_after_max_deliveries_an_entry_becomes_a_dead_letter(settings: Settings, redis_client: redis.Redis,
                                                             worker_context: WorkerContext,
                                                             db: psycopg.Connection) -> None:
    settings = dataclasses.replace(settings, max_deliveries=2)
    dispatcher = Dispatcher(settings, redis_client, name="d")
    dispatcher.ensure_group()
    [sid] = append(redis_client, settings, 1)
    job = dispatcher.enqueue(dispatcher.read_batch(first_block_ms=1))
    for _ in range(3):  # every job of this entry is lost (its worker died and the job expired)
        Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer).delete()
        time.sleep(settings.visibility_timeout_s + 0.1)
        assert dispatcher.reclaim() == 1
        job_id = redis_client.hget(settings.inflight_key, sid)
        assert job_id is not None
        job = Job.fetch(job_id.decode(), connection=redis_client, serializer=JSONSerializer)
        if job.func_name.endswith("dead_letter_batch"):
            break
    assert job.func_name.endswith("dead_letter_batch")
    run_workers(settings, redis_client)
    [(stream_id, reason, body)] = db.execute("SELECT stream_id, reason, body FROM dead_letters").fetchall()
    assert stream_id == sid and "gave up after 2 deliveries" in reason and bytes(body) == MX2
    assert db.execute("SELECT count(*) FROM events").fetchone() == (0,)
    assert redis_client.xpending(settings.stream, settings.group)["pending"] == 0


@integration
@pytest.mark.parametrize(("failure", "outcome"), [(DatabaseUnavailable, PROCESS_JOB), (ValueError, DEAD_LETTER_JOB)])
def test_deliveries_failed_by_a_postgres_outage_never_make_dead_letters(
        settings: Settings, redis_client: redis.Redis, worker_context: WorkerContext, db: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch, failure: type[Exception], outcome: str) -> None:
    settings = dataclasses.replace(settings, max_deliveries=2, visibility_timeout_s=0)
    dispatcher = Dispatcher(settings, redis_client, name="outage")
    dispatcher.ensure_group()
    append(redis_client, settings, 2)
    ids = dispatcher.read_batch(first_block_ms=1)

    def fail(*args: object, **kwargs: object) -> None:
        raise failure("postgres unavailable for 8.0s: PoolTimeout" if failure is DatabaseUnavailable else "a bug")

    monkeypatch.setattr(jobs, "run_batch", fail)
    job = dispatcher.enqueue(ids)
    for _ in range(4):  # deliveries 2 to 5: beyond max_deliveries, each failed by a real worker
        run_workers(settings, redis_client)
        failed = Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer)
        assert failed.get_status() == JobStatus.FAILED
        assert jobs.failed_for_outage(failed) is (failure is DatabaseUnavailable), "the job marks its own outage"
        assert dispatcher.reclaim() == len(ids)
        job_id = redis_client.hget(settings.inflight_key, ids[0])
        assert job_id is not None
        job = Job.fetch(job_id.decode(), connection=redis_client, serializer=JSONSerializer)
        if job.func_name == DEAD_LETTER_JOB:
            break
    assert job.func_name == outcome
    monkeypatch.undo()  # Postgres is back (or the bug is fixed)
    run_workers(settings, redis_client)
    assert redis_client.xpending(settings.stream, settings.group)["pending"] == 0
    dead_letters = db.execute("SELECT count(*) FROM dead_letters").fetchone()
    assert dead_letters == ((0,) if failure is DatabaseUnavailable else (len(ids),))


@pytest.mark.parametrize(("reply", "waited_out"), [
    ("NOREPLICAS Not enough good replicas to write.", True),
    ("Command # 1 (SADD rq:queues rq:queue:hookstream) of pipeline caused error: NOREPLICAS Not enough good"
     " replicas to write.", True),
    ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.", True),
    ("NOGROUP No such key 'hookstream:raw' or consumer group 'hookstream:workers'", False),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
])
def test_a_primary_refusing_writes_for_now_is_waited_out(reply: str, waited_out: bool) -> None:
    assert dispatch.refused_for_now(ResponseError(reply)) is waited_out
