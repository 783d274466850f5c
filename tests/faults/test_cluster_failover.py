"""kill -9 of a Redis Cluster primary under load: its replica takes over, the ingress keeps answering
(on the other shards), and with HOOKSTREAM_APPEND_REPLICAS=1 every request answered 200 is committed
exactly once.

Real processes: a cluster of three primaries with a replica each (tests/cluster/servers.py), a plain
queue Redis, `hookstream ingress` with three shards, `hookstream dispatch` and `hookstream worker -n 2`.
Steady CM traffic, each request with a reference of its own; one shard's primary is killed while it
flows. Until its replica is promoted, and after (the promoted primary has no replica left, so WAIT
cannot count one there), that shard's batches go to the other two. Then every reference answered 200
must be exactly one row of `events`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from hookstream.embedded import RedisServer, free_port
from shared import connections
from shared.settings import Settings
from tests.cluster.servers import RedisClusterGroup, queue_redis
from tests.conftest import empty_tables
from tests.ha.servers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults_long]


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup().start()
    yield group
    group.stop()


@pytest.fixture
def queue() -> Iterator[RedisServer]:
    server = queue_redis()
    yield server
    server.stop()


class Traffic:
    """CM MO requests, one reference each, from a few threads; records what each was answered and when."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.answers: list[tuple[str, int, float]] = []  # (reference, status, when)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                reference = f"fo-{n}-{i}"
                body = {"reference": reference, "from": f"+3161{n:03d}{i % 9999:04d}", "to": "3669",
                        "body": "hello", "groupings": ["", "", ""]}
                try:
                    status = client.post(self.url, content=json.dumps(body),
                                         headers={"content-type": "application/json"}).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.answers.append((reference, status, time.monotonic()))
                i += 1
                time.sleep(0.005)

    def acknowledged(self) -> set[str]:
        with self._lock:
            return {ref for ref, status, _ in self.answers if status == 200}

    def ok_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for _, status, when in self.answers if status == 200 and start <= when <= end)


def test_a_primary_killed_under_load_loses_nothing_acknowledged(
        own_cluster: RedisClusterGroup, queue: RedisServer, database_url: str, tmp_path: Path) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        empty_tables(conn)
    port = free_port()
    env = {**os.environ, "HOOKSTREAM_REDIS_CLUSTER": "1", "HOOKSTREAM_REDIS_URL": own_cluster.url,
           "HOOKSTREAM_QUEUE_REDIS_URL": queue.url, "HOOKSTREAM_DATABASE_URL": database_url,
           "HOOKSTREAM_STREAM_SHARDS": "3", "HOOKSTREAM_APPEND_REPLICAS": "1",
           "HOOKSTREAM_APPEND_REPLICA_TIMEOUT_MS": "500", "HOOKSTREAM_CM_ALLOWED_IPS": "127.0.0.1/32",
           "HOOKSTREAM_VISIBILITY_TIMEOUT": "5", "HOOKSTREAM_JOB_TIMEOUT": "4", "HOOKSTREAM_MAX_DELIVERIES": "50",
           "HOOKSTREAM_WORKER_METRICS_PORT": "0", "HOOKSTREAM_DISPATCH_METRICS_PORT": "0",
           "HOOKSTREAM_LOG_LEVEL": "WARNING"}
    settings = Settings.from_env(env)
    commands = {"ingress": ["ingress", "--host", "127.0.0.1", "--port", str(port)], "dispatch": ["dispatch"],
                "worker": ["worker", "-n", "2"]}
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in commands}
    procs = {name: subprocess.Popen([sys.executable, "-m", "hookstream.cli", *args], env=env, stdout=logs[name],
                                    stderr=subprocess.STDOUT) for name, args in commands.items()}
    stream = connections.cli_redis(settings)
    shards = connections.stream_shards(settings, stream)
    traffic = Traffic(f"http://127.0.0.1:{port}/webhooks/cm/mo")
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, 30, "ingress up")
        traffic.start()
        wait_for(lambda: len(traffic.acknowledged()) > 300, 60, "traffic acknowledged")
        killed_at = time.monotonic()
        old, new = own_cluster.kill_primary(shards[0].stream)
        promoted_at = time.monotonic()
        wait_for(lambda: traffic.ok_between(promoted_at, time.monotonic()) > 200, 60, "traffic after the failover")
        traffic.stop()
        assert traffic.ok_between(killed_at, promoted_at) > 0, "the ingress kept answering 200 during the failover"
        acknowledged = traffic.acknowledged()

        def committed() -> bool:
            with psycopg.connect(database_url, autocommit=True) as conn:
                found = conn.execute("SELECT count(*) FROM events WHERE provider = 'cm'").fetchone()
            return bool(found and found[0] >= len(acknowledged))

        wait_for(committed, 120, "every acknowledged request committed", every_s=0.5)
        assert all(proc.poll() is None for proc in procs.values()), "a process exited"
    finally:
        traffic.stop()
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()
        stream.close()

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT message_ref, count(*) FROM events WHERE provider = 'cm'"
                            " GROUP BY message_ref").fetchall()
    counts = {ref: n for ref, n in rows}
    lost = acknowledged - set(counts)
    doubled = {ref for ref, n in counts.items() if n > 1}
    assert not lost, f"{len(lost)} acknowledged requests lost, e.g. {sorted(lost)[:5]}"
    assert not doubled
    others = Counter(status for _, status, _ in traffic.answers if status != 200)
    print(f"\ncluster failover: primary {old} → {new} in {promoted_at - killed_at:.1f} s; {len(acknowledged)} of"
          f" {len(traffic.answers)} requests answered 200 ({traffic.ok_between(killed_at, promoted_at)} while the"
          f" shard failed over), others {dict(others)}; every one answered 200 committed once, 0 lost")
