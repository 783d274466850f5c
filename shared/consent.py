"""Consent: the rules of one (subject, scope) row, and applying a batch of signals to the table.

The rules are pure and written so that applying the same signal twice, or signals in any order,
leaves the same answer. Applying locks the subjects, runs the pure `plan`, and writes the changes.

A change is keyed by the event that caused it, so a redelivery or a replay never applies it
twice; an event whose change was missed before (a corrected keyword policy) can still apply.

The workers call `apply` (a sync cursor, inside their batch transaction) with the signals of
their events; the consent API calls `apply_async` for a person's review decision, with
`decided_by` naming the API token's label. Both run the same statements in the same order around
one `plan`, so a decision follows exactly the rules the workers follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from shared.events import GLOBAL_SCOPE, Outcome

OPTED_IN = "opted_in"
OPTED_OUT = "opted_out"
UNKNOWN = "unknown"

OUTCOME_STATE = {Outcome.OPT_OUT: OPTED_OUT, Outcome.OPT_OUT_ALL: OPTED_OUT, Outcome.OPT_IN: OPTED_IN}


@dataclass(frozen=True, slots=True)
class ConsentRow:
    """The stored state of one (subject, scope): `confirmed_at` is the latest event that asserted it."""

    state: str
    confirmed_at: datetime
    changed_at: datetime


def scope_of(outcome: Outcome, scope: str) -> str:
    return GLOBAL_SCOPE if outcome is Outcome.OPT_OUT_ALL else scope


def apply_to_row(row: ConsentRow | None, state: str, at: datetime) -> ConsentRow | None:
    """The row after one event, or None when the event is older than what the row knows.

    The latest event by provider time wins; at equal times an opt-out wins.
    """
    if row is None:
        return ConsentRow(state, at, at)
    if row.state == state:
        return ConsentRow(state, max(row.confirmed_at, at), row.changed_at) if at > row.confirmed_at else row
    if at > row.confirmed_at or (at == row.confirmed_at and state == OPTED_OUT):
        return ConsentRow(state, at, at)
    return None


def effective(own: ConsentRow | None, everywhere: ConsentRow | None) -> str:
    """The answer for one scope: its own row against the subject's '*' row, later wins, ties opt out."""
    rows = [row for row in (own, everywhere) if row is not None]
    if not rows:
        return UNKNOWN
    latest = max(rows, key=lambda r: (r.confirmed_at, r.state == OPTED_OUT))
    return latest.state


class Signal(NamedTuple):
    """One event's word on consent: only what the rules and the audit trail need of it.

    `outcome` is one of OUTCOME_STATE's; `at` is the provider's time, or `received_at` when the
    provider gave none (the receive time also breaks ties between equal times). Immutable, and a
    tuple rather than a frozen dataclass: the workers build one per consent event on their hot
    path, and a tuple is built in a third of the time.
    """

    event_key: str
    subject: str
    scope: str
    outcome: Outcome
    at: datetime
    received_at: datetime
    keyword: str | None
    provider: str


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


class _Ledger:
    """The consent rows of the batch's subjects, as the pure rules see them."""

    def __init__(self, rows: dict[Key, ConsentRow]) -> None:
        self.rows = rows
        self.touched: dict[Key, tuple[ConsentRow, Signal]] = {}

    def answer(self, subject: str, scope: str) -> str:
        everywhere = self.rows.get((subject, GLOBAL_SCOPE))
        if scope == GLOBAL_SCOPE:
            return effective(everywhere, None)
        return effective(self.rows.get((subject, scope)), everywhere)

    def apply(self, signal: Signal) -> tuple[str, str, str] | None:
        """(scope, old answer, new answer) when the signal changed the answer for its scope."""
        scope = scope_of(signal.outcome, signal.scope)
        key = (signal.subject, scope)
        before = self.answer(*key)
        old = self.rows.get(key)
        row = apply_to_row(old, OUTCOME_STATE[signal.outcome], signal.at)
        if row is None or row == old:
            return None
        self.rows[key] = row
        self.touched[key] = (row, signal)
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


def subjects_of(signals: Sequence[Signal]) -> list[str]:
    """Sorted, so that concurrent writers take the advisory locks in the same order."""
    return sorted({signal.subject for signal in signals})


def _time_order(signal: Signal) -> tuple[datetime, datetime, str]:
    return signal.at, signal.received_at, signal.event_key


def plan(signals: Sequence[Signal], done: set[str], loaded: Sequence[Sequence[Any]],
         decided_by: str | None = None) -> Plan:
    """The pure middle: the loaded rows and the signals in time order → rows to upsert, changes to add."""
    ledger = _Ledger({(s, sc): ConsentRow(st, conf, ch) for s, sc, st, conf, ch in loaded})
    changes: list[list[Any]] = []
    for signal in sorted(signals, key=_time_order):
        # An event whose change is recorded has had its effect: applying it again is never a new signal.
        if signal.event_key in done:
            continue
        change = ledger.apply(signal)
        if change is not None:
            scope, before, after = change
            changes.append([signal.event_key, signal.subject, scope, None if before == UNKNOWN else before, after,
                            str(signal.outcome), signal.keyword, signal.provider, signal.at, signal.received_at]
                           + ([] if decided_by is None else [decided_by]))
    upsert = None
    if ledger.touched:
        rows = [[*key, row.state, row.changed_at, row.confirmed_at, signal.keyword, signal.provider, signal.event_key]
                for key, (row, signal) in sorted(ledger.touched.items())]
        upsert = [[r[i] for r in rows] for i in range(len(ROW_COLUMNS))]
    width = len(CHANGE_COLUMNS) + (0 if decided_by is None else 1)
    columns = [[c[i] for c in changes] for i in range(width)] if changes else None
    return Plan(upsert, columns, decided_by)


def apply(cur: psycopg.Cursor[Any], signals: Sequence[Signal], *,
          decided_by: str | None = None) -> list[dict[str, Any]]:
    """Apply the signals in the caller's transaction; the changes recorded, as RETURNING gave them."""
    if not signals:
        return []
    subjects = subjects_of(signals)
    cur.execute(LOCK_SQL, (subjects,))
    done = {row[0] for row in cur.execute(DONE_SQL, ([s.event_key for s in signals],))}
    todo = plan(signals, done, cur.execute(LOAD_SQL, (subjects,)).fetchall(), decided_by)
    if todo.upsert is not None:
        cur.execute(UPSERT_SQL, todo.upsert)
    if todo.changes is None:
        return []
    cur.execute(todo.changes_sql, todo.changes)
    return todo.returned(cur.fetchall())


async def apply_async(cur: psycopg.AsyncCursor[Any], signals: Sequence[Signal], *,
                      decided_by: str | None = None) -> list[dict[str, Any]]:
    """`apply` for an async connection (the consent API): the same statements, the same plan."""
    if not signals:
        return []
    subjects = subjects_of(signals)
    await cur.execute(LOCK_SQL, (subjects,))
    await cur.execute(DONE_SQL, ([s.event_key for s in signals],))
    done = {row[0] for row in await cur.fetchall()}
    await cur.execute(LOAD_SQL, (subjects,))
    todo = plan(signals, done, await cur.fetchall(), decided_by)
    if todo.upsert is not None:
        await cur.execute(UPSERT_SQL, todo.upsert)
    if todo.changes is None:
        return []
    await cur.execute(todo.changes_sql, todo.changes)
    return todo.returned(await cur.fetchall())
