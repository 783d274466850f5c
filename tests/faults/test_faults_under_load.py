"""Faults under steady load, against real processes: nothing acknowledged is lost, nothing applied twice.

Every scenario runs the load generator (varied webhooks of every provider, each numbered), injects
its faults, stops the load (unacknowledged requests are retried like a provider would), waits for
the pipeline to drain and runs the accounting of `Pipeline.verify`: every acknowledged request is
in the stream, every entry is its events or its dead letter exactly as a fault-free reference run
of the same entries says, consent and delivery status end as in the reference, and no consent
change is applied twice.

The fast scenario (in `make test`) puts one of each fault into one short run; the `faults_long`
ones (`make test-faults`) repeat them, hold Postgres down for 30 s and restart Redis under load.

Between faults the scenarios wait for progress (requests acknowledged, entries committed), not
for a fixed time: on a busy machine a second may hold little traffic, and a fault injected into
a process still starting up proves nothing.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faults.conftest import PipelineFactory
from tests.faults.harness import Load, Pipeline, Requests, count, fault, wait_until

RATE = 100  # requests per second: steady, well below what the ingress takes on this machine


def redis_outage(pipeline: Pipeline, load: Load, down_s: float, hard: bool = True) -> None:
    """Redis down under load: the ingress answers 503 (quickly) while it is down and 200 after."""
    def while_down() -> None:
        # Redis stays down until a request sent after it went down got its 503 (within the
        # ingress's 2 s append timeout): the outage is seen by a client, however busy the machine.
        since = time.monotonic()
        wait_until(lambda: load.answers_within(since, time.monotonic())[503] > 0, 60,
                   "a 503 to a request sent while Redis is down")
        response = httpx.get(f"{pipeline.url}/readyz", timeout=30)
        assert response.status_code == 503

    down, restarting = pipeline.restart_redis(down_s, hard=hard, during=while_down)
    wait_until(lambda: httpx.get(f"{pipeline.url}/readyz", timeout=5).status_code == 200, 60, "/readyz 200 again")
    back = time.monotonic()
    wait_until(lambda: load.answers_within(back, time.monotonic())[200] > 10, 60, "200s after Redis is back")
    # Sent after Redis was surely down and answered before it was started again: never a 200
    # (that would acknowledge what nobody holds). An append Redis executed just before it went
    # away may still be answered 200 a little later: its request was sent before `down`, and the
    # accounting checks that every 200 is in the stream.
    during = load.answers_within(down, restarting)
    assert set(during) <= {503, 0}, f"answers while Redis was down: {during}"  # 0: client timeout, retried
    assert during[503] > 0


def postgres_outage(pipeline: Pipeline, load: Load, down_s: float) -> int:
    """Postgres down under load: the ingress keeps answering 200 (it needs only Redis).

    Returns the backlog (entries not yet read, and read but not acknowledged) just before
    Postgres is started again.
    """
    backlog: list[int] = []

    def while_down() -> None:
        # Requests keep arriving and being acknowledged, and the workers cannot commit them.
        since = time.monotonic()
        wait_until(lambda: load.answers_within(since, time.monotonic())[200] > 10, 60,
                   "200s while Postgres is down")
        wait_until(lambda: sum(pipeline.group_state()) > 0, 60, "a backlog while Postgres is down")

    def before_restart() -> None:
        backlog.append(sum(pipeline.group_state()))

    down, restarting = pipeline.stop_postgres(down_s, during=while_down, before_restart=before_restart)
    during = load.answers_within(down, restarting)
    assert set(during) == {200}, f"while Postgres was down the ingress answered {during}"
    return backlog[0]


def finish(pipeline: Pipeline, load: Load, label: str, drain_timeout_s: float = 240) -> None:
    load.stop()
    drained = pipeline.wait_drained(drain_timeout_s)
    count("drain_seconds_total", round(drained))
    verdict = pipeline.verify(load, label=label)
    assert load.acked, "nothing was acknowledged"
    assert verdict.entries >= len(load.acked)


def test_one_of_each_fault_under_load(pipeline: Pipeline, requests_: Requests) -> None:
    """Fast: a worker killed mid-batch, the dispatcher killed, Redis killed, Postgres stopped 4 s."""
    load = Load(pipeline.url, requests_, rate=RATE, seed=101).start()
    pipeline.wait_processed(100)
    pipeline.kill_worker_mid_batch()
    load.wait_acked(100)
    pipeline.kill_dispatcher()
    pipeline.wait_processed(100)  # the new dispatcher is at work
    redis_outage(pipeline, load, down_s=2)
    pipeline.wait_processed(100)  # dispatcher and workers reconnected
    postgres_outage(pipeline, load, down_s=4)
    pipeline.wait_processed(100)  # the workers write again
    finish(pipeline, load, "one of each: worker, dispatcher, Redis 2 s, Postgres 4 s")


@pytest.mark.faults_long
@pytest.mark.timeout(600)
def test_long_workers_killed_mid_batch_repeatedly(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    """A burst of worker deaths. After MAX_INFLIGHT_BATCHES (8) of them the dead jobs' started entries
    hold the dispatcher until RQ's heartbeat lapses (about a minute here): the next kills wait for
    a batch to run again (kill_worker_mid_batch polls until one does)."""
    pipeline = make_pipeline(workers=2)
    load = Load(pipeline.url, requests_, rate=RATE, seed=202).start()
    for _ in range(10):
        load.wait_acked(150)
        pipeline.kill_worker_mid_batch()
    load.wait_acked(200)
    finish(pipeline, load, "a worker SIGKILLed mid-batch, 10 times")


@pytest.mark.faults_long
@pytest.mark.timeout(600)
def test_long_dispatcher_killed_and_workers_restarted(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    pipeline = make_pipeline(workers=2)
    load = Load(pipeline.url, requests_, rate=RATE, seed=303).start()
    for _ in range(3):
        pipeline.wait_processed(150)  # each kill hits a dispatcher at work, not one still starting
        pipeline.kill_dispatcher()
    pipeline.wait_processed(150)
    pipeline.restart_workers(hard=False)  # SIGTERM: each finishes its batch
    pipeline.wait_processed(150)
    pipeline.restart_workers(hard=True)  # SIGKILL of the whole pool, batches in flight
    pipeline.wait_processed(150)
    pipeline.kill_dispatcher()
    pipeline.restart_workers(hard=True)  # both at once
    pipeline.wait_processed(150)
    finish(pipeline, load, "dispatcher SIGKILL x4, all workers restarted x3")


@pytest.mark.faults_long
@pytest.mark.timeout(600)
def test_long_redis_restarted_under_load(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    """SIGKILL (a crash: AOF with fsync always keeps every acknowledged append) and a clean stop."""
    pipeline = make_pipeline(workers=2)
    load = Load(pipeline.url, requests_, rate=RATE, seed=404).start()
    pipeline.wait_processed(200)
    redis_outage(pipeline, load, down_s=5, hard=True)
    pipeline.wait_processed(200)
    redis_outage(pipeline, load, down_s=3, hard=False)
    pipeline.wait_processed(200)
    finish(pipeline, load, "Redis SIGKILL (down 5 s) and SIGTERM (3 s)")


@pytest.mark.faults_long
@pytest.mark.timeout(600)
def test_long_postgres_down_30s_under_load(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    """Workers back off and retry; nothing is dead-lettered for it; the backlog drains after.

    HOOKSTREAM_MAX_DELIVERIES=3: the outage spans more delivery cycles than a record may fail,
    as a 5-minute outage does with the shipped settings (60 s visibility, 5 deliveries).
    """
    pipeline = make_pipeline(workers=2, HOOKSTREAM_MAX_DELIVERIES="3")
    load = Load(pipeline.url, requests_, rate=RATE, seed=505).start()
    pipeline.wait_processed(300)
    backlog_at_return = postgres_outage(pipeline, load, down_s=30)
    assert backlog_at_return > 0, "the outage left no backlog to drain"
    pipeline.wait_processed(300)
    finish(pipeline, load, "Postgres stopped 30 s")
    count("postgres_outage_backlog_entries", backlog_at_return)


@pytest.mark.faults_long
@pytest.mark.timeout(600)
def test_long_consumer_group_destroyed_under_load(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    """Redis without persistence loses the group: the dispatcher recreates it at 0 (never `$`), so
    every entry is delivered again, and is still applied once."""
    pipeline = make_pipeline(workers=2)
    load = Load(pipeline.url, requests_, rate=RATE, seed=606).start()
    pipeline.wait_processed(400)  # entries the group had delivered and acknowledged before it is lost
    s = pipeline.settings
    pipeline.redis.xgroup_destroy(s.stream, s.group)
    fault("consumer group destroyed")
    wait_until(lambda: any(g["name"].decode() == s.group for g in pipeline.redis.xinfo_groups(s.stream)), 60,
               "the group created again")
    pipeline.wait_processed(200)
    finish(pipeline, load, "consumer group destroyed, recreated at 0")
