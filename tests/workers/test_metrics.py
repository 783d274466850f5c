"""The workers' and the dispatcher's /metrics: real processes, real traffic, checked by promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from starlette.testclient import TestClient

from hookstream.embedded import free_port
from shared.settings import Settings
from tests.workers.test_pipeline import cm_mo, gw_dlr, post
from workers.dispatch import Dispatcher
from workers.metrics import DispatchMetrics

pytestmark = pytest.mark.integration


def promtool_accepts(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus"
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_worker_pool_serves_the_sum_of_its_processes(settings: Settings, redis_client: redis.Redis,
                                                     ingress_client: TestClient, db: psycopg.Connection) -> None:
    for i in range(20):
        post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP" if i == 0 else f"hello {i}", ref=str(i)))
        post(ingress_client, "/webhooks/gatewayapi", gw_dlr("DELIVERED", 100 + i, msisdn=4511000000 + i))
    post(ingress_client, "/webhooks/mx2", b"garbage")
    dispatcher = Dispatcher(settings, redis_client, name="m")
    dispatcher.ensure_group()
    while ids := dispatcher.read_batch(first_block_ms=1):
        dispatcher.enqueue(ids[:10])
        dispatcher.enqueue(ids[10:20]) if ids[10:20] else None
        dispatcher.enqueue(ids[20:]) if ids[20:] else None
    port = free_port()
    env = {**os.environ, "HOOKSTREAM_REDIS_URL": settings.redis_url or "", "HOOKSTREAM_LOG_LEVEL": "ERROR",
           "HOOKSTREAM_DATABASE_URL": settings.database_url or ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    worker = subprocess.Popen([sys.executable, "-m", "hookstream.cli", "worker", "-n", "2", "--metrics-port",
                               str(port)], env=env)
    try:
        deadline = time.monotonic() + 30
        while redis_client.xpending(settings.stream, settings.group)["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        text = scrape(port)
    finally:
        worker.terminate()
        worker.wait(30)
    assert sample(text, 'hookstream_worker_events_total{kind="inbound",mode="live",outcome="opt_out",provider="cm"}') == 1
    assert sample(text, 'hookstream_worker_events_total{kind="inbound",mode="live",outcome="none",provider="cm"}') == 19
    assert sample(text, 'hookstream_worker_events_total{kind="status",mode="live",outcome="delivered",provider="gatewayapi"}') == 20
    assert sample(text, 'hookstream_worker_dead_letters_total{mode="live",provider="mx2"}') == 1
    assert sample(text, 'hookstream_worker_consent_changes_total{mode="live",outcome="opt_out"}') == 1
    assert sample(text, "hookstream_worker_batch_size_count") >= 3
    assert sample(text, "hookstream_worker_commit_lag_seconds_count") == 40
    promtool_accepts(text)


def test_dispatcher_gauges(settings: Settings, redis_client: redis.Redis, ingress_client: TestClient) -> None:
    for i in range(5):
        post(ingress_client, "/webhooks/cm/mo", cm_mo(f"hi {i}", ref=str(i)))
    metrics = DispatchMetrics(CollectorRegistry())
    dispatcher = Dispatcher(settings, redis_client, name="g", metrics=metrics)
    dispatcher.ensure_group()
    dispatcher.enqueue(dispatcher.read_batch(first_block_ms=1)[:2])
    dispatcher.observe_stream()
    text = generate_latest(metrics.registry).decode()
    assert sample(text, 'hookstream_stream_length{shard="0"} ') == 5  # one shard: "0"
    assert sample(text, 'hookstream_stream_pending{shard="0"} ') == 5  # all five were read; two are in a job
    assert sample(text, "hookstream_dispatch_inflight_batches ") == 1
    assert sample(text, "hookstream_dispatch_batches_total ") == 1
    promtool_accepts(text)


def test_ingress_metrics_pass_promtool(ingress_client: TestClient) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hi"))
    promtool_accepts(ingress_client.get("/metrics").text)
