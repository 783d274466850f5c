"""Coalesced stream appends: requests that arrive while a round trip is in flight share the next one.

One drain task sends every waiting record in one pipelined round trip, so one process keeps
up with thousands of requests per second, and each request is answered only after its own
XADD returned. A failed or slow round trip fails its requests with StoreUnavailable (503).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from shared.errors import StoreUnavailable

_Pending = tuple[dict[bytes, bytes], "asyncio.Future[bytes]"]


class Appender:
    def __init__(self, redis: Redis, stream: str, *, max_batch: int = 512, timeout_s: float = 2.0) -> None:
        self._redis = redis
        self._stream = stream
        self._max_batch = max_batch
        self._timeout_s = timeout_s
        self._pending: list[_Pending] = []
        self._drain_task: asyncio.Task[None] | None = None

    async def append(self, fields: dict[bytes, bytes]) -> bytes:
        """The new entry's stream id, once Redis holds it."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append((fields, future))
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._send(batch)
        finally:
            self._drain_task = None

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for fields, _ in batch:
                pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
            results: list[Any] = await asyncio.wait_for(pipe.execute(raise_on_error=False), self._timeout_s)
        except Exception as exc:  # any failure of the round trip: nothing in it is acknowledged
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreUnavailable(f"append failed: {type(exc).__name__}"))
            return
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(StoreUnavailable(f"append refused: {result}"))
            else:
                future.set_result(result)
