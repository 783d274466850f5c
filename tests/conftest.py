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
from hypothesis import settings as hypothesis_settings

from hookstream.embedded import PostgresServer, RedisServer
from hookstream.migrate import migrate

# A property is about values, not speed: Hypothesis's default deadline (200 ms for one example) fails
# a test whose example a busy machine paused once. No example has one here unless its test sets it.
hypothesis_settings.register_profile("hookstream", deadline=None)
hypothesis_settings.load_profile("hookstream")

# Every table the migrations made but their own bookkeeping: a new table is emptied without a list to keep.
DATA_TABLES_SQL = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    " AND c.relname <> 'schema_migrations' ORDER BY c.relname"
)


def empty_tables(conn: psycopg.Connection) -> None:
    tables = [name for (name,) in conn.execute(DATA_TABLES_SQL)]
    conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")  # type: ignore[arg-type]


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
        empty_tables(conn)
        yield conn
