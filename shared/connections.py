"""Every Redis client and Postgres connection or pool of the project: one factory per role.

A role is who connects and what it can afford to wait. The ingress answers providers in
seconds and retries nothing itself (a provider's retry is cheaper than a hung request); a worker
or the dispatcher rides out a short outage or a failover; RQ's worker blocks on its queues for
minutes by design; an operator's command, the dashboard and the API give up quickly. Those
numbers are the rows of one table, TIMEOUTS; the factories below only read it.

Redis is one server (HOOKSTREAM_REDIS_URL) or, with HOOKSTREAM_REDIS_SENTINELS set, whichever
server the Sentinels name as the primary of HOOKSTREAM_REDIS_SENTINEL_SERVICE. Then redis-py's
Sentinel-managed pool (`master_for`) asks them for the primary whenever a connection is made,
and a connection whose server went away or answers READONLY (a demoted primary) is dropped and
made again through them: a failover is followed without a restart. The URL then gives only the
db number, the username and the password (and TLS: `rediss://`); its host and port are ignored.

TCP keepalive is on everywhere, so a server whose host vanished (no reset ever comes) is noticed
within KEEPALIVE's ~25 s even by a connection that waits on a blocking read.

With HOOKSTREAM_REDIS_CLUSTER=1 the streams' clients (every role but the queue's) are redis-py's
RedisCluster on the nodes the URL names, with the same table's timeouts; they follow the cluster's
map of slots, so a failover is followed too. RQ cannot run on a cluster: its client is always a
plain Redis (HOOKSTREAM_QUEUE_REDIS_URL), found through the Sentinels when they are set.

Postgres factories take the URL (all Postgres needs); Redis factories take the settings (the URL,
the Sentinels, the service name, the cluster's nodes).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import psycopg
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection
from rq.defaults import DEFAULT_WORKER_TTL

from shared.errors import ConfigError
from shared.settings import Settings
from shared.shards import Shard, layout


class Role(StrEnum):
    INGRESS = "ingress"  # async Redis: the webhook appends and the ready probe
    DISPATCHER = "dispatcher"  # Redis: the stream and the jobs it enqueues; Postgres: its chores
    WORKER = "worker"  # Redis: a job's stream entries and acks; Postgres: the worker's pool
    QUEUE = "queue"  # Redis: RQ's own connection in `hookstream worker` (a blocking dequeue)
    CLI = "cli"  # the operator's commands: status, stats, dead-letters
    API = "api"  # the consent API's async Postgres pool
    API_READ = "api_read"  # the consent API's lookups, on HOOKSTREAM_DATABASE_READ_URL (a replica)
    DASHBOARD = "dashboard"  # the dashboard's sync Postgres pool and Redis client
    MIGRATE = "migrate"  # the one Postgres connection that applies the migrations


@dataclass(frozen=True, slots=True)
class Timeouts:
    """One role's row. Seconds unless named otherwise; None: no limit, or no such connection."""

    redis_connect_s: float | None = None  # making a Redis connection (and asking a Sentinel)
    redis_read_s: float | None = None  # the longest wait for a reply (socket_timeout)
    redis_retries: int = 0  # a command tried again after a connection error or a timeout, with BACKOFF
    pg_connect_s: int | None = None  # Postgres connect_timeout (libpq waits at least 2)
    pg_pool_wait_s: float | None = None  # the longest wait for a free pooled connection
    pg_statement_ms: int | None = None  # Postgres statement_timeout; None: the server's


# RQ's worker blocks on its queues for its TTL less 15 s (405 s by default): a shorter read timeout
# would turn every quiet minute into a "connection error" and a back-off sleep.
RQ_DEQUEUE_READ_S = float(DEFAULT_WORKER_TTL)

