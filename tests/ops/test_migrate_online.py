"""Upgrading a live database: today's unpartitioned events, holding data, converted by `migrate` while
the pipeline writes; nothing lost, nothing doubled, no redelivery taken for a new signal."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from hookstream import convert_events
from hookstream.cli import main
from hookstream.migrate import migrate, plan
from shared.settings import Settings
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, post

pytestmark = pytest.mark.integration

OLD_SCHEMA = "004_consent_api.sql"  # the last migration before events were partitioned
OLD_ROWS = 20_000
SYNTHETIC_SQL = """
INSERT INTO events (dedupe_key, provider, feed, kind, phone, body, keyword_outcome, received_at, stream_id, payload,
                    normalizer_version)
SELECT 'cm:inbound:h:old-' || n, 'cm', 'mo', 'inbound', '+3161' || lpad(n::text, 7, '0'), 'hello', 'none',
       now() - make_interval(secs => (%s - n) * 240), n || '-0', '{}', 1
FROM generate_series(1, %s) AS n
"""


@pytest.fixture
def online_url(database_url: str) -> Iterator[str]:
    """A database of its own, at today's schema before the upgrade (migrations up to 004)."""
    name = f"online_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url, until=OLD_SCHEMA)
    yield url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def settings(settings: Settings, online_url: str) -> Settings:
    return dataclasses.replace(settings, database_url=online_url)


def one(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def stop(client: TestClient, sender: int, ref: str) -> None:
    post(client, "/webhooks/cm/mo", cm_mo("STOP", sender=f"+3162{sender:07d}", ref=ref))


def test_plan_prints_the_conversion_and_changes_nothing(online_url: str, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(online_url, autocommit=True) as conn:
        conn.execute(SYNTHETIC_SQL, (100, 100))
        before = conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
    monkeypatch.setenv("HOOKSTREAM_DATABASE_URL", online_url)
    assert main(["migrate", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "apply migration 005_event_keys.sql" in out and "events: convert about 100 rows (ids up to 100)" in out
    assert "swap under an ACCESS EXCLUSIVE lock" in out
    with psycopg.connect(online_url, autocommit=True) as conn:
        assert conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall() == before
        assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'events'::regclass") == "r"
    migrate(online_url)
    assert plan(online_url) == ["migrations: up to date"]


def test_converted_while_the_pipeline_writes(settings: Settings, online_url: str, ingress_client: TestClient,
                                             drain: Drain) -> None:
    with psycopg.connect(online_url, autocommit=True) as conn:
        conn.execute(SYNTHETIC_SQL, (OLD_ROWS, OLD_ROWS))
        migrate(online_url, convert=False)  # the new tables; events still the old one
        # Opt-outs stored before the upgrade: their keys are in the old table's unique key only.
        for n in range(20):
            stop(ingress_client, n, f"before-{n}")
        drain()
        conn.execute("DELETE FROM event_keys")
        assert one(conn, "SELECT count(*) FROM consent_changes") == 20

        failed: list[BaseException] = []

        def convert() -> None:
            try:
                with psycopg.connect(online_url, autocommit=True) as own:
                    convert_events.convert(own, batch=500, between_batches=lambda: time.sleep(0.05))
            except BaseException as exc:  # noqa: BLE001 (reported by the test)
                failed.append(exc)

        converter = threading.Thread(target=convert)
        converter.start()
        sent, edited, rounds = 20, [], 0
        while converter.is_alive() or rounds < 2:
            rounds += 1 if not converter.is_alive() else 0
            for _ in range(3):
                stop(ingress_client, sent, f"during-{sent}")
                sent += 1
            stop(ingress_client, sent % 20, f"before-{sent % 20}")  # a redelivery of a key not in event_keys
            old_id = 1 + (sent * 997) % OLD_ROWS
            conn.execute("UPDATE events SET body = 'edited' WHERE id = %s", (old_id,))  # as a replay would
            edited.append(old_id)
            drain()
        converter.join()
        assert failed == []

        assert one(conn, "SELECT relkind FROM pg_class WHERE oid = 'events'::regclass") == "p"
        assert one(conn, "SELECT to_regclass('events_next') IS NULL AND to_regclass('events_conversion') IS NULL")
        assert rounds >= 2 and sent > 30, "the pipeline wrote during the conversion"
        total = OLD_ROWS + sent
        assert one(conn, "SELECT count(*) FROM events") == total, "nothing lost, nothing doubled"
        assert one(conn, "SELECT count(DISTINCT dedupe_key) FROM events") == total
        assert one(conn, "SELECT count(DISTINCT id) FROM events") == total
        assert one(conn, "SELECT count(*) FROM event_keys k JOIN events e USING (dedupe_key, received_at)") == total
        assert one(conn, "SELECT count(*) FROM consent_changes") == sent, "redeliveries were no new signal"
        assert one(conn, "SELECT count(*) FROM events WHERE id = ANY(%s) AND body <> 'edited'", edited) == 0
        assert one(conn, "SELECT count(*) FROM consent_review") == 0
        # After the swap: new rows take ids above the old ones, a redelivery is still stopped.
        stop(ingress_client, 10_000, "after")
        stop(ingress_client, 0, "before-0")
        drain()
        assert one(conn, "SELECT count(*) FROM events") == total + 1
        assert one(conn, "SELECT min(id) > %s FROM events WHERE body = 'STOP' AND stream_id > '1'", OLD_ROWS)
