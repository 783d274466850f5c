"""The timeout table and the settings that choose a Redis: no server needed (nothing connects)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.sentinel import SentinelConnectionPool
from rq.defaults import DEFAULT_WORKER_TTL

from shared import connections
from shared.connections import TIMEOUTS, Role
from shared.errors import ConfigError
from shared.settings import Settings

PLAIN = Settings(redis_url="redis://:pw@redis.example:6380/2", database_url="postgresql://u@db.example/x")
SENTINELS = Settings(redis_url="redis://user:pw@ignored.example:1/5", redis_sentinels=(("s1", 26379), ("s2", 26380)),
                     redis_sentinel_service="svc")
SYNC = {Role.DISPATCHER: connections.dispatcher_redis, Role.WORKER: connections.worker_redis,
        Role.QUEUE: connections.queue_redis, Role.CLI: connections.cli_redis, Role.DASHBOARD: connections.dashboard_redis}


# -- the table --------------------------------------------------------------------------------------


def test_every_role_has_its_row() -> None:
    assert set(TIMEOUTS) == set(Role)


def test_the_rows_say_what_each_role_can_afford() -> None:
    ingress = TIMEOUTS[Role.INGRESS]
    assert ingress.redis_retries == 0, "a provider's retry is cheaper than a hung request"
    assert ingress.redis_read_s is not None and ingress.redis_read_s <= 2
    # RQ's worker blocks on its queues for its TTL less 15 s: the read timeout must outlast that.
    queue_read = TIMEOUTS[Role.QUEUE].redis_read_s
    assert queue_read is not None and queue_read > DEFAULT_WORKER_TTL - 15
    for role in (Role.DISPATCHER, Role.WORKER, Role.QUEUE):  # they ride out a failover (a few seconds)
        delays = [connections.BACKOFF.compute(n) for n in range(1, TIMEOUTS[role].redis_retries + 1)]
        assert sum(delays) >= 3, role
    for role, row in TIMEOUTS.items():  # a Redis row for each role with a Redis factory, and only for those
        assert (row.redis_connect_s is not None) == (role in {*SYNC, Role.INGRESS}), role
        if row.redis_connect_s is not None:
            assert row.redis_read_s is not None, f"{role}: a Redis client without a read timeout can hang for good"
        assert row.pg_connect_s is None or row.pg_connect_s >= 2, role  # libpq's least


@pytest.mark.parametrize("role", list(SYNC))
def test_each_sync_factory_reads_its_row(role: Role) -> None:
    with SYNC[role](PLAIN) as client:
        kwargs = client.connection_pool.connection_kwargs
    row = TIMEOUTS[role]
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"], kwargs["retry"].get_retries()) == (
        row.redis_connect_s, row.redis_read_s, row.redis_retries)
    assert kwargs["socket_keepalive"] and kwargs["socket_keepalive_options"].get(socket.TCP_KEEPIDLE) == 10
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("redis.example", 6380, 2, "pw")


def test_the_ingress_factory_reads_its_row() -> None:
    client = connections.ingress_redis(PLAIN)  # nothing connects until a command
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"], kwargs["retry"].get_retries()) == (1.0, 2.0, 0)


def test_postgres_parameters_come_from_the_rows() -> None:
    assert connections.postgres_options(Role.MIGRATE)["connect_timeout"] == TIMEOUTS[Role.MIGRATE].pg_connect_s
    assert connections.postgres_options(Role.CLI)["keepalives"] == 1
    pool = connections.dashboard_pool(PLAIN.database_url_or_default(), 3)
    assert pool.timeout == TIMEOUTS[Role.DASHBOARD].pg_pool_wait_s and pool.max_size == 3
    assert "options" not in pool.kwargs  # PgBouncer refuses it: set in each read's transaction instead
    assert connections.dashboard_pool(PLAIN.database_url_or_default(), 3, 0.3).timeout == 0.3
    assert connections.api_pool(PLAIN.database_url_or_default(), 4).timeout == TIMEOUTS[Role.API].pg_pool_wait_s


# -- Sentinel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(SYNC))
def test_with_sentinels_every_sync_client_asks_them_for_the_primary(role: Role) -> None:
    with SYNC[role](SENTINELS) as client:
        pool: Any = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "svc"
        asked = [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
                 for s in pool.sentinel_manager.sentinels]
        assert asked == [("s1", 26379), ("s2", 26380)]
        kwargs = pool.connection_kwargs
        assert "host" not in kwargs and "port" not in kwargs  # the URL's are ignored
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (5, "user", "pw")
        assert kwargs["socket_timeout"] == TIMEOUTS[role].redis_read_s


def test_with_sentinels_the_ingress_client_asks_them_too() -> None:
    client = connections.ingress_redis(SENTINELS)  # nothing connects until a command
    assert isinstance(client.connection_pool, AsyncSentinelConnectionPool)
    assert client.connection_pool.connection_kwargs["db"] == 5
    assert client.connection_pool.connection_kwargs["retry"].get_retries() == 0


def test_what_a_url_still_says_behind_sentinels() -> None:
    assert connections.primary_options("redis://u:p@h:1/4") == {"username": "u", "password": "p", "db": 4}
    assert connections.primary_options("rediss://h:1/0")["ssl"] is True
    with pytest.raises(ConfigError, match="unix://"):
        connections.primary_options("unix:///run/redis.sock")


def test_a_tls_url_gets_the_tls_connection_behind_sentinels() -> None:
    settings = Settings(redis_url="rediss://h:1/0", redis_sentinels=(("s1", 26379),))
    with connections.cli_redis(settings) as client:
        assert "SSL" in client.connection_pool.connection_class.__name__


# -- settings ---------------------------------------------------------------------------------------


def test_sentinel_settings() -> None:
    settings = Settings.from_env({"HOOKSTREAM_REDIS_SENTINELS": " 10.0.0.1:26379, sentinel-b:26380 ,[::1]:26381"})
    assert settings.redis_sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381))
    assert settings.redis_sentinel_service == "hookstream"
    assert Settings.from_env({"HOOKSTREAM_REDIS_SENTINEL_SERVICE": "pipeline"}).redis_sentinel_service == "pipeline"
    assert Settings.from_env({}).redis_sentinels == ()
    for bad in ("10.0.0.1", "host:", ":26379", "host:port", "host:0", "host:70000"):
        with pytest.raises(ConfigError, match="HOOKSTREAM_REDIS_SENTINELS"):
            Settings.from_env({"HOOKSTREAM_REDIS_SENTINELS": bad})


def test_the_queue_redis_defaults_to_the_streams_and_may_be_another() -> None:
    assert Settings.from_env({}).queue_redis_url_or_default() == Settings.from_env({}).redis_url_or_default()
    assert connections.queue_shares_stream_redis(Settings.from_env({}))
    other = {"HOOKSTREAM_REDIS_URL": "redis://r:6379/1", "HOOKSTREAM_QUEUE_REDIS_URL": "redis://elsewhere:6379/0"}
    assert Settings.from_env(other).queue_redis_url_or_default() == "redis://elsewhere:6379/0"
    assert not connections.queue_shares_stream_redis(Settings.from_env(other))
    assert "elsewhere" not in repr(Settings.from_env(other))  # URLs may carry passwords


def test_the_commands_settings() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.workers) == (None, 8000, None)  # each command's default
    assert (settings.log_level, settings.log_phones, settings.data_dir) == ("INFO", False, ".data")
    settings = Settings.from_env({"HOOKSTREAM_HOST": "127.0.0.2", "HOOKSTREAM_PORT": "8001", "HOOKSTREAM_WORKERS": "3",
                                  "HOOKSTREAM_LOG_LEVEL": "debug", "HOOKSTREAM_LOG_PHONES": "1",
                                  "HOOKSTREAM_DATA_DIR": "/srv/hs"})
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.2", 8001, 3)
    assert (settings.log_level, settings.log_phones, settings.data_dir) == ("debug", True, "/srv/hs")
    for name, bad in (("HOOKSTREAM_PORT", "http"), ("HOOKSTREAM_WORKERS", "0")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: bad})


class FakeSentinel:
    """Answers SENTINEL MASTERS after yielding once, so that two questions interleave."""

    def __init__(self, name: str, knows_primary: bool) -> None:
        self.name = name
        self.knows_primary = knows_primary

    async def sentinel_masters(self) -> dict[str, Any]:
        await asyncio.sleep(0)
        state = {"ip": "10.0.0.9", "port": 6379, "is_master": True, "is_sdown": False, "is_odown": False,
                 "num-other-sentinels": 2}
        return {"hookstream": state} if self.knows_primary else {}


def test_two_questions_at_once_keep_every_sentinel() -> None:
    """redis-py moves the Sentinel that answered to the front with an index taken before the
    question: two at once (the appender and the ready probe) could overwrite one Sentinel with
    another. The factory's manager asks one at a time."""
    async def ask_twice() -> list[str]:
        manager = connections._AsyncSentinels([])
        manager.sentinels = [FakeSentinel("a", False), FakeSentinel("b", True), FakeSentinel("c", True)]
        answers = await asyncio.gather(manager.discover_master("hookstream"), manager.discover_master("hookstream"))
        assert answers == [("10.0.0.9", 6379)] * 2
        return sorted(s.name for s in manager.sentinels)

    assert asyncio.run(ask_twice()) == ["a", "b", "c"]