TIMEOUTS: Mapping[Role, Timeouts] = MappingProxyType({
    Role.INGRESS: Timeouts(redis_connect_s=1.0, redis_read_s=2.0, redis_retries=0),
    Role.DISPATCHER: Timeouts(redis_connect_s=2.0, redis_read_s=10.0, redis_retries=6, pg_connect_s=5),
    Role.WORKER: Timeouts(redis_connect_s=2.0, redis_read_s=10.0, redis_retries=6, pg_connect_s=5,
                          pg_pool_wait_s=30.0),
    Role.QUEUE: Timeouts(redis_connect_s=2.0, redis_read_s=RQ_DEQUEUE_READ_S, redis_retries=6),
    Role.CLI: Timeouts(redis_connect_s=2.0, redis_read_s=10.0, redis_retries=2, pg_connect_s=5),
    Role.API: Timeouts(pg_connect_s=5, pg_pool_wait_s=5.0),
    Role.API_READ: Timeouts(pg_connect_s=5, pg_pool_wait_s=5.0),
    Role.DASHBOARD: Timeouts(redis_connect_s=2.0, redis_read_s=2.0, redis_retries=1, pg_connect_s=3,
                             pg_pool_wait_s=2.0, pg_statement_ms=10_000),
    Role.MIGRATE: Timeouts(pg_connect_s=10),
})

# Between retries: 0.2, 0.4, 0.8, then 1 s: six retries span ~4.4 s, a Sentinel failover's length.
BACKOFF = ExponentialBackoff(cap=1.0, base=0.1)
# Idle 10 s, then a probe every 5 s, 3 unanswered: a vanished peer is an error after ~25 s.
KEEPALIVE = {"idle": 10, "interval": 5, "count": 3}
_SOCKET_KEEPALIVE = {getattr(socket, name): KEEPALIVE[key]
                     for name, key in (("TCP_KEEPIDLE", "idle"), ("TCP_KEEPINTVL", "interval"),
                                       ("TCP_KEEPCNT", "count")) if hasattr(socket, name)}


# -- Redis ------------------------------------------------------------------------------------------


def ingress_redis(settings: Settings) -> redis.asyncio.Redis:
    if settings.redis_cluster:
        return _async_cluster(settings, Role.INGRESS)
    return _async_redis(settings, Role.INGRESS)


def dispatcher_redis(settings: Settings) -> redis.Redis:
    return _stream_redis(settings, Role.DISPATCHER)


def worker_redis(settings: Settings) -> redis.Redis:
    return _stream_redis(settings, Role.WORKER)


def queue_redis(settings: Settings, role: Role = Role.QUEUE) -> redis.Redis:
    """Where RQ's queues live: HOOKSTREAM_QUEUE_REDIS_URL, by default the stream's Redis. With the
    Sentinels, their primary (the URL gives its db, username and password)."""
    return _redis(settings, role, settings.queue_redis_url_or_default())


def queue_shares_stream_redis(settings: Settings) -> bool:
    """RQ's queues live on the stream's own Redis: one client serves both."""
    return settings.queue_redis_url is None


def queue_client(settings: Settings, role: Role, stream_client: redis.Redis) -> redis.Redis:
    """`role`'s client of the queue Redis: `stream_client` itself when the queues live there (one
    connection where one suffices), else one of its own, which the caller closes too."""
    return stream_client if queue_shares_stream_redis(settings) else queue_redis(settings, role)


def cli_redis(settings: Settings) -> redis.Redis:
    return _stream_redis(settings, Role.CLI)


def dashboard_redis(settings: Settings) -> redis.Redis:
    return _stream_redis(settings, Role.DASHBOARD)


# -- the stream's shards ----------------------------------------------------------------------------


def shard_count(settings: Settings, client: Any) -> int:
    """HOOKSTREAM_STREAM_SHARDS; unset: 1, or on a cluster the primaries that serve slots now
    (`client` is then a connected RedisCluster, sync or async, whose map is read)."""
    if settings.stream_shards is not None:
        return settings.stream_shards
    if not settings.redis_cluster:
        return 1
    return max(1, len(client.get_primaries()))


def stream_shards(settings: Settings, client: Any) -> tuple[Shard, ...]:
    """The shards every process of this deployment reads and writes (shared/shards.py)."""
    return layout(settings.key_prefix, shard_count(settings, client))


