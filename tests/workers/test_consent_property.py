"""Consent under any delivery: redeliveries, reordered commits and batch boundaries change nothing.

Each generated case is a handful of CM replies (STOP, START, STOPALL; with or without a provider
time) to two scopes from two people. They are delivered in a random commit order, cut into random
batches, and some are delivered again later (a provider's retry, with a later receive time). The
final consent must equal that of delivering each reply once, and every consent row must be what
its recorded changes replay to. Runs against the real Postgres, through `write_entries`.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from shared.record import RawRecord
from tests.conftest import empty_tables
from workers.normalize import Entry, NormalizeContext, normalize_entry
from workers.store import write_entries

pytestmark = pytest.mark.integration

BASE_MS = 1_750_000_000_000
SUBJECTS = ("+31612345678", "+31687654321")
SCOPES = ("3669", "4000")
WORDS = ("STOP", "START", "START", "STOPALL")  # START twice: a retried START after a STOP is the classic reversal

reply = st.tuples(st.sampled_from(SUBJECTS), st.sampled_from(SCOPES), st.sampled_from(WORDS),
                  st.one_of(st.none(), st.integers(0, 5)))  # provider minute, or none (CM SMS replies)


def entry(n: int, subject: str, scope: str, word: str, minute: int | None, received_ms: int) -> Entry:
    body: dict[str, Any] = {"reference": f"r{n}", "from": subject, "to": scope, "body": word,
                            "groupings": ["", "", ""]}
    if minute is not None:
        body["timeUtc"] = f"2025-09-03T10:0{minute}:00"
    record = RawRecord("cm", "mo", "POST", b"", "application/json", {}, "127.0.0.1", received_ms,
                       json.dumps(body).encode(), stream_id=f"{received_ms}-{n}")
    return normalize_entry(record.stream_id or "", record.to_fields(), NormalizeContext())


def deliver(db: psycopg.Connection, batches: list[list[Entry]]) -> None:
    empty_tables(db)
    for batch in batches:
        with db.transaction():
            write_entries(db, batch)


def consent(db: psycopg.Connection) -> set[tuple[str, str, str]]:
    return set(db.execute("SELECT subject, scope, state FROM consent").fetchall())


def assert_changes_replay_to_consent(db: psycopg.Connection) -> None:
    """Each row's state is the last recorded change of its (subject, scope) in event-time order (at equal
    times an opt-out wins, so it counts as later), for '*' rows and for the subjects without one (a '*'
    row changes other scopes' answers, not their rows)."""
    replayed: dict[tuple[str, str], str] = {}
    for subject, scope, new_state in db.execute(
            "SELECT subject, scope, new_state FROM consent_changes"
            " ORDER BY occurred_at, new_state = 'opted_out', received_at, id"):
        replayed[(subject, scope)] = new_state
    with_global = {row[0] for row in db.execute("SELECT subject FROM consent WHERE scope = '*'")}
    for subject, scope, state in consent(db):
        if scope == "*" or subject not in with_global:
            assert replayed.get((subject, scope)) == state, (subject, scope, state, replayed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(replies=st.lists(reply, min_size=1, max_size=7), data=st.data())
def test_consent_is_independent_of_redelivery_and_commit_order(db: psycopg.Connection, replies: list[Any],
                                                               data: st.DataObject) -> None:
    note(f"replies: {replies}")
    firsts = [entry(n, *r, BASE_MS + n * 1000) for n, r in enumerate(replies)]
    deliver(db, [firsts])
    expected = consent(db)
    assert_changes_replay_to_consent(db)

    order = data.draw(st.permutations(range(len(firsts))), label="commit order")
    retried = data.draw(st.lists(st.integers(0, len(firsts) - 1), min_size=1, max_size=4), label="retried replies")
    deliveries = [firsts[i] for i in order]
    # A retry comes later than its first delivery, with a receive time of its own.
    for k, i in enumerate(retried):
        deliveries.append(entry(i, *replies[i], BASE_MS + 100_000 + k * 1000))
    ends = data.draw(st.lists(st.booleans(), min_size=len(deliveries), max_size=len(deliveries)), label="batch ends")
    batches: list[list[Entry]] = [[]]
    for delivery, last_of_batch in zip(deliveries, ends):
        batches[-1].append(delivery)
        if last_of_batch:
            batches.append([])
    deliver(db, batches)
    assert consent(db) == expected
    assert_changes_replay_to_consent(db)
