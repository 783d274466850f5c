"""Fixtures of the Redis Cluster tests: a cluster of three primaries with a replica each, a plain
queue Redis, and an in-process pipeline (dispatcher and RQ workers in burst mode) on them.

`cluster` is one per module, for tests that only read and write, each under a key prefix of its own;
a test that kills a node makes its own `RedisClusterGroup`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from rq.serializers import JSONSerializer

from hookstream.embedded import RedisServer
from shared import connections
from shared.settings import Settings
from tests.cluster.servers import RedisClusterGroup, queue_redis
from workers import context
from workers.context import WorkerContext
from workers.dispatch import Dispatcher
from workers.steady_worker import SteadyWorker
from workers.worker import queue_names


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup().start()
    yield group
    group.stop()


@pytest.fixture(scope="module")
def queue_server() -> Iterator[RedisServer]:
    server = queue_redis()
    yield server
    server.stop()


def cluster_settings(cluster: RedisClusterGroup, queue: RedisServer, database_url: str, **env: str) -> Settings:
    """What every process of a cluster deployment reads, under a key prefix of its own (the loopback
    admitted, as `hookstream run`'s local profile does)."""
    settings = Settings.from_env({"HOOKSTREAM_REDIS_CLUSTER": "1", "HOOKSTREAM_REDIS_URL": cluster.url,
                                  "HOOKSTREAM_QUEUE_REDIS_URL": queue.url, "HOOKSTREAM_DATABASE_URL": database_url,
                                  "HOOKSTREAM_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}", "HOOKSTREAM_BATCH_SIZE": "50",
                                  "HOOKSTREAM_BATCH_WAIT_MS": "5", "HOOKSTREAM_VISIBILITY_TIMEOUT": "1",
                                  "HOOKSTREAM_JOB_TIMEOUT": "10", **env})
    return dataclasses.replace(settings, local_profile=True)


class Pipeline:
    """The dispatcher and a worker of one deployment, run to completion in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stream = connections.dispatcher_redis(settings)
        self.queue = connections.queue_client(settings, connections.Role.DISPATCHER, self.stream)
        self.queue.flushdb()
        self.dispatcher = Dispatcher(settings, self.stream, queue_redis=self.queue, name="test")
        self.dispatcher.ensure_group()
        self.worker = WorkerContext.open(settings, CollectorRegistry())
        context.install(self.worker)

    def pending(self) -> int:
        return sum(int(self.stream.xpending(s.stream, self.settings.group)["pending"]) for s in self.dispatcher.shards)

    def drain(self, rounds: int = 100) -> None:
        """Dispatch every shard's entries and run the workers until nothing is pending."""
        for _ in range(rounds):
            for shard in self.dispatcher.shards:
                while ids := self.dispatcher.read_batch(first_block_ms=1, shard=shard):
                    self.dispatcher.enqueue(ids, shard=shard)
            SteadyWorker(queue_names(self.settings), connection=self.queue, serializer=JSONSerializer).work(
                burst=True, logging_level="WARNING")
            if not self.pending() and not any(self.lag(shard.stream) for shard in self.dispatcher.shards):
                return
            self.dispatcher.reclaim()
        raise AssertionError("entries stay pending")

    def lag(self, stream: str) -> int:
        groups = {g["name"].decode(): g for g in self.stream.xinfo_groups(stream)}
        return int(groups[self.settings.group].get("lag") or 0)

    def entries(self) -> list[tuple[str, Any]]:
        """Every shard's entries."""
        return [(sid.decode(), fields) for shard in self.dispatcher.shards
                for sid, fields in self.stream.xrange(shard.stream)]

    def close(self) -> None:
        context.install(None)
        self.worker.close()
        self.stream.close()
        self.queue.close()


@pytest.fixture
def pipeline_of() -> Iterator[Any]:
    made: list[Pipeline] = []

    def make(settings: Settings) -> Pipeline:
        made.append(Pipeline(settings))
        return made[-1]

    yield make
    for pipeline in made:
        pipeline.close()

