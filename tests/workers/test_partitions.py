"""Events in weekly partitions, their dedupe keys in event_keys, and the retention of every table."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from starlette.testclient import TestClient

from shared.settings import Settings
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, gw_dlr, post, rows
from workers.event_partitions import EVENTS, WEEKS_AHEAD
from workers.partitions import LOCK_TIMEOUT_MS
from workers.retention import Retention

MONDAY = date(2026, 11, 30)


def test_weeks_start_on_monday_and_go_when_their_last_day_is_past_the_retention() -> None:
    today = MONDAY + timedelta(days=3)
    assert EVENTS.start_of(today) == MONDAY
    existing = {EVENTS.name(MONDAY - timedelta(weeks=n)) for n in range(60)} | {"events_default"}
    create, drop = EVENTS.plan(existing, today, retention_days=400)
    assert create == [MONDAY + timedelta(weeks=n) for n in range(1, WEEKS_AHEAD + 1)]
    oldest_kept = today - timedelta(days=400)
    assert drop == sorted(EVENTS.name(MONDAY - timedelta(weeks=n)) for n in range(60)
                          if MONDAY - timedelta(weeks=n) + timedelta(days=7) <= oldest_kept)
    assert all(EVENTS.start_in(name) for name in drop) and EVENTS.start_in("events_default") is None


@pytest.mark.integration
def test_partitions_are_made_ahead_and_dropped_behind(db: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    assert EVENTS.maintain(db, 400 * 86400, now) == (0, 0), "migrate made them"
    this_week = EVENTS.start_of(now.date())
    later = now + timedelta(days=420)
    created, dropped = EVENTS.maintain(db, 400 * 86400, later)
    names = EVENTS.existing(db)
    assert created >= 1 and dropped >= 1 and EVENTS.name(this_week) not in names
    assert EVENTS.name(EVENTS.start_of(later.date()) + timedelta(weeks=WEEKS_AHEAD)) in names
    for name in names - {"events_default", EVENTS.name(this_week)}:
        db.execute(f"DROP TABLE {name}")
    EVENTS.maintain(db, 400 * 86400, now)  # as migrate left them for the tests that follow
    assert EVENTS.name(this_week) in EVENTS.existing(db)


INSERT_SQL = ("INSERT INTO events (dedupe_key, provider, feed, kind, received_at, stream_id, payload,"
              " normalizer_version) VALUES (%s, 'cm', 'mo', 'inbound', now(), '1-0', '{}', 1)")
WAITING_ON_EVENTS_SQL = "SELECT count(*) FROM pg_locks WHERE relation = 'events'::regclass AND NOT granted"


@pytest.mark.integration
def test_upkeep_waiting_for_a_reader_gives_up_and_leaves_no_insert_queued_behind_it(
        database_url: str, db: psycopg.Connection) -> None:
    """Creating or dropping a partition needs the whole table; a request for it queues every later
    insert. Behind a long reader (a report, pg_dump) the upkeep gives up after LOCK_TIMEOUT_MS and
    does it at a later round, instead of holding up the workers' inserts until the reader ends."""
    now = datetime.now(UTC)
    old, ahead = EVENTS.start_of((now - timedelta(days=420)).date()), EVENTS.start_of(now.date()) + timedelta(weeks=1)
    assert EVENTS.create(db, old)
    EVENTS.drop(db, EVENTS.name(ahead))
    with psycopg.connect(database_url) as reader, psycopg.connect(database_url, autocommit=True) as upkeep, \
            psycopg.connect(database_url, autocommit=True) as writer:
        reader.execute("SELECT count(*) FROM events")  # its transaction stays open: ACCESS SHARE on events
        outcome: list[tuple[int, int]] = []
        thread = threading.Thread(target=lambda: outcome.append(EVENTS.maintain(upkeep, 400 * 86400, now)))
        thread.start()
        thread.join(60)  # a safety net: the upkeep that waited for the reader would hang here
        assert not thread.is_alive() and outcome == [(0, 0)], "it gave up: nothing created, nothing dropped"
        assert db.execute(WAITING_ON_EVENTS_SQL).fetchone() == (0,), "no lock request left queued on events"
        writer.execute("SET lock_timeout = '10s'")  # a regression fails instead of hanging
        writer.execute(INSERT_SQL, ("written-while-read",))
        assert reader.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS, "the reader still holds it"
        assert {EVENTS.name(old)} <= EVENTS.existing(db) and EVENTS.name(ahead) not in EVENTS.existing(db)
        reader.commit()
    assert EVENTS.maintain(db, 400 * 86400, now) == (1, 1), "done at the next round"
    assert db.execute("SELECT dedupe_key FROM events").fetchall() == [("written-while-read",)]
    assert LOCK_TIMEOUT_MS <= 200, "a bound on the pause an upkeep round can cause"


