"""Session fixtures: a real redis-server and a real PostgreSQL, started here and stopped at the end.

Set HOOKSTREAM_TEST_REDIS_URL / HOOKSTREAM_TEST_DATABASE_URL to use servers of your own instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from hookstream.embedded import PostgresServer, RedisServer
from hookstream.migrate import migrate

TABLES = ("events", "event_keys", "message_status", "consent", "consent_changes", "dead_letters", "raw_archive", "review_decisions")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    if os.environ.get("HOOKSTREAM_TEST_REDIS_URL"):
        yield None
        return
    server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-redis-"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    return os.environ.get("HOOKSTREAM_TEST_REDIS_URL") or redis_server.url  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    if os.environ.get("HOOKSTREAM_TEST_DATABASE_URL"):
        yield None
        return
    server = PostgresServer(durable=False).start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def database_url(postgres_server: PostgresServer | None) -> str:
    url = os.environ.get("HOOKSTREAM_TEST_DATABASE_URL") or postgres_server.url  # type: ignore[union-attr]
    migrate(url)
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on a freshly emptied database."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection on emptied tables."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
        yield conn
