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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import chain
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from shared.errors import StoreUnavailable

_Pending = tuple[bytes, "asyncio.Future[bytes]"]


class ReplicaAckMissing(StoreUnavailable):
    """The append reached Redis, but fewer replicas than required confirmed it in time (503)."""


class Appender:
    def __init__(self, redis: Redis, stream: str, *, max_batch: int = 512, timeout_s: float = 2.0,
                 replicas: int = 0, replica_timeout_ms: int = 1000,
                 on_batch: Callable[[int], None] | None = None,
                 on_replicas: Callable[[int], None] | None = None) -> None:
        """`on_batch` sees the size of every round trip (how much coalescing the load allows);
        `on_replicas` the replicas that WAIT counted, once per round trip (only with `replicas` > 0).

        `timeout_s` is the round trip's deadline without replicas; with them it grows by the WAIT
        timeout, so that a WAIT that runs out is answered by Redis rather than cut off here."""
        self._redis = redis
        self._on_batch = on_batch
        self._on_replicas = on_replicas
        self._stream = stream.encode()
        self._max_batch = max_batch
        self._replicas = replicas
        # Packed once: appended to every round trip, after its XADDs, when replicas are required.
        self._wait = hiredis.pack_command(
            (b"WAIT", b"%d" % replicas, b"%d" % replica_timeout_ms)) if replicas else None  # type: ignore[arg-type]
        self._timeout_s = timeout_s + (replica_timeout_ms / 1000 if replicas else 0.0)
        self._pending: list[_Pending] = []
        self._drain_task: asyncio.Task[None] | None = None
        pool = redis.connection_pool
        self._connection: AbstractConnection = pool.connection_class(
            **{**pool.connection_kwargs, "socket_timeout": None})

    async def append(self, fields: dict[bytes, bytes]) -> bytes:
        """The new entry's stream id, once Redis holds it."""
        # hiredis's stub types the command as a 1-tuple; any tuple of bytes is what it packs.
        command = hiredis.pack_command(
            (b"XADD", self._stream, b"*", *chain.from_iterable(fields.items())))  # type: ignore[arg-type]
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future))
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain())
        return await future

    async def close(self) -> None:
        """At shutdown: a round trip still in flight fails its requests (503), then the connection closes."""
        task = self._drain_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for _, future in self._pending:
            if not future.done():
                future.set_exception(StoreUnavailable("append failed: shutting down"))
        self._pending.clear()
        await self._connection.disconnect()

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

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            if self._on_batch is not None:
                self._on_batch(len(batch))
            commands = [command for command, _ in batch]
            if self._wait is not None:
                commands.append(self._wait)
            async with asyncio.timeout(self._timeout_s):
                results = await self._round_trip(commands)
        except BaseException as exc:  # a failed round trip, or a cancellation: nothing in it is acknowledged
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreUnavailable(f"append failed: {type(exc).__name__}"))
            # The connection may hold unread replies: it starts afresh on the next round trip.
            await self._connection.disconnect(nowait=True)
            if not isinstance(exc, Exception):
                raise
            return
        if self._wait is not None:
            missing = self._missing_replicas(results.pop())
            if missing is not None:  # stored, but not acknowledged: every append of the round trip fails
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_exception(StoreUnavailable(f"append refused: {result}")
                                             if isinstance(result, ResponseError) else ReplicaAckMissing(missing))
                return
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, ResponseError):
                future.set_exception(StoreUnavailable(f"append refused: {result}"))
            else:
                future.set_result(result)

    def _missing_replicas(self, reply: Any) -> str | None:
        """None when WAIT's reply counts enough replicas; otherwise why the round trip's appends fail."""
        if isinstance(reply, ResponseError):  # e.g. sent to a replica, which refuses WAIT
            return f"append not confirmed by replicas: {reply}"
        if self._on_replicas is not None:
            self._on_replicas(reply)
        if reply >= self._replicas:
            return None
        return f"append confirmed by {reply} of {self._replicas} required replicas in time"

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        connection = self._connection
        await connection.send_packed_command(b"".join(commands), check_health=False)
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except ResponseError as exc:  # the reply was read: the connection is still in step
                results.append(exc)
        return results