async def stream_shards_async(settings: Settings, client: Any) -> tuple[Shard, ...]:
    """`stream_shards` for an async client: a cluster's map is read first when the count needs it."""
    if settings.redis_cluster and settings.stream_shards is None:
        await client.initialize()
    return stream_shards(settings, client)


def redis_options(role: Role) -> dict[str, Any]:
    """The role's row as redis-py connection arguments (but `retry`, whose class is sync or async)."""
    t = TIMEOUTS[role]
    return {"socket_connect_timeout": t.redis_connect_s, "socket_timeout": t.redis_read_s,
            "socket_keepalive": True, "socket_keepalive_options": _SOCKET_KEEPALIVE}


def sentinel_options(role: Role) -> dict[str, Any]:
    """For the questions to the Sentinels: as quick as the role's connect, whatever it waits for its
    replies; no retries, so a Sentinel that is down costs one refused connection, then the next is asked."""
    t = TIMEOUTS[role]
    return {"socket_connect_timeout": t.redis_connect_s, "socket_timeout": t.redis_connect_s}


def primary_options(url: str) -> dict[str, Any]:
    """What a URL still says when the Sentinels name the server: db, username, password, TLS and
    any query-string option; its host and port are dropped."""
    options: dict[str, Any] = parse_url(url)
    options.pop("host", None)
    options.pop("port", None)
    kind = options.pop("connection_class", None)
    if kind is UnixDomainSocketConnection:
        raise ConfigError("a unix:// Redis URL cannot name a server found through HOOKSTREAM_REDIS_SENTINELS")
    if kind is SSLConnection:
        options["ssl"] = True  # the Sentinel-managed pool then picks its TLS connection class
    return options


class _FollowingConnection(SentinelManagedConnection):  # type: ignore[misc]  # redis-py is Any here
    """redis-py's Sentinel-managed connection, made again through the Sentinels in every case.

    Only its `connect` asks them for the primary; `send_packed_command` reconnects a closed
    connection by itself, to the address it had. That is the path of a command's own retry after a
    connection error, and of a connection used outside a pool (the ingress appender's): without
    this, both would go on calling a dead or demoted primary.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)


class _FollowingSSLConnection(_FollowingConnection, SSLConnection):  # type: ignore[misc]
    pass


class _AsyncFollowingConnection(AsyncSentinelManagedConnection):  # type: ignore[misc]
    """_FollowingConnection, async."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()
        await super().send_packed_command(command, check_health)


class _AsyncFollowingSSLConnection(_AsyncFollowingConnection, AsyncSSLConnection):  # type: ignore[misc]
    pass


class _Sentinels(Sentinel):  # type: ignore[misc]
    """redis-py's Sentinel manager, asking for the primary one caller at a time.

    Its discover_master moves the Sentinel that answered to the front of its list with an index
    taken before the question; two callers at once (threads here, tasks below) can overwrite one
    Sentinel with another, so that it is asked no more and never closed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking = threading.Lock()

    def discover_master(self, service_name: str) -> Any:
        with self._asking:
            return super().discover_master(service_name)


class _AsyncSentinels(AsyncSentinel):  # type: ignore[misc]
    """_Sentinels, async."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking = asyncio.Lock()

    async def discover_master(self, service_name: str) -> Any:
        async with self._asking:
            return await super().discover_master(service_name)


class _SentinelRedis(redis.Redis):  # type: ignore[misc]  # redis-py is read as Any (pyproject.toml)
    """A client of the primary that closes its connections to the Sentinels with its own."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)  # None in RQ's forked rebuild
        for sentinel in manager.sentinels if manager is not None else ():
            sentinel.close()


class _AsyncSentinelRedis(redis.asyncio.Redis):  # type: ignore[misc]
    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            await manager.aclose()


def _stream_redis(settings: Settings, role: Role) -> redis.Redis:
    if settings.redis_cluster:
        return _cluster(settings, role)
    return _redis(settings, role, settings.redis_url_or_default())


def cluster_options(settings: Settings) -> dict[str, Any]:
    """What the first node's URL says for every node: username, password, TLS (db is 0 on a cluster)."""
    options = primary_options(settings.redis_url_or_default())
    options.pop("db", None)
    return options


