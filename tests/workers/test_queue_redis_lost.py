"""The queue Redis (RQ's) lost mid-run and started again EMPTY loses nothing and doubles nothing.

Real processes: `hookstream dispatch` and a pool of `hookstream worker -n 2`, the stream on the
session's Redis and RQ's queues on a Redis of their own without persistence. While records are
appended to the stream (what the ingress acknowledges), the queue Redis is killed, stays away a
few seconds and comes back empty on the same port: every job, its state and the entry → job map
are gone. The streams' pending entries are the record of what is unfinished: the dispatcher
reclaims them after the visibility timeout, and the events table ends with every appended
record's events exactly once. Neither process exits, each says once that the Redis is gone, and
the workers register again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis
from rq import Worker

from bench.payloads import records
from hookstream.embedded import RedisServer, free_port
from shared.settings import Settings
from tests.ha.servers import wait_for
from workers.context import normalize_context
from workers.normalize import normalize_entries

pytestmark = pytest.mark.integration

RECORDS = 4000
PER_TICK = 40


def empty_redis(port: int) -> RedisServer:
    """A queue Redis as many run it: no AOF left from before (a new folder each time)."""
    return RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-queue-")), port=port, appendfsync="no").start()


def test_queue_redis_restarted_empty_mid_run(redis_url: str, database_url: str, redis_client: redis.Redis,
                                             db: psycopg.Connection, tmp_path: Path) -> None:
    port = free_port()
    queue = empty_redis(port)
    env = {**os.environ, "HOOKSTREAM_REDIS_URL": redis_url, "HOOKSTREAM_DATABASE_URL": database_url,
           "HOOKSTREAM_QUEUE_REDIS_URL": queue.url, "HOOKSTREAM_VISIBILITY_TIMEOUT": "6",
           "HOOKSTREAM_JOB_TIMEOUT": "5", "HOOKSTREAM_MAX_DELIVERIES": "50", "HOOKSTREAM_BATCH_SIZE": "100",
           "HOOKSTREAM_WORKER_METRICS_PORT": "0", "HOOKSTREAM_DISPATCH_METRICS_PORT": "0",
           "HOOKSTREAM_LOG_LEVEL": "WARNING"}
    settings = Settings.from_env(env)
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("dispatch", "worker")}
    procs = {name: subprocess.Popen([sys.executable, "-m", "hookstream.cli", *args], env=env, stdout=logs[name],
                                    stderr=subprocess.STDOUT)
             for name, args in (("dispatch", ["dispatch"]), ("worker", ["worker", "-n", "2"]))}
    appended = threading.Event()

    def traffic() -> None:
        pipe = redis_client.pipeline(transaction=False)
        for i, rec in enumerate(records(RECORDS, seed=17), 1):
            pipe.xadd(settings.stream, rec.to_fields())  # type: ignore[arg-type]
            if i % PER_TICK == 0:
                pipe.execute()
                time.sleep(0.01)
        pipe.execute()
        appended.set()

    feeder = threading.Thread(target=traffic, daemon=True)
    try:
        feeder.start()
        # Lose the queue Redis once batches are moving: jobs queued, running and finished are all gone.
        wait_for(lambda: db.execute("SELECT count(*) FROM events").fetchone()[0] > 200, 60, "first commits")
        queue.proc.kill()  # type: ignore[union-attr]
        queue.proc.wait()  # type: ignore[union-attr]
        time.sleep(8)  # longer than a client's own retries (~4.4 s): both processes notice and wait
        queue = empty_redis(port)
        with redis.Redis.from_url(queue.url) as fresh:
            wait_for(lambda: Worker.all(connection=fresh), 30, "the workers registered again")
        assert appended.wait(120)
        wait_for(lambda: not redis_client.xpending(settings.stream, settings.group)["pending"]
                 and _lag(redis_client, settings) == 0, 120, "every entry acknowledged")
        assert all(proc.poll() is None for proc in procs.values()), "a process exited"
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        queue.stop()
        for log in logs.values():
            log.close()

    raw = [(sid.decode(), fields) for sid, fields in redis_client.xrange(settings.stream)]
    assert len(raw) == RECORDS
    expected = normalize_entries(raw, normalize_context(settings))
    expected_keys = {event.dedupe_key for entry in expected for event in entry.events}
    keys = [row[0] for row in db.execute("SELECT dedupe_key FROM events")]
    assert len(keys) == len(set(keys)) == len(expected_keys)
    assert set(keys) == expected_keys
    assert {row[0] for row in db.execute("SELECT stream_id FROM dead_letters")} == {
        entry.stream_id for entry in expected if entry.dead_reason}
    changes = [row[0] for row in db.execute("SELECT event_key FROM consent_changes")]
    assert len(changes) == len(set(changes))
    # Said once when it went (and once when it came back), not at every retry.
    dispatch_log = (tmp_path / "dispatch.log").read_text()
    assert 1 <= dispatch_log.count("redis unavailable") <= 2, dispatch_log[-2000:]
    worker_log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in worker_log and "quitting" not in worker_log, worker_log[-3000:]


def _lag(client: redis.Redis, settings: Settings) -> int:
    groups = {g["name"].decode(): g for g in client.xinfo_groups(settings.stream)}
    return int(groups[settings.group].get("lag") or 0)
