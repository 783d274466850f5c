"""Applying consent signals of a batch: lock the subjects, run the pure rules, write the changes.

A change is keyed by the event that caused it, so a redelivery or a replay never applies it
twice; an event whose change was missed before (a corrected keyword policy) can still apply.

The workers call `apply` (a sync cursor, inside their batch transaction); the consent API calls
`apply_async` for a person's review decision, with `decided_by` naming the API token's label.
Both run the same statements in the same order around one pure `plan`, so a decision follows
exactly the rules the workers follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, Sequence

import psycopg

from shared.events import GLOBAL_SCOPE, Event, Outcome
from workers.rules import OUTCOME_STATE, ConsentRow, apply_to_row, effective, scope_of

CHANGE_COLUMNS = (
    "event_key", "subject", "scope", "old_state", "new_state", "outcome", "keyword", "provider", "occurred_at",
    "received_at",
)
# A person's decision also names who decided (an API token's label, never the token).
DECIDED_CHANGE_COLUMNS = CHANGE_COLUMNS + ("decided_by",)
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


def _changes_sql(columns: Sequence[str]) -> str:
    types = ["text"] * 8 + ["timestamptz", "timestamptz"] + ["text"] * (len(columns) - 10)
    return (
        f"INSERT INTO consent_changes ({', '.join(columns)}) SELECT * FROM unnest("
        + ", ".join(f"%b::{t}[]" for t in types)
        + ") ON CONFLICT (event_key) DO NOTHING"
        f" RETURNING id, {', '.join(columns)}"
    )


CHANGES_SQL = _changes_sql(CHANGE_COLUMNS)
DECIDED_CHANGES_SQL = _changes_sql(DECIDED_CHANGE_COLUMNS)

Key = tuple[str, str]


class Received(Protocol):
    """What the rules need of the record beside an event: when we received it (a RawRecord has it)."""

    @property
    def received_at(self) -> datetime: ...


Item = tuple[Event, Received]


def _event_time(event: Event, record: Received) -> tuple[datetime, datetime]:
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


@dataclass(frozen=True, slots=True)
class Plan:
    """What to write: column arrays for UPSERT_SQL and for the changes statement (None: nothing)."""

    upsert: list[list[Any]] | None
    changes: list[list[Any]] | None
    decided_by: str | None = None

    @property
    def changes_sql(self) -> str:
        return CHANGES_SQL if self.decided_by is None else DECIDED_CHANGES_SQL

    def returned(self, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        names = ("id",) + (CHANGE_COLUMNS if self.decided_by is None else DECIDED_CHANGE_COLUMNS)
        return [dict(zip(names, row)) for row in rows]


def signals_of(items: Sequence[Item]) -> list[Item]:
    return [(event, record) for event, record in items
            if event.consent in OUTCOME_STATE and event.phone and event.scope]


def subjects_of(signals: Sequence[Item]) -> list[str]:
    """Sorted, so that concurrent writers take the advisory locks in the same order."""
    return sorted({event.phone for event, _ in signals if event.phone})


def plan(signals: Sequence[Item], done: set[str], loaded: Sequence[Sequence[Any]],
         decided_by: str | None = None) -> Plan:
    """The pure middle: the loaded rows and the signals in time order → rows to upsert, changes to add."""
    ledger = _Ledger({(s, sc): ConsentRow(st, conf, ch) for s, sc, st, conf, ch in loaded})
    changes: list[list[Any]] = []
    for event, record in sorted(signals, key=lambda item: (*_event_time(*item), item[0].dedupe_key)):
        at, seen = _event_time(event, record)
        # An event whose change is recorded has had its effect: applying it again is never a new signal.
        if event.consent is None or event.phone is None or event.scope is None or event.dedupe_key in done:
            continue
        change = ledger.apply(event, event.phone, event.consent, event.scope, at)
        if change is not None:
            scope, before, after = change
            changes.append([event.dedupe_key, event.phone, scope, None if before == "unknown" else before, after,
                            str(event.consent), event.keyword, event.provider, at, seen]
                           + ([] if decided_by is None else [decided_by]))
    upsert = None
    if ledger.touched:
        rows = [[*key, row.state, row.changed_at, row.confirmed_at, event.keyword, event.provider, event.dedupe_key]
                for key, (row, event) in sorted(ledger.touched.items())]
        upsert = [[r[i] for r in rows] for i in range(len(ROW_COLUMNS))]
    width = len(CHANGE_COLUMNS) + (0 if decided_by is None else 1)
    columns = [[c[i] for c in changes] for i in range(width)] if changes else None
    return Plan(upsert, columns, decided_by)


def apply(cur: psycopg.Cursor[Any], items: Sequence[Item], *, decided_by: str | None = None) -> list[dict[str, Any]]:
    signals = signals_of(items)
    if not signals:
        return []
    subjects = subjects_of(signals)
    cur.execute(LOCK_SQL, (subjects,))
    done = {row[0] for row in cur.execute(DONE_SQL, ([e.dedupe_key for e, _ in signals],))}
    todo = plan(signals, done, cur.execute(LOAD_SQL, (subjects,)).fetchall(), decided_by)
    if todo.upsert is not None:
        cur.execute(UPSERT_SQL, todo.upsert)
    if todo.changes is None:
        return []
    cur.execute(todo.changes_sql, todo.changes)
    return todo.returned(cur.fetchall())


async def apply_async(cur: psycopg.AsyncCursor[Any], items: Sequence[Item], *,
                      decided_by: str | None = None) -> list[dict[str, Any]]:
    """`apply` for an async connection (the consent API): the same statements, the same plan."""
    signals = signals_of(items)
    if not signals:
        return []
    subjects = subjects_of(signals)
    await cur.execute(LOCK_SQL, (subjects,))
    await cur.execute(DONE_SQL, ([e.dedupe_key for e, _ in signals],))
    done = {row[0] for row in await cur.fetchall()}
    await cur.execute(LOAD_SQL, (subjects,))
    todo = plan(signals, done, await cur.fetchall(), decided_by)
    if todo.upsert is not None:
        await cur.execute(UPSERT_SQL, todo.upsert)
    if todo.changes is None:
        return []
    await cur.execute(todo.changes_sql, todo.changes)
    return todo.returned(await cur.fetchall())
