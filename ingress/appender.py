"""Coalesced stream appends: requests that arrive while a round trip is in flight share the next one.

One drain task writes every waiting XADD in one pipelined round trip on a connection of its
own, so one process keeps up with thousands of requests per second, and each request is
answered only after its own XADD returned. A failed or slow round trip fails its requests with
StoreUnavailable (503).

Commands are packed by hiredis when the request arrives and written as one buffer: redis-py's
pipeline object spent more CPU per request than the rest of the ingress together (measured by
the ingress profile). redis-py still makes the connection (URL, TLS, AUTH) with the client's
settings, except the per-read socket timeout: the round trip has one deadline of its own.

With `replicas` > 0 the round trip ends with `WAIT replicas timeout`: its requests are answered
only once that many replicas confirmed every write made on this connection before it (all of the
round trip's XADDs), and fail with ReplicaAckMissing (503) when fewer did within the timeout. Those
entries stay in the stream: the provider's retry appends a second one, which dedupe downstream
drops. The round trip's deadline grows by the WAIT timeout. With 0 no WAIT is sent.

With several shards (shared/shards.py) each coalesced round trip goes to one shard, the next in
turn, on a connection of that shard's own: on a Redis Cluster, to the primary that holds the
shard's slot, so that its WAIT counts that primary's replicas. When a shard fails with a failover
class error (no connection, a timeout, CLUSTERDOWN, MOVED, READONLY, TRYAGAIN, LOADING, or
too few replicas), the round trip's requests go to the next shard instead of failing, and the
failed shard is passed over for a short, growing while; only when every shard failed are they
answered 503. With one shard nothing changes.

Why the order does not matter: every effect downstream is independent of the order in which
requests are stored and read. Events are keyed (a duplicate, such as the provider's retry after a
503 whose first append did land, is dropped by its key), a message's status only moves forward by
the provider's time, and consent changes are ordered by the event's time; so requests of one
message or one person may land on different shards, and be committed in any order, with the same
final rows (tests/cluster/test_shuffle.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from shared.errors import StoreUnavailable

log = logging.getLogger("hookstream.ingress")

_Pending = tuple[dict[bytes, bytes], "asyncio.Future[bytes]"]

# Replies that mean "this shard's primary is failing over or gone", not "this request is refused".
FAILOVER_REPLIES = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "MASTERDOWN", "LOADING", "NOREPLICAS")
PASS_OVER_FIRST_S = 0.25  # a failed shard is passed over this long, doubling up to PASS_OVER_MAX_S
PASS_OVER_MAX_S = 2.0
REFRESH_EVERY_S = 0.5  # at most one cluster map refresh this often while shards fail


class ReplicaAckMissing(StoreUnavailable):
    """The append reached Redis, but fewer replicas than required confirmed it in time (503)."""


def is_failover_reply(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith(FAILOVER_REPLIES)


class _Shard:
    """One shard's stream and the connection its round trips use; on a cluster, made to the primary
    that the client's map names for the stream's slot, again after each failure."""

    def __init__(self, index: int, redis: Redis, stream: str, cluster: bool) -> None:
        self.index = index
        self.stream = stream.encode()
        self._redis = redis
        self._cluster = cluster
        self._connection: AbstractConnection | None = None if cluster else self._plain()
        self.passed_over_until = 0.0
        self._pass_over_s = PASS_OVER_FIRST_S

    def _plain(self) -> AbstractConnection:
        pool = self._redis.connection_pool
        return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})

    async def connection(self) -> AbstractConnection:
        if self._connection is None:
            await self._redis.initialize()  # reads the cluster's map the first time only
            node = self._redis.get_node_from_key(self.stream)
            self._connection = node.connection_class(
                **{**node.connection_kwargs, "socket_timeout": None, "retry": Retry(NoBackoff(), 0)})
        return self._connection

    async def reset(self) -> None:
        """The connection may hold unread replies: it starts afresh (on a cluster: to the node the map names then)."""
        if self._connection is not None:
            await self._connection.disconnect(nowait=True)
            if self._cluster:
                self._connection = None

    def failed(self, now: float) -> bool:
        """Passed over for a while; True when it was healthy until now (worth a log line)."""
        was_healthy = self._pass_over_s == PASS_OVER_FIRST_S
        self.passed_over_until = now + self._pass_over_s
        self._pass_over_s = min(self._pass_over_s * 2, PASS_OVER_MAX_S)
        return was_healthy

    def worked(self) -> None:
        self.passed_over_until = 0.0
        self._pass_over_s = PASS_OVER_FIRST_S


class Appender:
    def __init__(self, redis: Redis, stream: str | Sequence[str], *, max_batch: int = 512, timeout_s: float = 2.0,
                 replicas: int = 0, replica_timeout_ms: int = 1000, cluster: bool = False,
                 on_batch: Callable[[int], None] | None = None,
                 on_replicas: Callable[[int], None] | None = None) -> None:
        """`stream`: the stream, or the shards' streams in shard order (`cluster`: `redis` is a
        redis.asyncio.cluster.RedisCluster). `on_batch` sees the size of every round trip (how much
        coalescing the load allows); `on_replicas` the replicas that WAIT counted, once per round
        trip (only with `replicas` > 0).

        `timeout_s` is the round trip's deadline without replicas; with them it grows by the WAIT
        timeout, so that a WAIT that runs out is answered by Redis rather than cut off here."""
        self._redis = redis
        self._on_batch = on_batch
        self._on_replicas = on_replicas
        streams = [stream] if isinstance(stream, str) else list(stream)
        self._shards = [_Shard(i, redis, name, cluster) for i, name in enumerate(streams)]
        self._cluster = cluster
        self._turn = 0
        self._refreshed_at = 0.0
        self._max_batch = max_batch
        self._replicas = replicas
        # Packed once: appended to every round trip, after its XADDs, when replicas are required.
        self._wait = hiredis.pack_command(
            (b"WAIT", b"%d" % replicas, b"%d" % replica_timeout_ms)) if replicas else None  # type: ignore[arg-type]
        self._timeout_s = timeout_s + (replica_timeout_ms / 1000 if replicas else 0.0)
        self._pending: list[_Pending] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None

    async def append(self, fields: dict[bytes, bytes]) -> bytes:
        """The new entry's stream id, once Redis holds it."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append((fields, future))
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain())
        return await future

    async def close(self) -> None:
        """At shutdown: a round trip still in flight fails its requests (503), then the connections close."""
        for task in (self._drain_task, self._refresh_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for _, future in self._pending:
            if not future.done():
                future.set_exception(StoreUnavailable("append failed: shutting down"))
        self._pending.clear()
        for shard in self._shards:
            await shard.reset()

    async def _drain(self) -> None:
        try:
            while self._pending:
                # With a WAIT, a round trip lasts as long as the replicas take (the whole timeout when
                # one is down): everything waiting rides the next one, so a request waits for at most
                # two round trips however fast requests arrive.
                size = self._max_batch if self._wait is None else len(self._pending)
                batch = self._pending[:size]
                del self._pending[:size]
                await self._send(batch)
        finally:
            self._drain_task = None

    def _next_shard(self, tried: set[int]) -> _Shard | None:
        """The next shard in turn that was not tried for this batch, passing over those that failed
        lately while another is left; None when every shard was tried."""
        if len(self._shards) == 1:
            return None if tried else self._shards[0]
        now = time.monotonic()
        order = [self._shards[(self._turn + i) % len(self._shards)] for i in range(len(self._shards))]
        left = [shard for shard in order if shard.index not in tried]
        if not left:
            return None
        chosen = next((shard for shard in left if shard.passed_over_until <= now),
                      min(left, key=lambda shard: shard.passed_over_until))
        if not tried:
            self._turn = (chosen.index + 1) % len(self._shards)
        return chosen

    async def _send(self, batch: list[_Pending]) -> None:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        tried: set[int] = set()
        failure: StoreUnavailable | None = None
        while batch:
            shard = self._next_shard(tried)
            if shard is None:  # every shard failed: 503
                assert failure is not None
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                return
            tried.add(shard.index)
            batch, failure = await self._send_to(shard, batch)

    async def _send_to(self, shard: _Shard, batch: list[_Pending]) -> tuple[list[_Pending], StoreUnavailable | None]:
        """One round trip to `shard`: answers what it settled; returns the requests to try on
        another shard (a failover class failure) and that failure."""
        try:
            commands = [hiredis.pack_command((b"XADD", shard.stream, b"*",  # type: ignore[arg-type]
                                              *chain.from_iterable(fields.items()))) for fields, _ in batch]
            if self._wait is not None:
                commands.append(self._wait)
            async with asyncio.timeout(self._timeout_s):
                results = await self._round_trip(await shard.connection(), commands)
        except BaseException as exc:  # a failed round trip, or a cancellation: nothing in it is acknowledged
            await shard.reset()
            if not isinstance(exc, Exception):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(StoreUnavailable(f"append failed: {type(exc).__name__}"))
                raise
            self._shard_failed(shard, exc)
            return batch, StoreUnavailable(f"append failed: {type(exc).__name__}")
        if self._wait is not None:
            missing = self._missing_replicas(results.pop())
            if missing is not None:  # stored, but not acknowledged: no append of the round trip is answered 200
                again: list[_Pending] = []
                for item, result in zip(batch, results):
                    if isinstance(result, ResponseError) and not is_failover_reply(result):
                        if not item[1].done():
                            item[1].set_exception(StoreUnavailable(f"append refused: {result}"))
                    else:  # tried on another shard; this copy, if stored, is a duplicate that dedupe drops
                        again.append(item)
                self._shard_failed(shard, missing)
                return again, missing
        moved: list[_Pending] = []
        failure: StoreUnavailable | None = None
        for item, result in zip(batch, results):
            future = item[1]
            if future.done():
                continue
            if is_failover_reply(result):
                moved.append(item)
                failure = StoreUnavailable(f"append refused: {result}")
            elif isinstance(result, ResponseError):
                future.set_exception(StoreUnavailable(f"append refused: {result}"))
            else:
                future.set_result(result)
        if moved:
            self._shard_failed(shard, failure)
        else:
            shard.worked()
        return moved, failure

    def _shard_failed(self, shard: _Shard, why: object) -> None:
        if shard.failed(time.monotonic()) and len(self._shards) > 1:
            log.warning("stream shard %d failed (%s): its batches go to the other shards for a while",
                        shard.index, str(why)[:200] or type(why).__name__)
        if self._cluster and self._refresh_task is None and time.monotonic() - self._refreshed_at > REFRESH_EVERY_S:
            self._refreshed_at = time.monotonic()
            self._refresh_task = asyncio.create_task(self._refresh_map())

    async def _refresh_map(self) -> None:
        """The cluster's slot map read again, so that a promoted replica is found (in the background)."""
        try:
            await self._redis.nodes_manager.initialize()
        except Exception as exc:  # the next failure tries again
            log.debug("cluster map refresh failed: %s", exc)
        finally:
            self._refresh_task = None

    def _missing_replicas(self, reply: Any) -> ReplicaAckMissing | None:
        """None when WAIT's reply counts enough replicas; otherwise why the round trip's appends fail."""
        if isinstance(reply, ResponseError):  # e.g. sent to a replica, which refuses WAIT
            return ReplicaAckMissing(f"append not confirmed by replicas: {reply}")
        if self._on_replicas is not None:
            self._on_replicas(reply)
        if reply >= self._replicas:
            return None
        return ReplicaAckMissing(f"append confirmed by {reply} of {self._replicas} required replicas in time")

    async def _round_trip(self, connection: AbstractConnection, commands: list[bytes]) -> list[Any]:
        await connection.send_packed_command(b"".join(commands), check_health=False)
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except ResponseError as exc:  # the reply was read: the connection is still in step
                results.append(exc)
        return results
