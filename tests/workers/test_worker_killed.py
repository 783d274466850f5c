"""A worker process killed with SIGKILL in the middle of a batch loses nothing and doubles nothing.

Real processes: `hookstream worker` is started, killed while a job is running, and replaced;
the dispatcher reclaims the entries of the dead job once it is over, and afterwards every
stream entry is in Postgres exactly once (as events or as a dead letter).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import redis
from rq import Queue
from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from bench.payloads import records
from shared.settings import Settings
from tests.workers.conftest import reclaimed
from workers.context import normalize_context
from workers.dispatch import STARTED_GRACE_S, Dispatcher
from workers.normalize import normalize_entries

pytestmark = pytest.mark.integration

ENTRIES = 3000


def worker_env(redis_url: str, database_url: str) -> dict[str, str]:
    return {**os.environ, "HOOKSTREAM_REDIS_URL": redis_url, "HOOKSTREAM_DATABASE_URL": database_url,
            "HOOKSTREAM_JOB_TIMEOUT": "2", "HOOKSTREAM_VISIBILITY_TIMEOUT": "1", "HOOKSTREAM_LOG_LEVEL": "ERROR"}


def start_worker(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "hookstream.cli", "worker", *extra], env=env)


def pending(client: redis.Redis, settings: Settings) -> int:
    return int(client.xpending(settings.stream, settings.group)["pending"])


def running(client: redis.Redis, registry: StartedJobRegistry, known: set[str]) -> bool:
    """A job of the registry but the `known` ones (of workers killed before) is at work. RQ lists a
    job there a moment before it marks it started: a worker killed in between leaves a job that looks
    queued until RQ's entry for it expires."""
    ids = [job_id for job_id in registry.get_job_ids(cleanup=False) if job_id not in known]
    jobs = Job.fetch_many(ids, connection=client, serializer=JSONSerializer)
    return any(job is not None and job.get_status(refresh=False) == JobStatus.STARTED for job in jobs)


def recovery_bound_s(settings: Settings) -> float:
    """How long the entries of a killed worker's job may stay pending: a started job is over after
    its timeout and the dispatcher's grace; a job taken but not yet marked started, once RQ's entry
    for it expires (its heartbeat: the job timeout, at most the monitoring interval, plus 60 s)."""
    heartbeat_s = min(settings.job_timeout_s, DEFAULT_JOB_MONITORING_INTERVAL) + 60
    return max(settings.job_timeout_s + STARTED_GRACE_S, heartbeat_s) + settings.visibility_timeout_s


@pytest.mark.timeout(300)  # the longest recovery alone is over a minute
def test_sigkill_mid_batch_then_reclaim_gives_every_event_once(redis_url: str, database_url: str,
                                                               redis_client: redis.Redis,
                                                               db: psycopg.Connection) -> None:
    env = worker_env(redis_url, database_url)
    settings = Settings.from_env(env)
    settings = dataclasses.replace(settings, batch_size=250)
    dispatcher = Dispatcher(settings, redis_client, name="test-dispatcher")
    dispatcher.ensure_group()
    started_registry = Queue(settings.queue, connection=redis_client).started_job_registry

    def still_pending(ids: list[str]) -> bool:
        return any(redis_client.xpending_range(settings.stream, settings.group, min=i, max=i, count=1) for i in ids)

    killed_mid_batch: list[str] = []
    for attempt in range(5):  # a kill that lands after a job's ack does not count: try again with more
        pipe = redis_client.pipeline(transaction=False)
        for rec in records(ENTRIES, seed=11 + attempt):
            pipe.xadd(settings.stream, rec.to_fields())  # type: ignore[arg-type]
        pipe.execute()
        while ids := dispatcher.read_batch(first_block_ms=1):
            dispatcher.enqueue(ids)
        before = pending(redis_client, settings)
        known = set(started_registry.get_job_ids(cleanup=False))  # the jobs of the workers killed before
        worker = start_worker(env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # once a batch was acknowledged and another is running
            if pending(redis_client, settings) < before:
                time.sleep(0.02 * attempt)
                worker.send_signal(signal.SIGSTOP)  # frozen while looked at: killed as it was seen
                if running(redis_client, started_registry, known):
                    break
                worker.send_signal(signal.SIGCONT)
            time.sleep(0.002)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        for job_id in set(started_registry.get_job_ids(cleanup=False)) - known:
            job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
            if still_pending(job.args[0]):
                killed_mid_batch = job.args[0]
        if killed_mid_batch:
            break
    assert killed_mid_batch, "the worker was never killed in the middle of a batch"

    # The dead job's entries come back only once its job is over (its timeout and the grace), then
    # drain. The bound also allows for a job killed before RQ marked it started (RQ's heartbeat, 62 s
    # here), with a slow machine's margin on top.
    deadline = time.monotonic() + recovery_bound_s(settings) + 60
    while pending(redis_client, settings) and time.monotonic() < deadline:
        dispatcher.reclaim()
        subprocess.run([sys.executable, "-m", "hookstream.cli", "worker", "--burst"], env=env, check=True)
        time.sleep(0.5)
    assert pending(redis_client, settings) == 0
    assert reclaimed(dispatcher) > 0

    raw = [(sid.decode(), fields) for sid, fields in redis_client.xrange(settings.stream)]
    expected = normalize_entries(raw, normalize_context(settings))
    expected_keys = {event.dedupe_key for entry in expected for event in entry.events}
    expected_dead = {entry.stream_id for entry in expected if entry.dead_reason}
    keys = [row[0] for row in db.execute("SELECT dedupe_key FROM events")]
    assert len(keys) == len(set(keys)) == len(expected_keys)
    assert set(keys) == expected_keys
    dead = {row[0] for row in db.execute("SELECT stream_id FROM dead_letters")}
    assert dead == expected_dead
    changes = [row[0] for row in db.execute("SELECT event_key FROM consent_changes")]
    assert len(changes) == len(set(changes))


def test_sigterm_lets_a_worker_finish_its_batch(redis_url: str, database_url: str, redis_client: redis.Redis,
                                                db: psycopg.Connection) -> None:
    env = worker_env(redis_url, database_url)
    settings = Settings.from_env(env)
    dispatcher = Dispatcher(settings, redis_client, name="test-dispatcher")
    dispatcher.ensure_group()
    pipe = redis_client.pipeline(transaction=False)
    for rec in records(ENTRIES, seed=5):
        pipe.xadd(settings.stream, rec.to_fields())  # type: ignore[arg-type]
    pipe.execute()
    while ids := dispatcher.read_batch(first_block_ms=1):
        dispatcher.enqueue(ids)
    started_registry = Queue(settings.queue, connection=redis_client).started_job_registry
    worker = start_worker(env)
    deadline = time.monotonic() + 30
    while not started_registry.get_job_count(cleanup=False) and time.monotonic() < deadline:
        time.sleep(0.002)
    [running] = started_registry.get_job_ids(cleanup=False)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    job = Job.fetch(running, connection=redis_client, serializer=JSONSerializer)
    assert job.get_status() == "finished"
    assert not any(redis_client.xpending_range(settings.stream, settings.group, min=i, max=i, count=1)
                   for i in job.args[0]), "the batch it was working on was committed and acknowledged"
    assert 0 < pending(redis_client, settings) < ENTRIES, "it stopped after that batch, leaving the rest queued"
