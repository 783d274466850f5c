"""A pipeline in the test process: the real ingress app, dispatcher and RQ workers in burst mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from ingress.app import create_app
from shared.settings import Settings
from workers import context
from workers.context import WorkerContext
from workers.dispatch import Dispatcher


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    return Settings(redis_url=redis_url, database_url=database_url, local_profile=True, batch_size=50,
                    batch_wait_ms=5, visibility_timeout_s=1, job_timeout_s=10, gatewayapi_keywords=frozenset({"foo"}))


@pytest.fixture
def worker_context(settings: Settings, redis_client: redis.Redis, db: psycopg.Connection) -> Iterator[WorkerContext]:
    ctx = WorkerContext.open(settings, CollectorRegistry())
    context.install(ctx)
    yield ctx
    context.install(None)
    ctx.close()


@pytest.fixture
def dispatcher(settings: Settings, redis_client: redis.Redis) -> Dispatcher:
    d = Dispatcher(settings, redis_client, name="test-dispatcher")
    d.ensure_group()
    return d


@pytest.fixture
def ingress_client(settings: Settings, redis_client: redis.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        yield client


def run_workers(settings: Settings, redis_client: redis.Redis) -> None:
    SimpleWorker([settings.queue, settings.replay_queue], connection=redis_client,
                 serializer=JSONSerializer).work(burst=True, with_scheduler=False, logging_level="WARNING")


Drain = Callable[[], None]


@pytest.fixture
def drain(settings: Settings, redis_client: redis.Redis, dispatcher: Dispatcher, worker_context: WorkerContext) -> Drain:
    """Dispatch everything in the stream and run the workers until nothing is pending."""

    def go() -> None:
        for _ in range(100):
            while True:
                ids = dispatcher.read_batch(first_block_ms=1)
                if not ids:
                    break
                dispatcher.enqueue(ids)
            run_workers(settings, redis_client)
            if not redis_client.xpending(settings.stream, settings.group)["pending"]:
                return
        raise AssertionError("entries stay pending")

    return go


def entries_enqueued(dispatcher: Dispatcher) -> float:
    return dispatcher.metrics.registry.get_sample_value("hookstream_dispatch_entries_total") or 0.0


def reclaimed(dispatcher: Dispatcher) -> float:
    return dispatcher.metrics.registry.get_sample_value("hookstream_dispatch_reclaimed_total") or 0.0
