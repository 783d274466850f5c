"""`hookstream replay` against real servers and a real worker process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
import redis
from starlette.testclient import TestClient

from shared.settings import Settings
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, gw_dlr, mx2, post, rows
from workers.context import WorkerContext
from workers.replay import Selection, replay

pytestmark = pytest.mark.integration

SNAPSHOT = ("SELECT (SELECT json_agg(e ORDER BY dedupe_key) FROM (SELECT dedupe_key, body, status, keyword_outcome,"
            " normalizer_version, updated_at FROM events) e)::text,"
            " (SELECT json_agg(m ORDER BY recipient) FROM message_status m)::text,"
            " (SELECT json_agg(c ORDER BY subject, scope) FROM (SELECT subject, scope, state, changed_at, confirmed_at,"
            " keyword, provider, event_key FROM consent) c)::text,"
            " (SELECT json_agg(c ORDER BY id) FROM consent_changes c)::text,"
            " (SELECT count(*) FROM dead_letters)")


@pytest.fixture
def worker(settings: Settings, worker_context: WorkerContext) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "HOOKSTREAM_REDIS_URL": settings.redis_url or "", "HOOKSTREAM_DATABASE_URL":
           settings.database_url or "", "HOOKSTREAM_GATEWAYAPI_KEYWORDS": "foo", "HOOKSTREAM_LOG_LEVEL": "ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "hookstream.cli", "worker"], env=env)
    yield proc
    proc.terminate()
    proc.wait(30)


@pytest.fixture
def traffic(ingress_client: TestClient, drain: Drain) -> None:
    """STOP then START, statuses out of order, an Mx2 opt-out, a garbage body: drained into Postgres."""
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="a"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", ref="b"))
    for payload in (gw_dlr("DELIVERED", 120), gw_dlr("ENROUTE", 110), gw_dlr("BUFFERED", 100)):
        post(ingress_client, "/webhooks/gatewayapi", payload)
    post(ingress_client, "/webhooks/mx2", mx2("optout", "2024-03-25 20:01:00"))
    post(ingress_client, "/webhooks/mx2", b"garbage")
    drain()


def forget_the_opt_in(db: psycopg.Connection) -> None:
    """As if an older keyword policy had not recognised START: the opt-out stands, no opt-in change."""
    with db.transaction():  # the ledger is append-only: only as its retention procedure may
        db.execute("SELECT set_config('hookstream.ledger_procedure', 'retention', true)")
        db.execute("DELETE FROM consent_changes WHERE outcome = 'opt_in'")
    db.execute("UPDATE consent SET state = 'opted_out', changed_at = c.occurred_at, confirmed_at = c.occurred_at"
               " FROM consent_changes c WHERE c.outcome = 'opt_out' AND consent.subject = c.subject")


def run(ctx: WorkerContext, selection: Selection | None = None, **kwargs: bool) -> dict[str, int]:
    return replay(ctx, selection or Selection(), out=io.StringIO(), **kwargs)


def test_replaying_everything_changes_nothing(traffic: None, worker: object, worker_context: WorkerContext,
                                              db: psycopg.Connection) -> None:
    before = db.execute(SNAPSHOT).fetchone()
    summary = run(worker_context)
    assert db.execute(SNAPSHOT).fetchone() == before
    assert summary["entries"] == 7 and summary["failed_jobs"] == 0
    assert (summary["inserted"], summary["updated"], summary["consent_changes"]) == (0, 0, 0)


def test_a_dry_run_writes_nothing_and_counts_what_would_change(traffic: None, worker_context: WorkerContext,
                                                               db: psycopg.Connection) -> None:
    db.execute("UPDATE events SET body = 'old normalizer', normalizer_version = 0 WHERE kind = 'inbound'")
    forget_the_opt_in(db)
    before = db.execute(SNAPSHOT).fetchone()
    summary = run(worker_context, dry_run=True)
    assert db.execute(SNAPSHOT).fetchone() == before
    assert summary["updated"] == 2 and summary["inserted"] == 0
    assert summary["consent_changes"] == 1


def test_a_replay_corrects_stored_rows_and_applies_missed_changes_once(traffic: None, worker: object,
                                                                       worker_context: WorkerContext,
                                                                       db: psycopg.Connection) -> None:
    expected = db.execute(SNAPSHOT).fetchone()
    db.execute("UPDATE events SET body = 'old normalizer', keyword_outcome = 'none', normalizer_version = 0"
               " WHERE kind = 'inbound'")
    forget_the_opt_in(db)
    summary = run(worker_context)
    assert summary["updated"] == 2 and summary["consent_changes"] == 1
    fixed = rows(db, "SELECT body, keyword_outcome, normalizer_version FROM events WHERE kind = 'inbound' ORDER BY id")
    assert [(r["body"], r["keyword_outcome"]) for r in fixed] == [("STOP", "opt_out"), ("START", "opt_in")]
    assert all(r["normalizer_version"] >= 1 for r in fixed)
    after = db.execute(SNAPSHOT).fetchone()
    assert after[1:3] == expected[1:3], "statuses and consent are as they should have been"
    changes = rows(db, "SELECT outcome, old_state, new_state FROM consent_changes WHERE provider = 'cm' ORDER BY id")
    assert [(c["outcome"], c["old_state"], c["new_state"]) for c in changes] == [
        ("opt_out", None, "opted_out"), ("opt_in", "opted_out", "opted_in")]
    assert run(worker_context)["updated"] == 0, "a second replay finds nothing left to fix"


def test_a_provider_filter_touches_only_that_provider(traffic: None, worker: object, worker_context: WorkerContext,
                                                      db: psycopg.Connection) -> None:
    db.execute("UPDATE events SET body = 'x', normalizer_version = 0")
    summary = run(worker_context, Selection(provider="cm", feed="mo"))
    assert summary["entries"] == 2 and summary["updated"] == 2
    assert {r["provider"] for r in rows(db, "SELECT provider FROM events WHERE normalizer_version = 0")} == \
        {"gatewayapi", "mx2"}


def test_replay_from_the_archive_after_the_stream_was_trimmed(traffic: None, worker: object, settings: Settings,
                                                              redis_client: redis.Redis, worker_context: WorkerContext,
                                                              db: psycopg.Connection) -> None:
    assert db.execute("SELECT count(*) FROM raw_archive").fetchone() == (7,)
    redis_client.xtrim(settings.stream, maxlen=0)
    db.execute("UPDATE events SET status = 'unknown', normalizer_version = 0 WHERE kind = 'status'")
    db.execute("UPDATE events SET body = 'old normalizer' WHERE kind = 'inbound'")
    stream = run(worker_context)
    assert stream["entries"] == 0
    summary = run(worker_context, from_archive=True)
    assert summary["entries"] == 7 and summary["failed_jobs"] == 0
    assert summary["updated"] == 5 and summary["consent_changes"] == 0
    statuses = rows(db, "SELECT status FROM events WHERE kind = 'status' ORDER BY occurred_at")
    assert [r["status"] for r in statuses] == ["queued", "sent", "delivered"]
    assert {r["body"] for r in rows(db, "SELECT body FROM events WHERE kind = 'inbound'")} == {"STOP", "START"}


def test_a_replay_repairs_a_dead_letter(traffic: None, worker: object, worker_context: WorkerContext,
                                        db: psycopg.Connection) -> None:
    # As if an older normalizer had refused the Mx2 opt-out: its event missing, a dead letter instead.
    [(stream_id, key)] = db.execute("SELECT stream_id, dedupe_key FROM events WHERE provider = 'mx2'").fetchall()
    db.execute("DELETE FROM events WHERE provider = 'mx2'")
    db.execute("INSERT INTO dead_letters (stream_id, provider, feed, reason, body, query, headers)"
               " VALUES (%s, 'mx2', 'webhook', 'old bug', '', '', '{}')", (stream_id,))
    summary = run(worker_context, Selection(provider="mx2"))
    assert summary["inserted"] == 1
    assert db.execute("SELECT dedupe_key FROM events WHERE provider = 'mx2'").fetchall() == [(key,)]
    assert db.execute("SELECT count(*) FROM dead_letters WHERE stream_id = %s", (stream_id,)).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM consent_changes WHERE provider = 'mx2'").fetchone() == (1,)
