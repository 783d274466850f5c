"""The dispatcher against a real Redis: batches, the group's life, reclaim, dead letters, trimming."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import zlib

import psycopg
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from shared.record import RawRecord
from shared.settings import Settings
from tests.providers.util import record
from tests.workers.conftest import entries_enqueued, run_workers
from workers.context import WorkerContext
from workers.dispatch import Dispatcher, batch_job_id

pytestmark = pytest.mark.integration

MX2 = b'{"subscriberId": "s1", "cguid": "c1", "status": "sent", "datetime": "2024-03-25 20:01:58"}'


def append(client: redis.Redis, settings: Settings, count: int, body: bytes = MX2) -> list[str]:
    rec: RawRecord = record("mx2", "webhook", body)
    return [client.xadd(settings.stream, rec.to_fields()).decode() for _ in range(count)]  # type: ignore[arg-type]


def test_entries_from_before_the_group_exists_are_delivered(settings: Settings, redis_client: redis.Redis) -> None:
    ids = append(redis_client, settings, 3)
    dispatcher = Dispatcher(settings, redis_client)
    dispatcher.ensure_group()
    dispatcher.ensure_group()  # idempotent
    assert dispatcher.read_batch(first_block_ms=1) == ids


def test_batches_are_bounded_and_jobs_carry_ids_only(settings: Settings, redis_client: redis.Redis,
                                                     dispatcher: Dispatcher) -> None:
    append(redis_client, settings, 120)
    first = dispatcher.read_batch(first_block_ms=1)
    assert len(first) == settings.batch_size
    job = dispatcher.enqueue(first)
    assert job.id == batch_job_id(first) and job.args == (first,)
    raw = redis_client.hget(f"rq:job:{job.id}", "data")
    assert raw is not None
    assert json.loads(zlib.decompress(raw))[2] == [first]  # JSON with the ids, never a pickle of bodies
    assert job.result_ttl == settings.result_ttl_s and job.failure_ttl == settings.failure_ttl_s
    assert job.timeout == settings.job_timeout_s


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


def test_trimming_keeps_every_unacknowledged_entry(settings: Settings, redis_client: redis.Redis,
                                                   dispatcher: Dispatcher) -> None:
    settings = dataclasses.replace(settings, stream_retention_s=1)
    dispatcher = Dispatcher(settings, redis_client, name="t")
    old = append(redis_client, settings, 3)
    read = dispatcher.read_batch(first_block_ms=1)
    redis_client.xack(settings.stream, settings.group, read[0])  # the first is done, two are pending
    new = append(redis_client, settings, 2)  # never read yet
    time.sleep(1.1)
    assert dispatcher.trim_cutoff(int(time.time() * 1000)) == old[1], "the oldest pending entry bounds the trim"
    dispatcher.trim()
    left = [sid.decode() for sid, _ in redis_client.xrange(settings.stream)]
    assert set(old[1:] + new) <= set(left)
    redis_client.xack(settings.stream, settings.group, *read[1:])
    cutoff = dispatcher.trim_cutoff(int(time.time() * 1000))
    assert cutoff is not None and id_tuple(cutoff) <= id_tuple(new[0]), "entries never read are kept too"
    dispatcher.read_batch(first_block_ms=1)
    redis_client.xack(settings.stream, settings.group, *new)
    time.sleep(1.1)
    cutoff = dispatcher.trim_cutoff(int(time.time() * 1000))
    assert cutoff is not None and id_tuple(cutoff) > id_tuple(new[-1]), "all done and old: all may go"


def id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)
