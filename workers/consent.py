"""Applying consent signals of a batch: lock the subjects, run the pure rules, write the changes.

A change is keyed by the event that caused it, so a redelivery or a replay never applies it
twice; an event whose change was missed before (a corrected keyword policy) can still apply.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from shared.events import GLOBAL_SCOPE, Event, Outcome
from shared.record import RawRecord
from workers.rules import OUTCOME_STATE, ConsentRow, apply_to_row, effective, scope_of

CHANGE_COLUMNS = (
    "event_key", "subject", "scope", "old_state", "new_state", "outcome", "keyword", "provider", "occurred_at",
    "received_at",
)
ROW_COLUMNS = ("subject", "scope", "state", "changed_at", "confirmed_at", "keyword", "provider", "event_key")

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(s, 0)) FROM unnest(%b::text[]) AS s"
LOAD_SQL = "SELECT subject, scope, state, confirmed_at, changed_at FROM consent WHERE subject = ANY(%b)"
DONE_SQL = "SELECT event_key FROM consent_changes WHERE event_key = ANY(%b)"
UPSERT_SQL = (
    f"INSERT INTO consent ({', '.join(ROW_COLUMNS)}) SELECT * FROM unnest("
    "%b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[], %b::text[])"
    " ON CONFLICT (subject, scope) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at,"
    " confirmed_at = excluded.confirmed_at,"
    " keyword = CASE WHEN consent.state = excluded.state THEN consent.keyword ELSE excluded.keyword END,"
    " provider = CASE WHEN consent.state = excluded.state THEN consent.provider ELSE excluded.provider END,"
    " event_key = CASE WHEN consent.state = excluded.state THEN consent.event_key ELSE excluded.event_key END,"
    " updated_at = now()"
    " WHERE (consent.state, consent.changed_at, consent.confirmed_at)"
    " IS DISTINCT FROM (excluded.state, excluded.changed_at, excluded.confirmed_at)"
)
CHANGES_SQL = (
    f"INSERT INTO consent_changes ({', '.join(CHANGE_COLUMNS)}) SELECT * FROM unnest("
    "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],"
    " %b::timestamptz[], %b::timestamptz[]) ON CONFLICT (event_key) DO NOTHING"
    f" RETURNING id, {', '.join(CHANGE_COLUMNS)}"
)

Key = tuple[str, str]


def _event_time(event: Event, record: RawRecord) -> tuple[datetime, datetime]:
    """Provider time, receive time when there is none; the receive time breaks ties."""
    return event.occurred_at or record.received_at, record.received_at


class _Ledger:
    """The consent rows of the batch's subjects, as the pure rules see them."""

    def __init__(self, rows: dict[Key, ConsentRow]) -> None:
        self.rows = rows
        self.touched: dict[Key, tuple[ConsentRow, Event]] = {}

    def answer(self, subject: str, scope: str) -> str:
        everywhere = self.rows.get((subject, GLOBAL_SCOPE))
        return effective(everywhere, None) if scope == GLOBAL_SCOPE else effective(self.rows.get((subject, scope)), everywhere)

    def apply(self, event: Event, subject: str, outcome: Outcome, scope: str, at: datetime) -> tuple[str, str, str] | None:
        """(scope, old answer, new answer) when the event changed the answer for its scope."""
        scope = scope_of(outcome, scope)
        key = (subject, scope)
        before = self.answer(*key)
        old = self.rows.get(key)
        row = apply_to_row(old, OUTCOME_STATE[outcome], at)
        if row is None or row == old:
            return None
        self.rows[key] = row
        self.touched[key] = (row, event)
        after = self.answer(*key)
        return (scope, before, after) if after != before else None


def apply(cur: psycopg.Cursor[Any], items: list[tuple[Event, RawRecord]]) -> list[dict[str, Any]]:
    signals = [
        (event, record) for event, record in items
        if event.consent in OUTCOME_STATE and event.phone and event.scope
    ]
    if not signals:
        return []
    subjects = sorted({event.phone for event, _ in signals if event.phone})
    cur.execute(LOCK_SQL, (subjects,))
    done = {row[0] for row in cur.execute(DONE_SQL, ([e.dedupe_key for e, _ in signals],))}
    ledger = _Ledger({(s, sc): ConsentRow(st, conf, ch) for s, sc, st, conf, ch in cur.execute(LOAD_SQL, (subjects,))})
    changes: list[list[Any]] = []
    for event, record in sorted(signals, key=lambda item: (*_event_time(*item), item[0].dedupe_key)):
        at, seen = _event_time(event, record)
        if event.consent is None or event.phone is None or event.scope is None:
            continue
        change = ledger.apply(event, event.phone, event.consent, event.scope, at)
        if change is not None and event.dedupe_key not in done:
            scope, before, after = change
            changes.append([event.dedupe_key, event.phone, scope, None if before == "unknown" else before, after,
                            str(event.consent), event.keyword, event.provider, at, seen])
    if ledger.touched:
        rows = [[*key, row.state, row.changed_at, row.confirmed_at, event.keyword, event.provider, event.dedupe_key]
                for key, (row, event) in sorted(ledger.touched.items())]
        cur.execute(UPSERT_SQL, [[r[i] for r in rows] for i in range(len(ROW_COLUMNS))])
    if not changes:
        return []
    cur.execute(CHANGES_SQL, [[c[i] for c in changes] for i in range(len(CHANGE_COLUMNS))])
    names = ("id",) + CHANGE_COLUMNS
    return [dict(zip(names, row)) for row in cur.fetchall()]