def _cluster(settings: Settings, role: Role) -> redis.Redis:
    """A RedisCluster of the role's row. Its retries, with the row's backoff, also cover the cluster's
    own errors (a moved slot, a failover in progress), after which it reads the map again."""
    retries = TIMEOUTS[role].redis_retries
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in settings.redis_cluster_nodes]
    return redis.cluster.RedisCluster(startup_nodes=nodes, retry=Retry(BACKOFF if retries else NoBackoff(), retries),
                                      **redis_options(role), **cluster_options(settings))


def _async_cluster(settings: Settings, role: Role) -> redis.asyncio.Redis:
    """Not connected until first used (or `initialize`d): the ingress starts listening without it."""
    retries = TIMEOUTS[role].redis_retries
    nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in settings.redis_cluster_nodes]
    return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes,
                                              retry=AsyncRetry(BACKOFF if retries else NoBackoff(), retries),
                                              **redis_options(role), **cluster_options(settings))


def _redis(settings: Settings, role: Role, url: str) -> redis.Redis:
    retries = TIMEOUTS[role].redis_retries
    retry = Retry(BACKOFF if retries else NoBackoff(), retries)
    if not settings.redis_sentinels:
        return redis.Redis.from_url(url, retry=retry, **redis_options(role))
    sentinels = _Sentinels(list(settings.redis_sentinels),
                         sentinel_kwargs={**sentinel_options(role), "retry": Retry(NoBackoff(), 0)})
    primary = primary_options(url)
    kind = _FollowingSSLConnection if primary.get("ssl") else _FollowingConnection
    return sentinels.master_for(settings.redis_sentinel_service, redis_class=_SentinelRedis, connection_class=kind,
                                retry=retry, **redis_options(role), **primary)


def _async_redis(settings: Settings, role: Role) -> redis.asyncio.Redis:
    retries = TIMEOUTS[role].redis_retries
    retry = AsyncRetry(BACKOFF if retries else NoBackoff(), retries)
    url = settings.redis_url_or_default()
    if not settings.redis_sentinels:
        return redis.asyncio.Redis.from_url(url, retry=retry, **redis_options(role))
    # One connection per Sentinel, held by its client: a pooled one is held weakly while in use, and
    # a question cancelled while it waits to be handed back (the appender's deadline) would drop it
    # still open.
    sentinels = _AsyncSentinels(list(settings.redis_sentinels),
                              sentinel_kwargs={**sentinel_options(role), "retry": AsyncRetry(NoBackoff(), 0),
                                               "single_connection_client": True})
    primary = primary_options(url)
    kind = _AsyncFollowingSSLConnection if primary.get("ssl") else _AsyncFollowingConnection
    return sentinels.master_for(settings.redis_sentinel_service, redis_class=_AsyncSentinelRedis,
                                connection_class=kind, retry=retry, **redis_options(role), **primary)


# -- Postgres ---------------------------------------------------------------------------------------


def postgres_options(role: Role) -> dict[str, Any]:
    """The role's row as libpq connection parameters, TCP keepalive included."""
    t = TIMEOUTS[role]
    options: dict[str, Any] = {"connect_timeout": t.pg_connect_s, "keepalives": 1,
                               "keepalives_idle": KEEPALIVE["idle"], "keepalives_interval": KEEPALIVE["interval"],
                               "keepalives_count": KEEPALIVE["count"]}
    if t.pg_statement_ms is not None:
        options["options"] = f"-c statement_timeout={t.pg_statement_ms}"
    return options


def _pool_wait_s(role: Role) -> float:
    wait = TIMEOUTS[role].pg_pool_wait_s
    assert wait is not None, f"{role} has no Postgres pool"
    return wait


