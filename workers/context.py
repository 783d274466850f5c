"""What a worker process holds: settings, the stream's and the queue's Redis clients, one small Postgres pool.

RQ calls job functions by import path, so each process builds its context once, lazily, after
any fork (a pool made before a fork must not be used after it); tests install their own.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool
from redis import Redis

from shared import connections
from shared.keywords import KeywordPolicy
from shared.providers import ParseContext
from shared.settings import Settings
from shared.shards import Shard
from workers.metrics import WorkerMetrics
from workers.normalize import NormalizeContext


@dataclass
class WorkerContext:
    settings: Settings
    redis: Redis  # the stream's: a job's entries, their acknowledgement, the parked stream
    pool: ConnectionPool
    normalize: NormalizeContext
    metrics: WorkerMetrics
    queue_redis: Redis  # RQ's: the entry → job map, the replay queue; `redis` when they share a server
    shards: tuple[Shard, ...]  # the raw stream's; a job names its shard by index

    @classmethod
    def open(cls, settings: Settings, registry: CollectorRegistry | None = None) -> WorkerContext:
        """`registry`: None for the process's default one (served by `hookstream worker`)."""
        redis = connections.worker_redis(settings)
        return cls(
            settings=settings,
            redis=redis,
            pool=connections.worker_pool(settings.database_url_or_default(), settings.pg_pool_size),
            normalize=normalize_context(settings),
            metrics=WorkerMetrics(registry),
            queue_redis=connections.queue_client(settings, connections.Role.WORKER, redis),
            shards=connections.stream_shards(settings, redis),
        )

    def shard(self, index: int) -> Shard:
        if not 0 <= index < len(self.shards):
            raise ValueError(f"a job of shard {index}, but this worker knows {len(self.shards)} shard(s):"
                             " is HOOKSTREAM_STREAM_SHARDS the same for every process?")
        return self.shards[index]

    def close(self) -> None:
        self.pool.close()
        self.redis.close()
        if self.queue_redis is not self.redis:
            self.queue_redis.close()


def normalize_context(settings: Settings) -> NormalizeContext:
    return NormalizeContext(
        parse=ParseContext(default_region=settings.default_region),
        keywords=KeywordPolicy.default(),
        leased_keywords={"gatewayapi": settings.gatewayapi_keywords},
    )


# A batch keeps ~10 container objects per entry alive until it ends (5,000 for 500 entries): young
# collections every 10,000 net allocations instead of 700 run about once a batch, not 6 times.
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Take what lives as long as the process (modules, the pool, the clients: tens of thousands of
    objects) out of the garbage collector's passes, and collect young objects about once a batch.

    Why: full passes walked all of them every 15–20 batches and young passes ran 6 times a batch,
    ~10 µs of CPU per entry in all (`gc` in bench/profile_workers.py), ~0 once settled. Nothing
    changes but when cyclic garbage is found; a cycle among the frozen objects would never be
    collected, and a worker keeps its pool and clients for its whole life.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


_by_process: dict[int, WorkerContext] = {}


def current() -> WorkerContext:
    """This process's context, built from the environment on first use (then the heap is settled)."""
    pid = os.getpid()
    context = _by_process.get(pid)
    if context is None:
        context = _by_process[pid] = WorkerContext.open(Settings.from_env(os.environ))
        settle_heap()
    return context


def install(context: WorkerContext | None) -> None:
    """Use `context` in this process (tests, and `hookstream worker` after building its own)."""
    if context is None:
        _by_process.pop(os.getpid(), None)
    else:
        _by_process[os.getpid()] = context
