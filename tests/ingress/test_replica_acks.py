"""Acknowledgements on two machines: with HOOKSTREAM_APPEND_REPLICAS=N the ingress answers 200 only
after `WAIT N timeout`, sent in the same round trip right after the XADDs, counted N replicas.

Against real processes: a primary (AOF, `appendfsync always`, as shipped) and one replica started
with `--replicaof`, on free ports in temporary folders. The replica is paused with SIGSTOP to play
a replica that stopped acknowledging, and resumed with SIGCONT.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from starlette.testclient import TestClient

from hookstream.embedded import RedisServer, _wait_for_port, free_port
from ingress.app import create_app
from ingress.appender import Appender, ReplicaAckMissing
from shared.errors import ConfigError, StoreUnavailable
from shared.settings import Settings

BODY = b'{"subscriberId": "s1", "cguid": "c1", "status": "sent", "datetime": "2024-03-25 20:01:58"}'
STREAM = "hookstream:raw"
TIMEOUT_MS = 500


class Replica:
    """A redis-server replicating `primary_port`, in its own folder, without persistence of its own."""

    def __init__(self, primary_port: int) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="hookstream-replica-"))
        self.port = free_port()
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--replicaof", "127.0.0.1", str(primary_port), "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, 10, self.proc)
        self.client = redis.Redis(port=self.port)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()  # a stopped process would not act on SIGTERM
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def wait_until(condition, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[RedisServer, Replica]]:
    primary = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-primary-"))).start()
    admin = redis.Redis.from_url(primary.url)
    admin.config_set("repl-diskless-sync-delay", 0)  # the replica's first sync at once, not after 5 s
    replica = Replica(primary.port)
    try:
        wait_until(lambda: replica.client.info("replication")["master_link_status"] == "up")
        wait_until(lambda: admin.info("replication")["connected_slaves"] == 1)
        yield primary, replica
    finally:
        replica.stop()
        admin.close()
        primary.stop()
        shutil.rmtree(primary.data_dir, ignore_errors=True)


@pytest.fixture
def primary(pair: tuple[RedisServer, Replica]) -> Iterator[redis.Redis]:
    """The primary, emptied (and the replica with it), its command statistics reset."""
    server, replica = pair
    client = redis.Redis.from_url(server.url)
    client.delete(STREAM)
    client.incr("hookstream:test:writes")  # a write WAIT must see on the replica: replication flows
    assert client.execute_command("WAIT", 1, 5000) == 1
    client.config_resetstat()
    yield client
    replica.resume()
    client.close()


@pytest.fixture
def replica(pair: tuple[RedisServer, Replica]) -> Replica:
    return pair[1]


def calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def metric(client: TestClient, name: str) -> float:
    """A sample's value from the ingress's own /metrics (a histogram's name: its `_sum`)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def ingress(server: RedisServer, replicas: int) -> TestClient:
    settings = Settings(redis_url=server.url, append_replicas=replicas, append_replica_timeout_ms=TIMEOUT_MS)
    return TestClient(create_app(settings), client=("127.0.0.1", 1))


# -- the ingress --------------------------------------------------------------------------------------


def test_one_replica_required_an_acknowledged_request_is_already_on_the_replica(
        pair: tuple[RedisServer, Replica], primary: redis.Redis, replica: Replica) -> None:
    with ingress(pair[0], replicas=1) as client:
        for _ in range(3):
            assert client.post("/webhooks/mx2", content=BODY).status_code == 200
            # Read at once, no polling: WAIT counted the replica, so the entry is there.
            assert replica.client.xlen(STREAM) == primary.xlen(STREAM)
        assert metric(client, "hookstream_ingress_append_replicas_acked_sum") == 3  # WAIT said 1, three times
        assert metric(client, "hookstream_ingress_replica_ack_errors_total") == 0
    assert calls(primary, "xadd") == 3 and calls(primary, "wait") == 3


def test_a_paused_replica_makes_503s_within_about_the_timeout_then_200_once_it_is_back(
        pair: tuple[RedisServer, Replica], primary: redis.Redis, replica: Replica) -> None:
    with ingress(pair[0], replicas=1) as client:
        replica.pause()
        for _ in range(2):
            started = time.monotonic()
            answer = client.post("/webhooks/mx2", content=BODY)
            elapsed = time.monotonic() - started
            assert answer.status_code == 503, "nothing may be acknowledged that no replica confirmed"
            # WAIT's timeout, not the round trip's deadline (2 s more): Redis ends a blocked WAIT on
            # its 100 ms timer and a busy machine adds its own delay (one WAIT each: the count below).
            assert TIMEOUT_MS / 1000 - 0.05 <= elapsed < TIMEOUT_MS / 1000 + 1.0, elapsed
        assert metric(client, "hookstream_ingress_replica_ack_errors_total") == 2
        assert metric(client, "hookstream_ingress_append_errors_total") == 2
        assert metric(client, "hookstream_ingress_append_replicas_acked_count") == 2
        assert metric(client, "hookstream_ingress_append_replicas_acked_sum") == 0
        # The refused appends are in the primary's stream: the provider's retries add second entries
        # (dropped downstream by dedupe), none of them was answered 200.
        assert primary.xlen(STREAM) == 2

        replica.resume()
        assert client.post("/webhooks/mx2", content=BODY).status_code == 200
        assert replica.client.xlen(STREAM) == 3  # the earlier two came with it
        assert metric(client, "hookstream_ingress_replica_ack_errors_total") == 2


def test_no_replica_required_a_paused_replica_changes_nothing_and_no_wait_is_sent(
        pair: tuple[RedisServer, Replica], primary: redis.Redis, replica: Replica) -> None:
    with ingress(pair[0], replicas=0) as client:
        replica.pause()
        for _ in range(3):
            started = time.monotonic()
            assert client.post("/webhooks/mx2", content=BODY).status_code == 200
            assert time.monotonic() - started < TIMEOUT_MS / 1000, "no WAIT on the paused replica"
        assert metric(client, "hookstream_ingress_append_replicas_acked_count") == 0
    assert primary.xlen(STREAM) == 3
    assert calls(primary, "xadd") == 3 and calls(primary, "wait") == 0


# -- the appender -------------------------------------------------------------------------------------


def run(url: str, scenario, **options: object) -> object:  # type: ignore[no-untyped-def]
    async def main() -> object:
        client = Redis.from_url(url)
        appender = Appender(client, STREAM, **options)  # type: ignore[arg-type]
        try:
            return await scenario(appender)
        finally:
            await appender.close()
            await client.aclose()

    return asyncio.run(main())


def test_concurrent_appends_still_share_round_trips_each_with_one_wait(
        pair: tuple[RedisServer, Replica], primary: redis.Redis, replica: Replica) -> None:
    batches: list[int] = []
    counted: list[int] = []

    async def scenario(appender: Appender) -> list[bytes]:
        return await asyncio.gather(*(appender.append({b"n": str(i).encode()}) for i in range(500)))

    ids = run(pair[0].url, scenario, replicas=1, on_batch=batches.append, on_replicas=counted.append)
    assert len(ids) == 500 and sum(batches) == 500  # type: ignore[arg-type]
    assert len(batches) <= 5, batches  # coalesced: a few round trips, not one per request
    assert calls(primary, "wait") == len(batches) and counted == [1] * len(batches)
    assert [sid for sid, _ in replica.client.xrange(STREAM)] == ids


def test_the_deadline_covers_the_wait_timeout(pair: tuple[RedisServer, Replica], primary: redis.Redis,
                                             replica: Replica) -> None:
    """A base deadline shorter than the WAIT timeout: WAIT still answers (0 replicas), and the
    connection stays, instead of the round trip being cut off as if Redis hung."""

    async def scenario(appender: Appender) -> tuple[object, float, bool]:
        replica.pause()
        started = time.monotonic()
        outcome = (await asyncio.gather(appender.append({b"n": b"1"}), return_exceptions=True))[0]
        return outcome, time.monotonic() - started, appender._shards[0]._connection.is_connected

    outcome, elapsed, connected = run(pair[0].url, scenario, replicas=1, replica_timeout_ms=800,  # type: ignore[misc]
                                      timeout_s=0.3)
    assert isinstance(outcome, ReplicaAckMissing) and "0 of 1" in str(outcome), outcome
    # At least the WAIT timeout; the outcome shows the 1.1 s deadline did not cut the round trip, and
    # under two WAITs' time leaves a busy machine room (it took 0.82 to 0.90 s with 4 busy loops).
    assert 0.75 <= elapsed < 2 * 0.8 and connected, elapsed


def test_a_wait_that_redis_refuses_fails_the_round_trip(primary: redis.Redis, replica: Replica) -> None:
    """Pointed at a writable replica by mistake: its XADDs succeed there, but WAIT is refused (a
    replica has no replicas to count), so none of them is acknowledged."""
    replica.client.config_set("replica-read-only", "no")

    async def scenario(appender: Appender) -> list[object]:
        return await asyncio.gather(*(appender.append({b"n": b"1"}) for _ in range(3)), return_exceptions=True)

    try:
        outcomes = run(f"redis://127.0.0.1:{replica.port}/0", scenario, replicas=1)
    finally:
        replica.client.config_set("replica-read-only", "yes")
    assert all(isinstance(o, ReplicaAckMissing) and "WAIT" in str(o) for o in outcomes), outcomes  # type: ignore[arg-type]


# -- the settings -------------------------------------------------------------------------------------


def test_replica_settings_default_to_no_wait() -> None:
    settings = Settings.from_env({})
    assert (settings.append_replicas, settings.append_replica_timeout_ms) == (0, 1000)


def test_replica_settings_are_read() -> None:
    settings = Settings.from_env({"HOOKSTREAM_APPEND_REPLICAS": "2", "HOOKSTREAM_APPEND_REPLICA_TIMEOUT_MS": " 250 "})
    assert (settings.append_replicas, settings.append_replica_timeout_ms) == (2, 250)


@pytest.mark.parametrize(("name", "value"), [
    ("HOOKSTREAM_APPEND_REPLICAS", "-1"), ("HOOKSTREAM_APPEND_REPLICAS", "one"), ("HOOKSTREAM_APPEND_REPLICAS", "1.5"),
    ("HOOKSTREAM_APPEND_REPLICA_TIMEOUT_MS", "0"), ("HOOKSTREAM_APPEND_REPLICA_TIMEOUT_MS", "-5"),
    ("HOOKSTREAM_APPEND_REPLICA_TIMEOUT_MS", "1s"),
])
def test_a_bad_replica_setting_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_with_a_replica_down_a_flood_waits_at_most_two_round_trips(
        pair: tuple[RedisServer, Replica], primary: redis.Redis, replica: Replica) -> None:
    """3,000 appends arriving while the replica is paused: everything waiting rides the next round trip,
    so none waits for a queue of round trips (each as long as the WAIT timeout) to drain."""
    batches: list[int] = []

    async def scenario(appender: Appender) -> list[float]:
        async def one(i: int) -> float:
            await asyncio.sleep(i * 0.00025)  # arriving over 0.75 s, across round trips
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await appender.append({b"n": str(i).encode()})
            return time.monotonic() - started

        return await asyncio.gather(*(one(i) for i in range(3000)))

    replica.pause()
    waited = run(pair[0].url, scenario, replicas=1, replica_timeout_ms=TIMEOUT_MS, on_batch=batches.append)
    # The property is the count of round trips; the time bound only catches a queue of them (3,000
    # requests in turn would wait minutes), with room for a busy machine's scheduling.
    assert len(batches) <= 4, batches
    assert max(waited) < 3 * TIMEOUT_MS / 1000 + 1.0, max(waited)  # type: ignore[type-var]
