"""The coalescing appender against a real redis-server: one round trip for many requests, each
answered with its own reply."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.asyncio import Redis

from ingress.appender import Appender
from shared.errors import StoreUnavailable

FIELDS = {b"p": b"mx2", b"b": b"\x00binary\xff body"}


def run(redis_url: str, scenario) -> object:  # type: ignore[no-untyped-def]
    async def main() -> object:
        client = Redis.from_url(redis_url)
        appender = Appender(client, "hookstream:raw")
        try:
            return await scenario(appender)
        finally:
            await appender.close()
            await client.aclose()

    return asyncio.run(main())


def test_concurrent_appends_share_round_trips_and_get_their_own_ids(redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario(appender: Appender) -> list[bytes]:
        return await asyncio.gather(*(appender.append({**FIELDS, b"n": str(i).encode()}) for i in range(300)))

    ids = run(redis_url, scenario)
    entries = redis_client.xrange("hookstream:raw")
    assert [sid for sid, _ in entries] == ids
    assert [fields[b"n"] for _, fields in entries] == [str(i).encode() for i in range(300)]
    assert entries[0][1][b"b"] == FIELDS[b"b"]


def test_refusals_fail_their_requests_and_keep_the_connection(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.set("hookstream:raw", "not a stream")

    async def scenario(appender: Appender) -> tuple[list[object], bool, bytes]:
        refused = await asyncio.gather(*(appender.append(FIELDS) for _ in range(5)), return_exceptions=True)
        still_connected = appender._shards[0]._connection.is_connected
        await asyncio.to_thread(redis_client.delete, "hookstream:raw")
        sid = await appender.append(FIELDS)
        return refused, still_connected, sid

    refused, still_connected, sid = run(redis_url, scenario)  # type: ignore[misc]
    assert all(isinstance(r, StoreUnavailable) and "WRONGTYPE" in str(r) for r in refused)
    assert still_connected
    assert redis_client.xrange("hookstream:raw")[0][0] == sid


def test_unreachable_redis_is_store_unavailable() -> None:
    async def scenario(appender: Appender) -> None:
        await appender.append(FIELDS)

    with pytest.raises(StoreUnavailable):
        run("redis://127.0.0.1:1", scenario)


def test_closing_fails_what_is_in_flight_instead_of_leaving_it_waiting(redis_url: str,
                                                                      redis_client: redis.Redis) -> None:
    async def scenario(appender: Appender) -> list[object]:
        await asyncio.to_thread(redis_client.execute_command, "CLIENT", "PAUSE", "1000", "WRITE")
        waiting = [asyncio.ensure_future(appender.append(FIELDS)) for _ in range(3)]
        await asyncio.sleep(0.2)  # the round trip is in flight, held by the pause
        await appender.close()
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 1.0)
        await asyncio.to_thread(redis_client.execute_command, "CLIENT", "UNPAUSE")
        return outcomes

    outcomes = run(redis_url, scenario)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)  # type: ignore[union-attr]
