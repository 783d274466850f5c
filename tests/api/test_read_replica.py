"""HOOKSTREAM_DATABASE_READ_URL: the consent API's lookups, the dashboard and `hookstream stats` read a
real streaming replica, and the API says how far behind it is.

A primary of this module's own (the session's is shared with every other test) and a hot standby
made from it by `pg_basebackup -R`, both run as the embedded server runs PostgreSQL. initdb's
pg_hba.conf already admits replication from loopback, and wal_level=replica and max_wal_senders=10
are PostgreSQL's defaults. Replay is paused on the standby to make it lag on purpose.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from api.dashboard import Dashboard
from api.replica import LAG_HEADER
from hookstream import stats
from hookstream.embedded import PostgresServer, _pg_bin, free_port
from hookstream.migrate import migrate
from shared.settings import Settings
from tests.api.conftest import AUTH, TOKENS

pytestmark = pytest.mark.integration
NUMBER = "+31612345678"
INSERT_SQL = """INSERT INTO consent (subject, scope, state, changed_at, confirmed_at, keyword, provider, event_key)
VALUES (%s, '*', 'opted_out', now(), now(), 'stop', 'cm', 'cm:inbound:replica-1')"""
OPT_IN_SQL = """UPDATE consent SET state = 'opted_in', changed_at = now(), confirmed_at = now(), keyword = 'start',
event_key = 'cm:inbound:replica-2' WHERE subject = %s"""


def standby_of(primary: PostgresServer) -> PostgresServer:
    """A hot standby of `primary`, streaming from it (pg_basebackup -R writes standby.signal and
    primary_conninfo), in a folder of its own on a port of its own."""
    standby = PostgresServer(durable=False)
    cluster = standby._prepare_dir() / "cluster"
    standby._run([_pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                  "-D", str(cluster), "-R", "-X", "stream", "-c", "fast"])
    return standby.start()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    primary = PostgresServer(durable=False).start()
    standby: PostgresServer | None = None
    try:
        migrate(primary.url)
        standby = standby_of(primary)
        yield primary, standby
    finally:
        if standby is not None:
            standby.remove()
        primary.remove()


@pytest.fixture
def primary_db(servers: tuple[PostgresServer, PostgresServer]) -> Iterator[psycopg.Connection]:
    with psycopg.connect(servers[0].url, autocommit=True) as conn:
        conn.execute("TRUNCATE consent")
        yield conn


@pytest.fixture
def standby_db(servers: tuple[PostgresServer, PostgresServer]) -> Iterator[psycopg.Connection]:
    with psycopg.connect(servers[1].url, autocommit=True) as conn:
        yield conn
        conn.execute("SELECT pg_wal_replay_resume()")  # whatever the test did


def until(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def settings_of(servers: tuple[PostgresServer, PostgresServer]) -> Settings:
    return Settings(database_url=servers[0].url, database_read_url=servers[1].url)


def test_lookups_answer_the_replicas_state_and_say_how_old_it_may_be(
        servers: tuple[PostgresServer, PostgresServer], primary_db: psycopg.Connection,
        standby_db: psycopg.Connection) -> None:
    with TestClient(create_app(settings_of(servers), ApiTokens.parse(TOKENS)), headers=AUTH) as api:
        primary_db.execute(INSERT_SQL, (NUMBER,))
        seen = until(lambda: (r := api.get(f"/v1/consent/{NUMBER}")).json()["state"] == "opted_out" and r)
        assert float(seen.headers[LAG_HEADER]) < 5  # caught up: nothing received is left to replay

        standby_db.execute("SELECT pg_wal_replay_pause()")
        primary_db.execute(OPT_IN_SQL, (NUMBER,))
        # The standby receives the change but does not apply it: the lag is the age of its last replay.
        until(lambda: float(api.get(f"/v1/consent/{NUMBER}").headers[LAG_HEADER]) > 0)
        time.sleep(1.0)
        old = api.get(f"/v1/consent/{NUMBER}")
        assert (old.json()["state"], old.json()["allowed"]) == ("opted_out", False)  # the replica's state...
        assert float(old.headers[LAG_HEADER]) >= 1.0  # ...and how old it may be
        checked = api.post("/v1/consent/check", json={"subjects": [NUMBER]})
        assert checked.json()["results"][0]["state"] == "opted_out" and float(checked.headers[LAG_HEADER]) >= 1.0
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.text.startswith("ready; replica lag ")
        assert float(ready.headers[LAG_HEADER]) >= 1.0
        # The primary already has the change: the review queue and the feed read it, not the replica.
        assert primary_db.execute("SELECT state FROM consent WHERE subject = %s", (NUMBER,)).fetchone() == (
            "opted_in",)

        standby_db.execute("SELECT pg_wal_replay_resume()")
        fresh = until(lambda: (r := api.get(f"/v1/consent/{NUMBER}")).json()["state"] == "opted_in" and r)
        assert float(fresh.headers[LAG_HEADER]) < 5


def test_without_a_read_url_lookups_read_the_primary_and_carry_no_lag(
        servers: tuple[PostgresServer, PostgresServer], primary_db: psycopg.Connection) -> None:
    primary_db.execute(INSERT_SQL, (NUMBER,))
    with TestClient(create_app(Settings(database_url=servers[0].url), ApiTokens.parse(TOKENS)), headers=AUTH) as api:
        found = api.get(f"/v1/consent/{NUMBER}")
        assert found.json()["state"] == "opted_out" and LAG_HEADER not in found.headers
        assert api.get("/readyz").text == "ready"


def test_a_replica_that_is_down_fails_readiness_and_the_lookups_not_the_rest(
        servers: tuple[PostgresServer, PostgresServer], primary_db: psycopg.Connection) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    settings = Settings(database_url=servers[0].url, database_read_url=dead)
    with TestClient(create_app(settings, ApiTokens.parse(TOKENS)), headers=AUTH) as api:
        assert api.get("/readyz").status_code == 503
        assert api.get(f"/v1/consent/{NUMBER}").status_code == 503
        assert api.get("/v1/consent/changes").status_code == 200  # the feed reads the primary


def test_stats_and_the_dashboard_read_the_replica(servers: tuple[PostgresServer, PostgresServer],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_of(servers)
    assert stats.cmd_stats(settings, argparse.Namespace(days=1, provider=None, json=False)) == 0
    dead = Settings(database_url=servers[0].url,
                    database_read_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    assert stats.cmd_stats(dead, argparse.Namespace(days=1, provider=None, json=False)) == 1
    assert "postgres:" in capsys.readouterr().out
    dashboard = Dashboard(settings, ApiTokens.parse(TOKENS))
    try:
        assert dashboard.pool().conninfo == servers[1].url
        assert dashboard.compute("deliverability")["errors"] == []
    finally:
        dashboard.close()
