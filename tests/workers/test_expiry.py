"""Receipt expiry against real servers: hookstream's `expired/no_receipt` in message_status and in the
history, a real receipt arriving later still winning, a stale report not undoing it, bounded rounds."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from shared import timeline
from shared.settings import PROVIDERS, Settings
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import gw_dlr, post
from workers import expiry

pytestmark = pytest.mark.integration
HOURS_72 = dict.fromkeys(PROVIDERS, 72 * 3600)
NOW = int(time.time())
DAY = 86400


def current(db: psycopg.Connection, ref: int) -> tuple[Any, ...] | None:
    return db.execute("SELECT status, reason, status_rank FROM message_status WHERE provider = 'gatewayapi'"
                      " AND message_ref = %s", (str(ref),)).fetchone()


def received_at_provider_time(db: psycopg.Connection) -> None:
    """Expiry counts from when a report was received: pretend each arrived at its provider time."""
    db.execute("UPDATE message_status SET received_at = order_at WHERE provider = 'gatewayapi'")


def steps(db: psycopg.Connection, ref: int) -> list[timeline.Step]:
    return timeline.timeline(timeline.reports(db.execute(timeline.TIMELINE_SQL, ("gatewayapi", str(ref))).fetchall()))


def test_a_message_without_receipt_expires_and_a_late_receipt_still_wins(
        ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/gatewayapi", gw_dlr("ENROUTE", NOW - 4 * DAY, msg=1))  # sent 4 days ago
    post(ingress_client, "/webhooks/gatewayapi", gw_dlr("BUFFERED", NOW - 3600, msg=2))  # queued an hour ago
    post(ingress_client, "/webhooks/gatewayapi", gw_dlr("DELIVERED", NOW - 4 * DAY, msg=3))  # already final
    drain()
    assert expiry.sweep(db, HOURS_72)["gatewayapi"] == 0, "received just now: nothing is overdue yet"
    received_at_provider_time(db)
    assert expiry.sweep(db, HOURS_72) == {"cm": 0, "gatewayapi": 1, "mx2": 0, "smsmode": 0}
    assert current(db, 1) == ("expired", "no_receipt", expiry.EXPIRED_RANK)
    assert current(db, 2)[0] == "queued" and current(db, 3)[0] == "delivered"  # type: ignore[index]
    [sent, expired] = steps(db, 1)
    assert (expired.report.decided_by, expired.outcome, expired.report.provider_status) == ("hookstream", "current",
                                                                                           None)
    assert timeline.archive_key(expired.report) is None and "no receipt" in expired.why
    assert expiry.sweep(db, HOURS_72) == dict.fromkeys(PROVIDERS, 0), "expired once"

    # A stale sent report from before the sweep changes nothing; the real receipt, however late, wins.
    post(ingress_client, "/webhooks/gatewayapi", gw_dlr("ENROUTE", NOW - 4 * DAY + 60, msg=1))
    drain()
    assert current(db, 1)[:2] == ("expired", "no_receipt")  # type: ignore[index]
    post(ingress_client, "/webhooks/gatewayapi", {**gw_dlr("UNDELIVERABLE", NOW - 4 * DAY + 90, msg=1),
                                                  "error": "Absent subscriber"})
    drain()
    assert current(db, 1)[0] == "failed"  # type: ignore[index]
    timeline_of = steps(db, 1)
    assert [(s.report.status, s.report.decided_by, s.outcome) for s in timeline_of] == [
        ("sent", "provider", "superseded"), ("sent", "provider", "repeat"), ("failed", "provider", "current"),
        ("expired", "hookstream", "superseded")]
    assert "gives way" in timeline_of[3].why


def test_rounds_are_bounded_and_each_provider_has_its_own_expiry(
        ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    for msg in range(1, 6):
        post(ingress_client, "/webhooks/gatewayapi", gw_dlr("ENROUTE", NOW - 2 * DAY - msg, msg=msg))
    drain()
    received_at_provider_time(db)
    assert expiry.sweep(db, HOURS_72)["gatewayapi"] == 0, "two days is within 72 h"
    short = Settings.from_env({"HOOKSTREAM_GATEWAYAPI_RECEIPT_EXPIRY": "1d"}).receipt_expiry_s
    assert short == {**HOURS_72, "gatewayapi": DAY}
    assert Settings.from_env({"HOOKSTREAM_RECEIPT_EXPIRY": "2h"}).receipt_expiry_s == dict.fromkeys(PROVIDERS, 7200)
    assert [expiry.sweep(db, short, batch=2)["gatewayapi"] for _ in range(4)] == [2, 2, 1, 0]
    oldest_first = db.execute("SELECT message_ref FROM status_history WHERE decided_by = 'hookstream'"
                              " ORDER BY received_at, message_ref").fetchall()
    assert len(oldest_first) == 5
    assert expiry.sweep(db, {**short, "gatewayapi": 0}) == dict.fromkeys(sorted(set(PROVIDERS) - {"gatewayapi"}), 0)