@pytest.mark.integration
def test_a_partition_is_not_made_over_rows_of_the_default(db: psycopg.Connection) -> None:
    far = datetime.now(UTC) + timedelta(weeks=10)  # no partition yet: the row goes to the default
    db.execute("INSERT INTO events (dedupe_key, provider, feed, kind, received_at, stream_id, payload,"
               " normalizer_version) VALUES ('k', 'cm', 'mo', 'inbound', %s, '1-0', '{}', 1)", (far,))
    with db.transaction():
        assert EVENTS.create(db, EVENTS.start_of(far.date())) is False
    assert EVENTS.name(EVENTS.start_of(far.date())) not in EVENTS.existing(db)


@pytest.mark.integration
def test_a_redelivery_is_stopped_by_its_key_and_is_no_new_signal(ingress_client: TestClient, drain: Drain,
                                                                 db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="a"))
    drain()
    [first] = rows(db, "SELECT dedupe_key, received_at FROM events")
    assert rows(db, "SELECT dedupe_key, received_at FROM event_keys") == [first]
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="a"))
    drain()
    assert rows(db, "SELECT dedupe_key, received_at FROM events") == [first]
    assert db.execute("SELECT count(*) FROM consent_changes").fetchone() == (1,)
    partition = db.execute("SELECT tableoid::regclass::text FROM events").fetchone()
    assert partition == (EVENTS.name(EVENTS.start_of(first["received_at"].astimezone(UTC).date())),)


@pytest.mark.integration
def test_retention_of_keys_statuses_and_consent_evidence(settings: Settings, ingress_client: TestClient,
                                                         drain: Drain, db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="a"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", ref="b"))
    sent_at = 1_700_000_000  # an old provider time: statuses go by our receive time
    post(ingress_client, "/webhooks/gatewayapi", gw_dlr("DELIVERED", sent_at))
    post(ingress_client, "/webhooks/gatewayapi", gw_dlr("ENROUTE", sent_at, msg=1000002))
    drain()
    retention = Retention(dataclasses.replace(settings, dedupe_horizon_s=86400, status_retention_s=86400,
                                              consent_evidence_retention_s=86400), budget_s=5)
    try:
        now = datetime.now(UTC)
        assert (retention.event_keys(now), retention.statuses(now), retention.consent_evidence(now)) == (0, 0, 0)
        later = now + timedelta(days=3)
        assert retention.event_keys(later) == 4
        assert retention.statuses(later) == 1, "the delivered message goes, the one in flight stays"
        assert [r["status"] for r in rows(db, "SELECT status FROM message_status")] == ["sent"]
        assert retention.consent_evidence(later) == 1, "the opt-out goes, the opt-in is what consent says now"
        assert [r["outcome"] for r in rows(db, "SELECT outcome FROM consent_changes")] == ["opt_in"]
        assert db.execute("SELECT count(*) FROM events").fetchone() == (4,), "events go by partition only"
    finally:
        retention.close()
