"""One batch's write is pipelined (workers.store.write_entries): what it reports and what it stores
agree with the tables, a redelivery stores nothing again, and a statement Postgres refuses fails the
batch with its own error (which the bisection reads), leaving nothing of it behind.
"""

from __future__ import annotations

import psycopg
import pytest

from bench.profile_workers import stream_entries
from shared.settings import Settings
from workers.batch import is_outage
from workers.context import normalize_context
from workers.normalize import normalize_entries
from workers.store import write_entries

pytestmark = pytest.mark.integration

TABLES = ("events", "event_keys", "message_status", "status_history", "consent_changes", "raw_archive",
          "dead_letters")


def counts(db: psycopg.Connection) -> dict[str, int]:
    return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}  # type: ignore[index]


def test_a_pipelined_batch_reports_what_it_stored(db: psycopg.Connection) -> None:
    entries = normalize_entries(stream_entries(1_000, 50), normalize_context(Settings()))
    with db.transaction():
        result = write_entries(db, entries)
    stored = counts(db)
    assert result.dead_letters == stored["dead_letters"] == 20
    assert result.inserted == result.events == stored["events"] == stored["event_keys"] > 900
    assert result.statuses == stored["message_status"] > 0
    assert result.consent_changes == stored["consent_changes"] > 0
    assert stored["raw_archive"] == 1_000  # every record, those dead-lettered included
    assert stored["status_history"] >= stored["message_status"]
    with db.transaction():
        again = write_entries(db, entries)  # a redelivery of the whole batch
    assert (again.inserted, again.statuses, again.consent_changes) == (0, 0, 0)
    assert {**counts(db), "dead_letters": stored["dead_letters"]} == stored


def test_a_refused_statement_fails_the_batch_with_its_own_error(db: psycopg.Connection) -> None:
    entries = normalize_entries(stream_entries(200, 0), normalize_context(Settings()))
    db.execute("ALTER TABLE status_history ADD CONSTRAINT refuse_all CHECK (status_rank < 0) NOT VALID")
    try:
        with pytest.raises(psycopg.errors.CheckViolation) as refused, db.transaction():
            write_entries(db, entries)
        assert refused.value.sqlstate == "23514" and not is_outage(refused.value)
        assert counts(db) == dict.fromkeys(TABLES, 0)
    finally:
        db.execute("ALTER TABLE status_history DROP CONSTRAINT refuse_all")
