"""Faults under steady load, against real processes: nothing acknowledged is lost, nothing applied twice.

Every scenario runs the load generator (varied webhooks of every provider, each numbered), injects
its faults, stops the load (unacknowledged requests are retried like a provider would), waits for
the pipeline to drain and runs the accounting of `Pipeline.verify`: every acknowledged request is
in the stream, every entry is its events or its dead letter exactly as a fault-free reference run
of the same entries says, consent and delivery status end as in the reference, and no consent
change is applied twice.

The fast scenario (in `make test`) puts one of each fault into one short run; the `faults_long`
ones (`make test-faults`) repeat them, hold Postgres down for 30 s and restart Redis under load.
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
        # A request that hits the outage gets a 503, within the ingress's 2 s append timeout.
        before = load.statuses.get(503, 0)
        wait_until(lambda: load.statuses.get(503, 0) > before, 10, "a 503 while Redis is down")
        response = httpx.get(f"{pipeline.url}/readyz", timeout=5)
        assert response.status_code == 503

    down, restarting = pipeline.restart_redis(down_s, hard=hard, during=while_down)
    wait_until(lambda: httpx.get(f"{pipeline.url}/readyz", timeout=5).status_code == 200, 15, "/readyz 200 again")
    back = time.monotonic()
    wait_until(lambda: load.statuses_between(back, time.monotonic())[200] > 10, 20, "200s after Redis is back")
    # Answered while Redis was surely down: never a 200 (that would acknowledge what nobody holds).
    # The first second is left out: an append Redis executed just before it went away may reach
    # the client a little after (the accounting checks that every 200 is in the stream).
    during = load.statuses_between(down + 1.0, restarting)
    assert set(during) <= {503, 0}, f"answers while Redis was down: {during}"  # 0: client timeout, retried
    assert during[503] > 0


def postgres_outage(pipeline: Pipeline, load: Load, down_s: float) -> None:
    """Postgres down under load: the ingress keeps answering 200 (it needs only Redis)."""
    started = time.monotonic()
    pipeline.stop_postgres(down_s)
    during = load.statuses_between(started + 0.5, time.monotonic() - 0.5)
    assert set(during) == {200}, f"while Postgres was down the ingress answered {during}"


def finish(pipeline: Pipeline, load: Load, label: str, drain_timeout_s: float = 120) -> None:
    load.stop()
    drained = pipeline.wait_drained(drain_timeout_s)
    count("drain_seconds_total", round(drained))
    verdict = pipeline.verify(load, label=label)
    assert load.acked, "nothing was acknowledged"
    assert verdict.entries >= len(load.acked)


def test_one_of_each_fault_under_load(pipeline: Pipeline, requests_: Requests) -> None:
    """Fast: a worker killed mid-batch, the dispatcher killed, Redis killed, Postgres stopped 4 s."""
    load = Load(pipeline.url, requests_, rate=RATE, seed=101).start()
    time.sleep(1.5)
    pipeline.kill_worker_mid_batch()
    time.sleep(1)
    pipeline.kill_dispatcher()
    time.sleep(1)
    redis_outage(pipeline, load, down_s=2)
    time.sleep(1)
    postgres_outage(pipeline, load, down_s=4)
    time.sleep(1)
    finish(pipeline, load, "one of each: worker, dispatcher, Redis 2 s, Postgres 4 s")


@pytest.mark.faults_long
@pytest.mark.timeout(400)
def test_long_workers_killed_mid_batch_repeatedly(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    pipeline = make_pipeline(workers=2)
    load = Load(pipeline.url, requests_, rate=RATE, seed=202).start()
    for _ in range(10):
        time.sleep(1.5)
        pipeline.kill_worker_mid_batch()
    time.sleep(2)
    finish(pipeline, load, "a worker SIGKILLed mid-batch, 10 times")


@pytest.mark.faults_long
@pytest.mark.timeout(400)
def test_long_dispatcher_killed_and_workers_restarted(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    pipeline = make_pipeline(workers=2)
    load = Load(pipeline.url, requests_, rate=RATE, seed=303).start()
    for _ in range(3):
        time.sleep(2)
        pipeline.kill_dispatcher()
    time.sleep(2)
    pipeline.restart_workers(hard=False)  # SIGTERM: each finishes its batch
    time.sleep(2)
    pipeline.restart_workers(hard=True)  # SIGKILL of the whole pool, batches in flight
    time.sleep(2)
    pipeline.kill_dispatcher()
    pipeline.restart_workers(hard=True)  # both at once
    time.sleep(3)
    finish(pipeline, load, "dispatcher SIGKILL x4, all workers restarted x3")


@pytest.mark.faults_long
@pytest.mark.timeout(400)
def test_long_redis_restarted_under_load(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    """SIGKILL (a crash: AOF with fsync always keeps every acknowledged append) and a clean stop."""
    pipeline = make_pipeline(workers=2)
    load = Load(pipeline.url, requests_, rate=RATE, seed=404).start()
    time.sleep(3)
    redis_outage(pipeline, load, down_s=5, hard=True)
    time.sleep(3)
    redis_outage(pipeline, load, down_s=3, hard=False)
    time.sleep(3)
    finish(pipeline, load, "Redis SIGKILL (down 5 s) and SIGTERM (3 s)")


@pytest.mark.faults_long
@pytest.mark.timeout(400)
def test_long_postgres_down_30s_under_load(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    """Workers back off and retry; nothing is dead-lettered for it; the backlog drains after.

    HOOKSTREAM_MAX_DELIVERIES=3: the outage spans more delivery cycles than a record may fail,
    as a 5-minute outage does with the shipped settings (60 s visibility, 5 deliveries).
    """
    pipeline = make_pipeline(workers=2, HOOKSTREAM_MAX_DELIVERIES="3")
    load = Load(pipeline.url, requests_, rate=RATE, seed=505).start()
    time.sleep(3)
    postgres_outage(pipeline, load, down_s=30)
    backlog_at_return = sum(pipeline.group_state())
    assert backlog_at_return > 0, "the outage left no backlog to drain"
    time.sleep(3)
    finish(pipeline, load, "Postgres stopped 30 s")
    count("postgres_outage_backlog_entries", backlog_at_return)


@pytest.mark.faults_long
@pytest.mark.timeout(400)
def test_long_consumer_group_destroyed_under_load(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    """Redis without persistence loses the group: the dispatcher recreates it at 0 (never `$`), so
    every entry is delivered again, and is still applied once."""
    pipeline = make_pipeline(workers=2)
    load = Load(pipeline.url, requests_, rate=RATE, seed=606).start()
    time.sleep(4)
    s = pipeline.settings
    pipeline.redis.xgroup_destroy(s.stream, s.group)
    fault("consumer group destroyed")
    wait_until(lambda: any(g["name"].decode() == s.group for g in pipeline.redis.xinfo_groups(s.stream)), 20,
               "the group created again")
    time.sleep(3)
    finish(pipeline, load, "consumer group destroyed, recreated at 0")
