"""Redis behind Sentinels, with real processes: every role's client finds the primary through them,
uses the URL's db and password but not its host and port, and follows a failover (asked for, or a
`kill -9` of the primary) without being rebuilt: a sync client, an async client and the ingress
appender, whose connection is its own and not the pool's.

"Followed" is measured from the fault to the first write that lands on the new primary: a write
started after the promotion that the new primary holds was made there (a replica promoted no
longer receives what the old primary takes). Writes the old primary still took after the
promotion are counted as lost: Sentinel demotes it only seconds later, and its replica resync
drops them (Redis's own behavior: HOOKSTREAM_APPEND_REPLICAS turns such appends into 503s).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from ingress.appender import Appender
from shared import connections
from shared.connections import TIMEOUTS, Role
from shared.errors import StoreUnavailable
from shared.settings import Settings
from tests.ha.conftest import DB, NOWHERE, sentinel_settings
from tests.ha.servers import PASSWORD, SentinelGroup

ROOT = Path(__file__).resolve().parents[2]
SYNC_ROLES: dict[Role, Callable[[Settings], redis.Redis]] = {
    Role.DISPATCHER: connections.dispatcher_redis, Role.WORKER: connections.worker_redis,
    Role.QUEUE: connections.queue_redis, Role.CLI: connections.cli_redis, Role.DASHBOARD: connections.dashboard_redis,
}
FOLLOW_S = 30.0  # Sentinel demotes a primary that was failed over only ~10 s later: that sets the pace
WRITE_EVERY_S = 0.05


def test_every_role_reaches_the_primary_through_the_sentinels(sentinels: SentinelGroup) -> None:
    settings = sentinel_settings(sentinels)
    primary = sentinels.client(sentinels.primary_port(), db=DB)
    for role, factory in SYNC_ROLES.items():
        with factory(settings) as client:
            client.set(f"role:{role}", role.value)
            kwargs = client.connection_pool.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["retry"].get_retries()) == (
                TIMEOUTS[role].redis_read_s, TIMEOUTS[role].redis_retries), role
        assert primary.get(f"role:{role}") == role.value.encode(), role

    async def ingress() -> bytes:
        client = connections.ingress_redis(settings)
        appender = Appender(client, settings.stream)
        try:
            await client.set("role:ingress", "ingress")
            return await appender.append({b"k": b"v"})
        finally:
            await appender.close()
            await client.aclose()

    entry = asyncio.run(ingress())
    assert primary.get("role:ingress") == b"ingress"
    assert primary.xrange(settings.stream, entry, entry), "the appender's own connection reached the primary"
    # The URL's db number was used: nothing landed in db 0.
    assert sentinels.client(sentinels.primary_port(), db=0).dbsize() == 0


def test_the_urls_password_is_used(sentinels: SentinelGroup) -> None:
    with connections.cli_redis(sentinel_settings(sentinels, password="not-the-password")) as client:
        with pytest.raises(redis.AuthenticationError):
            client.ping()


def test_the_status_command_finds_the_primary_through_the_sentinels(sentinels: SentinelGroup,
                                                                    database_url: str) -> None:
    """The contract holds for every process, the operator's commands included."""
    settings = sentinel_settings(sentinels, key_prefix="ha-status")
    sentinels.client(sentinels.primary_port(), db=DB).xadd(settings.stream, {b"k": b"v"})
    done = hookstream(sentinels, "status", "--json", HOOKSTREAM_KEY_PREFIX="ha-status",
                      HOOKSTREAM_DATABASE_URL=database_url)
    report = json.loads(done.stdout)
    assert report["stream_length"] == 1, done.stdout + done.stderr
    assert not [e for e in report["errors"] if e.startswith("redis")], report["errors"]


def test_the_worker_pool_rebuilds_its_connection_through_the_sentinels(sentinels: SentinelGroup) -> None:
    """RQ's pool makes each worker process's connection again from the parent's: it must still
    be a Sentinel-managed one (the workers register on the primary, in the URL's db)."""
    primary = sentinels.client(sentinels.primary_port(), db=DB)
    before = set(primary.keys("rq:worker:*"))
    done = hookstream(sentinels, "worker", "-n", "2", "--burst", HOOKSTREAM_WORKER_METRICS_PORT="0")
    assert done.returncode == 0, done.stderr
    assert len(set(primary.keys("rq:worker:*")) - before) == 2, done.stderr


