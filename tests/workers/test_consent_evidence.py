"""Consent changes as evidence: where each came from, an append-only table, a hash chain per subject."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from starlette.testclient import TestClient

from hookstream import cli
from shared import ledger
from shared.keywords import POLICY_VERSION
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, mx2, post, rows
from workers.retention import EVIDENCE_SQL, delete_batches

pytestmark = pytest.mark.integration


def test_each_change_names_its_source_and_evidence(ingress_client: TestClient, drain: Drain,
                                                   db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("Stop please", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    post(ingress_client, "/webhooks/mx2", mx2("optout", "2024-03-25 20:01:00"))
    drain()
    changes = {r["provider"]: r for r in rows(db, "SELECT * FROM consent_changes")}
    stop, optout = changes["cm"], changes["mx2"]
    assert (stop["source"], stop["inbound_text"], stop["policy_version"], stop["actor"], stop["reach"]) == (
        "keyword", "Stop please", POLICY_VERSION, "worker", "scope")
    assert stop["inbound_sha256"] == hashlib.sha256(b"Stop please").hexdigest()
    event = rows(db, "SELECT stream_id, received_at FROM events WHERE dedupe_key = %s", stop["event_key"])[0]
    assert stop["stream_id"] == event["stream_id"]
    archived = rows(db, "SELECT body FROM raw_archive WHERE received_at = %s AND stream_id = %s",
                    *stop["archive_key"].split("/"))
    assert b"Stop please" in bytes(archived[0]["body"])
    assert (optout["source"], optout["policy_version"], optout["inbound_text"]) == ("provider_signal", None, None)
    assert ledger.verify(db).ok


def test_the_table_refuses_updates_and_deletes(ingress_client: TestClient, drain: Drain,
                                               db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="a"))
    drain()
    with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
        db.execute("UPDATE consent_changes SET new_state = 'opted_in'")
    with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
        db.execute("DELETE FROM consent_changes")
    with db.transaction():  # a procedure's setting lets only its own kind of edit through
        db.execute("SELECT set_config('hookstream.ledger_procedure', 'retention', true)")
        with pytest.raises(psycopg.errors.RestrictViolation):
            db.execute("UPDATE consent_changes SET new_state = 'opted_in'")
    assert rows(db, "SELECT new_state FROM consent_changes") == [{"new_state": "opted_out"}]


def _chain(db: psycopg.Connection, subject: str) -> list[tuple[int, str | None, str]]:
    return [(r["seq"], r["prev_hash"], r["hash"]) for r in
            rows(db, "SELECT seq, prev_hash, hash FROM consent_changes WHERE subject = %s ORDER BY seq", subject)]


def test_a_chain_per_subject_and_a_broken_link_found(ingress_client: TestClient, drain: Drain,
                                                     db: psycopg.Connection, capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    for i, (text, when) in enumerate([("STOP", "08"), ("START", "09"), ("STOP", "10"), ("START", "11")]):
        post(ingress_client, "/webhooks/cm/mo", {**cm_mo(text, ref=f"r{i}"), "timeUtc": f"2025-09-03T{when}:00:00"})
        drain()
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", sender="+31687654321", ref="other"))
    drain()
    chain = _chain(db, "+31612345678")
    assert [seq for seq, _, _ in chain] == [1, 2, 3, 4]
    assert chain[0][1] is None and all(chain[i][1] == chain[i - 1][2] for i in range(1, 4))
    assert [seq for seq, _, _ in _chain(db, "+31687654321")] == [1]
    assert ledger.verify(db).ok

    # An edit made around the trigger (as a superuser could) is found, at its link.
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")  # triggers off
        db.execute("UPDATE consent_changes SET new_state = 'opted_in' WHERE subject = '+31612345678' AND seq = 3")
    verdict = ledger.verify(db)
    assert [(b.subject, b.seq, b.reason) for b in verdict.broken] == [("+31612345678", 3, "content")]
    # A row deleted around it: the next link reports the gap.
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("DELETE FROM consent_changes WHERE subject = '+31687654321'")
        db.execute("DELETE FROM consent_changes WHERE subject = '+31612345678' AND seq = 2")
    verdict = ledger.verify(db)
    assert [(b.subject, b.seq, b.reason) for b in verdict.broken] == [("+31612345678", 3, "missing")]


def test_verify_command(ingress_client: TestClient, drain: Drain, db: psycopg.Connection, database_url: str,
                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="a"))
    drain()
    monkeypatch.setenv("HOOKSTREAM_DATABASE_URL", database_url)
    assert cli.main(["consent", "verify"]) == 0
    assert "every link holds" in capsys.readouterr().out
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("UPDATE consent_changes SET inbound_text = 'START'")
    assert cli.main(["consent", "verify"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "link 1" in out and "edited" in out


def test_retention_keeps_the_links_it_removes(ingress_client: TestClient, drain: Drain,
                                              db: psycopg.Connection) -> None:
    old = datetime(2020, 1, 1, tzinfo=UTC)
    for i, text in enumerate(["STOP", "START", "STOP"]):
        when = (old + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%S")
        post(ingress_client, "/webhooks/cm/mo", {**cm_mo(text, ref=f"r{i}"), "timeUtc": when})
        drain()
    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", ref="now"))
    drain()
    assert delete_batches(db, EVIDENCE_SQL, datetime(2021, 1, 1, tzinfo=UTC)) == 3
    assert [seq for seq, _, _ in _chain(db, "+31612345678")] == [4]
    assert [r["seq"] for r in rows(db, "SELECT seq FROM consent_changes_removed ORDER BY seq")] == [1, 2, 3]
    assert rows(db, "SELECT procedure, rows FROM consent_ledger_log") == [{"procedure": "retention", "rows": 3}]
    assert ledger.verify(db).ok
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="later"))  # the chain goes on after removed links
    drain()
    assert [seq for seq, _, _ in _chain(db, "+31612345678")] == [4, 5]
    assert ledger.verify(db).ok


def test_two_writers_of_one_subject_never_fork_its_chain(db: psycopg.Connection, database_url: str) -> None:
    """The second writer waits for the first's commit (the subject's lock), then links after its row."""
    insert = ("INSERT INTO consent_changes (event_key, subject, scope, new_state, outcome, provider, occurred_at,"
              " received_at) VALUES (%s, '+31612345678', '3669', 'opted_out', 'opt_out', 'cm', now(), now())")
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        first.execute(insert, ("k1",))  # open transaction holding the subject's lock
        done = threading.Event()

        def write() -> None:
            second.execute(insert, ("k2",))
            second.commit()
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        # The second waits on the subject's advisory lock, not forking the chain beside the first.
        pid, deadline = second.info.backend_pid, time.monotonic() + 10
        while db.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != ("advisory",):
            assert time.monotonic() < deadline and not done.is_set(), "the second writer did not wait"
            time.sleep(0.01)
        first.commit()
        writer.join(10)
        assert done.is_set()
    assert [seq for seq, _, _ in _chain(db, "+31612345678")] == [1, 2]
    assert ledger.verify(db).ok
