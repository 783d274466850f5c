"""status_history against real servers: every report of every provider kept once, shuffled and
duplicated deliveries explained by the same rule message_status applies, replays adding nothing."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
import redis
from starlette.testclient import TestClient

from shared import timeline
from shared.settings import Settings
from tests.workers.conftest import Drain
from tests.workers.test_cm_e2e import report_query
from tests.workers.test_pipeline import gw_dlr, mx2, rows
from workers import upkeep
from workers.context import normalize_context
from workers.event_partitions import STATUS_HISTORY, WEEKS_AHEAD
from workers.normalize import normalize_entries
from workers.store import write_entries

pytestmark = pytest.mark.integration
JSON = {"content-type": "application/json"}


def smsmode(statut: str, when: str, sms_id: str = "S7Ep") -> str:
    return urlencode({"numero": "33612345678", "date_reception": when, "statut": statut, "smsID": sms_id})


def cm(code: str, when: str, error: str = "") -> str:
    return report_query(reference="ref-h1", sent="2025-09-03T08:00:00", received=when, to="0031612345678",
                        statuscode=code, errorcode=error, errordescription="Unknown subscriber" if error else "")


# (method, path, query, body) of several reports of one message per provider, in provider-time order.
REPORTS: list[tuple[str, str, str, Any]] = [
    ("GET", "/webhooks/cm/status", cm("0", "2025-09-03T08:00:02"), None),
    ("GET", "/webhooks/cm/status", cm("2", "2025-09-03T08:00:30"), None),
    ("GET", "/webhooks/cm/status", cm("3", "2025-09-03T08:01:00", "23"), None),
    ("GET", "/webhooks/smsmode/status", smsmode("1", "2025-03-25 09:52:10"), None),
    ("GET", "/webhooks/smsmode/status", smsmode("13", "2025-03-25 09:52:15"), None),
    ("GET", "/webhooks/smsmode/status", smsmode("11", "2025-03-25 09:52:17"), None),
    ("POST", "/webhooks/mx2", "", mx2("sent", "2024-03-25 20:01:00")),
    ("POST", "/webhooks/mx2", "", mx2("delivered", "2024-03-25 20:02:00")),
    ("POST", "/webhooks/gatewayapi", "", gw_dlr("BUFFERED", 100)),
    ("POST", "/webhooks/gatewayapi", "", gw_dlr("ENROUTE", 110)),
    ("POST", "/webhooks/gatewayapi", "", gw_dlr("DELIVERED", 120)),
    ("POST", "/webhooks/gatewayapi", "", gw_dlr("ENROUTE", 140)),  # a late sent after the delivery
]


def deliver(client: TestClient, reports: list[tuple[str, str, str, Any]]) -> None:
    for method, path, query, body in reports:
        response = client.request(method, path + (f"?{query}" if query else ""),
                                  json=body, headers=JSON if body is not None else {})
        assert response.status_code == 200, response.text


def history(db: psycopg.Connection) -> list[timeline.Report]:
    found = db.execute(f"SELECT {', '.join(timeline.TIMELINE_COLUMNS)} FROM status_history").fetchall()
    return timeline.reports(found)


def steps_of(db: psycopg.Connection, provider: str, ref: str) -> list[timeline.Step]:
    return timeline.timeline(timeline.reports(db.execute(timeline.TIMELINE_SQL, (provider, ref)).fetchall()))


@pytest.mark.parametrize("seed", [1, 2])
def test_every_report_once_and_the_current_one_is_message_status(
        seed: int, ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    deliveries = REPORTS * 2  # each report delivered twice: a provider's retry
    random.Random(seed).shuffle(deliveries)
    deliver(ingress_client, deliveries[: len(deliveries) // 2])
    drain()
    deliver(ingress_client, deliveries[len(deliveries) // 2:])
    drain()
    stored = history(db)
    status_events = {r["dedupe_key"] for r in rows(db, "SELECT dedupe_key FROM events WHERE kind = 'status'")}
    assert sorted(r.event_key for r in stored) == sorted(status_events)
    assert {r.provider for r in stored} == {"cm", "smsmode", "mx2", "gatewayapi"}
    assert len(stored) == len(REPORTS)
    for current in rows(db, "SELECT provider, message_ref, recipient, event_key FROM message_status"):
        steps = [s for s in steps_of(db, current["provider"], current["message_ref"])
                 if s.report.recipient == current["recipient"]]
        [winner] = [s for s in steps if s.outcome == "current"]
        assert winner.report.event_key == current["event_key"], current


def test_out_of_order_and_repeated_reports_are_explained(ingress_client: TestClient, drain: Drain,
                                                         db: psycopg.Connection) -> None:
    gateway = [r for r in REPORTS if "gatewayapi" in r[1]]
    deliver(ingress_client, [gateway[2], gateway[3], gateway[0], gateway[1]])  # delivered first, queued last
    drain()
    steps = steps_of(db, "gatewayapi", "1000001")
    assert [(s.report.provider_status, s.outcome, s.late) for s in steps] == [
        ("BUFFERED", "superseded", True), ("ENROUTE", "superseded", True), ("DELIVERED", "current", False),
        ("ENROUTE", "superseded", False)]
    assert "ranks below delivered" in steps[3].why
    assert all(s.report.decided_by == "provider" and timeline.archive_key(s.report) for s in steps)
    [(status, key)] = db.execute("SELECT status, event_key FROM message_status WHERE provider = 'gatewayapi'").fetchall()
    assert (status, key) == ("delivered", steps[2].report.event_key)


def test_a_replay_adds_no_history_rows(ingress_client: TestClient, drain: Drain, db: psycopg.Connection,
                                       settings: Settings, redis_client: redis.Redis) -> None:
    deliver(ingress_client, REPORTS)
    drain()
    before = sorted(history(db), key=lambda r: r.event_key)
    raw = [(sid.decode(), fields) for sid, fields in redis_client.xrange(settings.stream)]
    entries = normalize_entries(raw, normalize_context(settings))
    with db.transaction():
        write_entries(db, entries, replay=True)
    assert sorted(history(db), key=lambda r: r.event_key) == before


def test_history_partitions_are_made_by_migrate_and_kept_by_the_upkeep_table(db: psycopg.Connection,
                                                                             settings: Settings) -> None:
    now = datetime.now(UTC)
    assert STATUS_HISTORY.maintain(db, 400 * 86400, now) == (0, 0), "migrate made them"
    assert STATUS_HISTORY.name(STATUS_HISTORY.start_of(now.date()) + timedelta(weeks=WEEKS_AHEAD)) in \
        STATUS_HISTORY.existing(db)
    custom = replace(settings, status_history_retention_s=14 * 86400)
    chores = [row.task for row in upkeep.table(custom, redis.Redis(), upkeep.ConsentFeed(custom, redis.Redis()),
                                               reclaim=lambda: None, observe=lambda: None)]
    [chore] = [t for t in chores if isinstance(t, partial) and t.func == STATUS_HISTORY.maintain_url]
    assert chore.args[1] == 14 * 86400


def test_the_retention_variable_reads_the_duration_grammar() -> None:
    assert Settings.from_env({"HOOKSTREAM_STATUS_HISTORY_RETENTION": "8w"}).status_history_retention_s == 56 * 86400
    assert Settings.from_env({}).status_history_retention_s == Settings.from_env({}).events_retention_s