def hookstream(group: SentinelGroup, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A `hookstream` command whose Redis URL leads nowhere but to the Sentinels' primary's db."""
    variables = {**os.environ, "HOOKSTREAM_REDIS_URL": f"redis://:{PASSWORD}@{NOWHERE}/{DB}",
                 "HOOKSTREAM_REDIS_SENTINELS": group.addresses, "HOOKSTREAM_LOG_LEVEL": "ERROR", **env}
    return subprocess.run([sys.executable, "-m", "hookstream.cli", *args], env=variables, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


# -- failovers --------------------------------------------------------------------------------------


class Followed:
    """When each writer first wrote on the new primary, and how many of its writes the old one took."""

    def __init__(self, group: SentinelGroup) -> None:
        self.group = group
        self.started = 0.0
        self.promoted_at: float | None = None
        self.new_port: int | None = None
        self.seconds: dict[str, float] = {}
        self.lost: dict[str, int] = {}
        self.lock = threading.Lock()

    def fault(self, cause: Callable[[], tuple[int, int]]) -> None:
        self.started = time.monotonic()
        _, self.new_port = cause()
        self.promoted_at = time.monotonic()

    def landed(self, name: str, began: float, on_new_primary: Callable[[redis.Redis], bool]) -> bool:
        """A write that `began` then succeeded: True once it is the first one found on the new primary."""
        if self.promoted_at is None or began < self.promoted_at or self.new_port is None:
            return False
        with self.group.client(self.new_port, db=DB) as new:
            found = on_new_primary(new)
        with self.lock:
            if found:
                self.seconds[name] = round(time.monotonic() - self.started, 2)
            else:
                self.lost[name] = self.lost.get(name, 0) + 1
        return found

    def running(self) -> bool:
        return time.monotonic() - self.started < FOLLOW_S


def follow(group: SentinelGroup, cause: Callable[[], tuple[int, int]]) -> Followed:
    """A worker-role sync client, an ingress-role async client and the ingress appender, built once
    and connected to the primary, keep writing while `cause` fails the primary over."""
    settings = sentinel_settings(group)
    followed = Followed(group)
    sync_client = connections.worker_redis(settings)

    def sync_writer() -> None:
        i = 0
        while followed.running():
            i += 1
            began = time.monotonic()
            try:
                sync_client.set(f"sync:{i}", i)
            except redis.RedisError:
                time.sleep(WRITE_EVERY_S)
                continue
            if followed.landed("sync client", began, lambda new, k=f"sync:{i}": bool(new.exists(k))):
                return
            time.sleep(WRITE_EVERY_S)

    async def async_writer(name: str, write: Callable[[int], Awaitable[Any]],
                           check: Callable[[redis.Redis, Any], bool]) -> None:
        i = 0
        while followed.running():
            i += 1
            began = time.monotonic()
            try:
                result = await write(i)
            except (redis.RedisError, StoreUnavailable):
                await asyncio.sleep(WRITE_EVERY_S)
                continue
            found = await asyncio.to_thread(followed.landed, name, began, lambda new, r=result: check(new, r))
            if found:
                return
            await asyncio.sleep(WRITE_EVERY_S)

    async def main() -> None:
        client = connections.ingress_redis(settings)
        appender = Appender(client, settings.stream)
        try:
            sync_client.set("warm", 1)
            await client.set("warm", 1)
            await appender.append({b"warm": b"1"})  # every connection is open, to the old primary
            fault = threading.Thread(target=followed.fault, args=(cause,))
            fault.start()
            writer = threading.Thread(target=sync_writer)
            writer.start()

            async def set_key(i: int) -> str:
                await client.set(f"async:{i}", i)
                return f"async:{i}"

            await asyncio.gather(
                async_writer("async client", set_key, lambda new, key: bool(new.exists(key))),
                async_writer("appender", lambda i: appender.append({b"i": b"%d" % i}),
                             lambda new, entry: bool(new.xrange(settings.stream, entry, entry))))
            await asyncio.to_thread(writer.join)
            await asyncio.to_thread(fault.join)
        finally:
            await appender.close()
            await client.aclose()
            sync_client.close()

    asyncio.run(main())
    print(f"\nfollowed after (s): {followed.seconds}; promotion after "
          f"{round((followed.promoted_at or 0) - followed.started, 2)} s; writes the old primary took: {followed.lost}")
    return followed


WRITERS = {"sync client", "async client", "appender"}


def test_a_sentinel_failover_is_followed_without_rebuilding_the_clients(own_sentinels: SentinelGroup) -> None:
    followed = follow(own_sentinels, own_sentinels.failover)
    assert set(followed.seconds) == WRITERS, f"not followed within {FOLLOW_S} s: {WRITERS - set(followed.seconds)}"


def test_a_killed_primary_is_followed_without_rebuilding_the_clients(own_sentinels: SentinelGroup) -> None:
    followed = follow(own_sentinels, own_sentinels.kill_primary)
    assert set(followed.seconds) == WRITERS, f"not followed within {FOLLOW_S} s: {WRITERS - set(followed.seconds)}"
    assert max(followed.seconds.values()) < 15, followed.seconds
    assert not followed.lost, "a killed primary takes no writes"