def worker_pool(database_url: str, size: int) -> ConnectionPool:
    """Opened at once, without waiting for Postgres. prepare_threshold=None keeps it usable behind
    PgBouncer in transaction mode."""
    return ConnectionPool(database_url, min_size=1, max_size=size, open=True, name="hookstream-worker",
                          timeout=_pool_wait_s(Role.WORKER),
                          kwargs={"prepare_threshold": None, **postgres_options(Role.WORKER)})


def api_pool(database_url: str, size: int) -> AsyncConnectionPool[Any]:
    """Not opened: the API opens it without waiting, so it starts with Postgres down (503s).
    Autocommit: reads need no transaction (writes open their own). No prepared statements (PgBouncer).
    Checked before use: after a Postgres restart no request gets a dead connection."""
    return AsyncConnectionPool(database_url, min_size=1, max_size=size, open=False, name="hookstream-api",
                               timeout=_pool_wait_s(Role.API), check=AsyncConnectionPool.check_connection,
                               kwargs={"prepare_threshold": None, "autocommit": True, **postgres_options(Role.API)})


def api_read_pool(read_url: str, size: int) -> AsyncConnectionPool[Any]:
    """The consent API's lookups on a streaming replica (HOOKSTREAM_DATABASE_READ_URL): as `api_pool`,
    its own connections, so a replica that is down or behind never holds up the writes and the feed."""
    return AsyncConnectionPool(read_url, min_size=1, max_size=size, open=False, name="hookstream-api-read",
                               timeout=_pool_wait_s(Role.API_READ), check=AsyncConnectionPool.check_connection,
                               kwargs={"prepare_threshold": None, "autocommit": True,
                                       **postgres_options(Role.API_READ)})


def dashboard_pool(database_url: str, size: int, wait_s: float | None = None) -> ConnectionPool[Any]:
    """Not opened (the dashboard opens it without waiting). No startup `options`: PgBouncer refuses
    that parameter, so the statement timeout and UTC are set in each read's own transaction
    (`dashboard_read`). `wait_s`: less than the table's pool wait (tests of a Postgres that is down)."""
    options = postgres_options(Role.DASHBOARD)
    options.pop("options", None)
    return ConnectionPool(database_url, min_size=1, max_size=size, open=False, name="hookstream-dashboard",
                          timeout=_pool_wait_s(Role.DASHBOARD) if wait_s is None else wait_s,
                          check=ConnectionPool.check_connection,
                          kwargs={"autocommit": True, "prepare_threshold": None, **options})


# Local to the transaction: behind PgBouncer in transaction mode the next transaction on the same
# server connection may be another client's, so nothing is set for the session.
DASHBOARD_SETTINGS_SQL = "SELECT set_config('statement_timeout', %s, true), set_config('TimeZone', 'UTC', true)"


@contextmanager
def dashboard_read(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the dashboard's pool inside one transaction whose statements are bounded by the
    dashboard's row and whose times are UTC. A statement that fails aborts the transaction: the
    caller reads nothing more on it (its error is the section's)."""
    with pool.connection() as conn, conn.transaction():
        conn.execute(DASHBOARD_SETTINGS_SQL, (str(TIMEOUTS[Role.DASHBOARD].pg_statement_ms),))
        yield conn


def connect(database_url: str, role: Role, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    """One connection of `role` (the dispatcher's chores, an operator's command, the migrations);
    `kwargs` are psycopg's own (row_factory, …). No prepared statements: the dispatcher's connection
    lives long and repeats its statements, and behind PgBouncer in transaction mode they would be
    prepared on one server connection and run on another."""
    return psycopg.connect(database_url, autocommit=autocommit, **postgres_options(role),
                           **{"prepare_threshold": None, **kwargs})


async def connect_async(database_url: str, role: Role) -> psycopg.AsyncConnection[Any]:
    """One autocommit connection of `role`, for an async caller without a pool."""
    return await psycopg.AsyncConnection.connect(database_url, autocommit=True, prepare_threshold=None,
                                                 **postgres_options(role))
