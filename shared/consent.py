"""Consent: the rules of one (subject, scope) row, and applying a batch of signals to the table.

The rules are pure and written so that applying the same signal twice, or signals in any order,
leaves the same answer. Applying locks the subjects, runs the pure `plan`, and writes the changes.

A change is keyed by the event that caused it, so a redelivery or a replay never applies it
twice; an event whose change was missed before (a corrected keyword policy) can still apply.

The workers call `apply` (a sync cursor, inside their batch transaction) with the signals of
their events; the consent API calls `apply_async` for a person's review decision, with
`decided_by` naming the API token's label. Both run the same statements in the same order around
one `plan`, so a decision follows exactly the rules the workers follow; so do imported records
(`POST /v1/consent/records`), ordered by their time among the replies.

Every change carries its evidence (`Signal`'s last fields) and is a link of its subject's hash
chain; the table's triggers (migration 009) make the links and refuse edits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg

from shared.events import GLOBAL_SCOPE, Outcome
from shared.keywords import POLICY_VERSION

OPTED_IN = "opted_in"
OPTED_OUT = "opted_out"
UNKNOWN = "unknown"

# Where a change came from (consent_changes.source).
KEYWORD, PROVIDER_SIGNAL, IMPORT, REVIEW = "keyword", "provider_signal", "import", "review"
SOURCES = (KEYWORD, PROVIDER_SIGNAL, IMPORT, REVIEW)
WORKER = "worker"  # the actor of the changes the workers apply
# HOOKSTREAM_OPT_OUT_REACH: an opt-out reaches its own scope, or every scope of the subject.
REACH_SCOPE, REACH_ALL = "scope", "all"
REACHES = (REACH_SCOPE, REACH_ALL)

OUTCOME_STATE = {Outcome.OPT_OUT: OPTED_OUT, Outcome.OPT_OUT_ALL: OPTED_OUT, Outcome.OPT_IN: OPTED_IN}


@dataclass(frozen=True, slots=True)
class ConsentRow:
    """The stored state of one (subject, scope): `confirmed_at` is the latest event that asserted it."""

    state: str
    confirmed_at: datetime
    changed_at: datetime


def scope_of(outcome: Outcome, scope: str, reach: str = REACH_SCOPE) -> str:
    """The scope a signal decides: its own, or every scope for STOP ALL, and for any opt-out when
    the reach in force is `all` (HOOKSTREAM_OPT_OUT_REACH, the FCC's "revoke all")."""
    if outcome is Outcome.OPT_OUT_ALL or (outcome is Outcome.OPT_OUT and reach == REACH_ALL):
        return GLOBAL_SCOPE
    return scope


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

    The rest is the evidence the change records (SOURCES): the raw stream entry and its archive row
    (`archive_key`, see `archive_key`), the provider's message id, or the import's id; the inbound
    text; `evidence`, an import's own (serialized JSON); `actor`, who acted (an API token's label).
    """

    event_key: str
    subject: str
    scope: str
    outcome: Outcome
    at: datetime
    received_at: datetime
    keyword: str | None
    provider: str
    source: str = KEYWORD
    stream_id: str | None = None
    archive_key: str | None = None
    provider_message_id: str | None = None
    import_id: str | None = None
    inbound_text: str | None = None
    evidence: str | None = None
    actor: str = WORKER


def archive_key(received_at: datetime, stream_id: str) -> str:
    """The raw_archive row of a stream entry, as one string: its primary key (received_at, stream_id)."""
    return f"{received_at.astimezone(UTC).isoformat(timespec='microseconds')}/{stream_id}"


def text_sha256(text: str | None) -> str | None:
    return hashlib.sha256(text.encode()).hexdigest() if text is not None else None


CHANGE_COLUMNS = (
    "event_key", "subject", "scope", "old_state", "new_state", "outcome", "keyword", "provider", "occurred_at",
    "received_at", "decided_by", "source", "stream_id", "archive_key", "provider_message_id", "import_id",
    "inbound_text", "inbound_sha256", "policy_version", "reach", "actor", "evidence",
)
_CHANGE_TYPES = ["text"] * 8 + ["timestamptz", "timestamptz"] + ["text"] * 11 + ["jsonb"]
ROW_COLUMNS = ("subject", "scope", "state", "changed_at", "confirmed_at", "keyword", "provider", "event_key")

# Writers of consent lock the subjects' buckets (consent_lock_bucket, migration 009: 1024 of them),
# in bucket order so that two writers never wait on each other in a cycle. Buckets and not subjects:
# an import of 10,000 subjects in one transaction would need 10,000 entries of Postgres' shared lock
# table (64 per connection by default); a bucket shared by two subjects only serializes their writers.
LOCK_SQL = (
    "SELECT pg_advisory_xact_lock(hashtext('hookstream.consent'), b) FROM"
    " (SELECT DISTINCT consent_lock_bucket(s) AS b FROM unnest(%b::text[]) AS s ORDER BY 1) AS buckets"
)
# Look-ups by a list of keys probe the table's index once per key, whatever its size or statistics: a
# subquery per key (OFFSET 0 keeps the planner from folding it into a join). As `= ANY(array)` or a
# join, a table of 10,000 to a few 100,000 rows was read whole for every batch (the plan a table
# gets while it still fits in memory): 6 µs per entry for the consent-change look-up of a replay at
# 100,000 records; 1,000,000-row tables were probed through their index either way.
LOAD_SQL = ("SELECT c.subject, c.scope, c.state, c.confirmed_at, c.changed_at"
            " FROM (SELECT DISTINCT unnest(%b::text[])) AS u(subject) CROSS JOIN LATERAL"
            " (SELECT * FROM consent WHERE consent.subject = u.subject OFFSET 0) AS c")
DONE_SQL = ("SELECT c.event_key FROM unnest(%b::text[]) AS u(event_key) CROSS JOIN LATERAL"
            " (SELECT event_key FROM consent_changes WHERE consent_changes.event_key = u.event_key LIMIT 1) AS c")
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


# The chain columns (seq, prev_hash, hash) are the table's BEFORE INSERT trigger's, under the
# subject's advisory lock (migration 009): no writer can fork a chain.
CHANGES_SQL = (
    f"INSERT INTO consent_changes ({', '.join(CHANGE_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%b::{t}[]" for t in _CHANGE_TYPES)
    + ") ON CONFLICT (event_key) DO NOTHING"
    f" RETURNING id, {', '.join(CHANGE_COLUMNS)}"
)

Key = tuple[str, str]


class _Ledger:
    """The consent rows of the batch's subjects, as the pure rules see them."""

    def __init__(self, rows: dict[Key, ConsentRow], reach: str) -> None:
        self.rows = rows
        self.reach = reach
        self.touched: dict[Key, tuple[ConsentRow, Signal]] = {}

    def answer(self, subject: str, scope: str) -> str:
        everywhere = self.rows.get((subject, GLOBAL_SCOPE))
        if scope == GLOBAL_SCOPE:
            return effective(everywhere, None)
        return effective(self.rows.get((subject, scope)), everywhere)

    def apply(self, signal: Signal) -> tuple[str, str, str] | None:
        """(scope, old answer, new answer) when the signal changed the answer for its scope."""
        scope = scope_of(signal.outcome, signal.scope, self.reach)
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
    """What to write: column arrays for UPSERT_SQL and for CHANGES_SQL (None: nothing)."""

    upsert: list[list[Any]] | None
    changes: list[list[Any]] | None

    @staticmethod
    def returned(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        names = ("id",) + CHANGE_COLUMNS
        return [dict(zip(names, row)) for row in rows]


def subjects_of(signals: Sequence[Signal]) -> list[str]:
    """Sorted, so that concurrent writers take the advisory locks in the same order."""
    return sorted({signal.subject for signal in signals})


def _time_order(signal: Signal) -> tuple[datetime, datetime, str]:
    return signal.at, signal.received_at, signal.event_key


def _change_row(signal: Signal, scope: str, before: str, after: str, decided_by: str | None,
                reach: str) -> list[Any]:
    """One row of CHANGE_COLUMNS: the change and its evidence. The keyword policy decided keyword
    changes, and flagged what a person decided on review; it has no part in the others."""
    policy = POLICY_VERSION if signal.source in (KEYWORD, REVIEW) else None
    return [signal.event_key, signal.subject, scope, None if before == UNKNOWN else before, after,
            str(signal.outcome), signal.keyword, signal.provider, signal.at, signal.received_at, decided_by,
            signal.source, signal.stream_id, signal.archive_key, signal.provider_message_id, signal.import_id,
            signal.inbound_text, text_sha256(signal.inbound_text), policy, reach, decided_by or signal.actor,
            signal.evidence]


def plan(signals: Sequence[Signal], done: set[str], loaded: Sequence[Sequence[Any]],
         decided_by: str | None = None, reach: str = REACH_SCOPE) -> Plan:
    """The pure middle: the loaded rows and the signals in time order → rows to upsert, changes to add."""
    ledger = _Ledger({(s, sc): ConsentRow(st, conf, ch) for s, sc, st, conf, ch in loaded}, reach)
    changes: list[list[Any]] = []
    for signal in sorted(signals, key=_time_order):
        # An event whose change is recorded has had its effect: applying it again is never a new signal.
        if signal.event_key in done:
            continue
        change = ledger.apply(signal)
        if change is not None:
            changes.append(_change_row(signal, *change, decided_by, reach))
    upsert = None
    if ledger.touched:
        rows = [[*key, row.state, row.changed_at, row.confirmed_at, signal.keyword, signal.provider, signal.event_key]
                for key, (row, signal) in sorted(ledger.touched.items())]
        upsert = [[r[i] for r in rows] for i in range(len(ROW_COLUMNS))]
    columns = [[c[i] for c in changes] for i in range(len(CHANGE_COLUMNS))] if changes else None
    return Plan(upsert, columns)


def apply(cur: psycopg.Cursor[Any], signals: Sequence[Signal], *,
          decided_by: str | None = None, reach: str = REACH_SCOPE) -> list[dict[str, Any]]:
    """Apply the signals in the caller's transaction; the changes recorded, as RETURNING gave them."""
    if not signals:
        return []
    subjects = subjects_of(signals)
    cur.execute(LOCK_SQL, (subjects,))
    # Both reads sent before either is read: in a pipeline (workers.store), one wait instead of two.
    with cur.connection.cursor() as loaded:
        cur.execute(DONE_SQL, ([s.event_key for s in signals],))
        loaded.execute(LOAD_SQL, (subjects,))
        done = {row[0] for row in cur.fetchall()}
        todo = plan(signals, done, loaded.fetchall(), decided_by, reach)
    if todo.upsert is not None:
        cur.execute(UPSERT_SQL, todo.upsert)
    if todo.changes is None:
        return []
    cur.execute(CHANGES_SQL, todo.changes)
    return todo.returned(cur.fetchall())


async def apply_async(cur: psycopg.AsyncCursor[Any], signals: Sequence[Signal], *,
                      decided_by: str | None = None, reach: str = REACH_SCOPE) -> list[dict[str, Any]]:
    """`apply` for an async connection (the consent API): the same statements, the same plan."""
    if not signals:
        return []
    subjects = subjects_of(signals)
    await cur.execute(LOCK_SQL, (subjects,))
    await cur.execute(DONE_SQL, ([s.event_key for s in signals],))
    done = {row[0] for row in await cur.fetchall()}
    await cur.execute(LOAD_SQL, (subjects,))
    todo = plan(signals, done, await cur.fetchall(), decided_by, reach)
    if todo.upsert is not None:
        await cur.execute(UPSERT_SQL, todo.upsert)
    if todo.changes is None:
        return []
    await cur.execute(CHANGES_SQL, todo.changes)
    return todo.returned(await cur.fetchall())
