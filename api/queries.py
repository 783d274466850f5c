"""Every statement of the API, each run on an async connection from the pool.

The bulk check is ONE set-based statement: the subjects go in as one array (binary), are joined
to consent with their ordinal, and come back in input order — no round trip per subject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from api.answers import ROW_SQL_COLUMNS, Row
from shared import consent
from shared.consent import REACH_SCOPE, REVIEW, Signal, archive_key
from shared.events import Outcome
from shared.feed import FEED_SQL, Change, Position, iso

INVALID = "invalid"  # bulk-check state of an id that is neither a number nor known: becomes a 422

# A subject's rows under the number and under its erasure hash (an erased person who had opted out).
SUBJECT_SQL = f"SELECT {ROW_SQL_COLUMNS} FROM consent WHERE subject = ANY(%s::text[])"
DEACTIVATED_SQL = "SELECT max(deactivated_at) FROM consent_deactivations WHERE subject = %s"
SEEN_SQL = "SELECT EXISTS (SELECT 1 FROM events WHERE phone = %s)"

# OFFSET 0 keeps each look-up a probe of the events' phone index per id: without it the planner may
# hash the whole events table instead, and did for 1,000 ids whenever the partitioned table had no
# statistics of its own, which autovacuum never gathers (workers/store.py, FIRST_SEEN_SQL, alike).
_KNOWN = (
    "WHEN i.phone OR EXISTS (SELECT 1 FROM consent k WHERE k.subject = i.subject)"
    " OR EXISTS (SELECT 1 FROM events e WHERE e.phone = i.subject OFFSET 0) THEN 'unknown' ELSE 'invalid'"
)
# The input, each subject with its ordinal; with erasure hashes, each subject looked up under both
# the number and its hash (an erased person who had opted out), still as an equality join.
_INPUT = "unnest(%b::text[], %b::bool[]) WITH ORDINALITY AS i(subject, phone, ord)"
_INPUT_HASHED = ("unnest(%b::text[], %b::bool[], %b::text[]) WITH ORDINALITY AS i(subject, phone, hashed, ord)"
                 " CROSS JOIN LATERAL (VALUES (i.subject), (i.hashed)) AS k(lookup)")
# Each subject's latest deactivation (api.deactivations): consent confirmed before it is stale.
_DEACTIVATED = (" LEFT JOIN (SELECT subject, max(deactivated_at) AS at FROM consent_deactivations"
                " WHERE subject = ANY(%b::text[]) GROUP BY subject) d ON d.subject = i.subject")


def check_sql(scoped: bool, hashed: bool) -> str:
    """The bulk check's one statement. Parameters: subjects, phone flags, [hashes], [scope forms and
    `*`], subjects again (for the deactivations).

    With a scope: the winning row among the scope's rows (both notations) and the `*` row — the
    later confirmed_at, an opt-out on a tie: `shared.consent.effective`, as one DISTINCT ON.
    Without: opted out if any scope is. A scope row is out when it is out and not older than the
    `*` row (ties: out), the `*` row when it is out — so: the `*` row is out, or the latest
    opted-out scope row is at least as recent as an opted-in `*` row (or there is none)."""
    source = (_INPUT_HASHED if hashed else _INPUT) + " LEFT JOIN consent c ON c.subject = " + (
        "k.lookup" if hashed else "i.subject")
    if scoped:
        return ("SELECT DISTINCT ON (i.ord) CASE WHEN c.state = 'opted_in' AND c.confirmed_at < d.at THEN 'stale'"
                " WHEN c.state IS NOT NULL THEN c.state " + _KNOWN + " END"
                f" FROM {source} AND c.scope = ANY(%b::text[]){_DEACTIVATED}"
                " ORDER BY i.ord, c.confirmed_at DESC NULLS LAST, c.state = 'opted_out' DESC")
    return ("SELECT CASE WHEN bool_or(c.scope = '*' AND c.state = 'opted_out')"
            " OR max(c.confirmed_at) FILTER (WHERE c.scope <> '*' AND c.state = 'opted_out')"
            " >= coalesce(max(c.confirmed_at) FILTER (WHERE c.scope = '*' AND c.state = 'opted_in'), '-infinity')"
            " THEN 'opted_out' WHEN count(c.state) > 0 THEN CASE WHEN max(c.confirmed_at) < max(d.at) THEN 'stale'"
            " ELSE 'opted_in' END " + _KNOWN + " END"
            f" FROM {source}{_DEACTIVATED}"
            " GROUP BY i.ord, i.subject, i.phone ORDER BY i.ord")


BULK_SETTINGS_SQL = "SELECT set_config('jit', 'off', true), set_config('work_mem', '64MB', true)"

REVIEW_SQL = (
    "SELECT id, event_key, provider, subject, scope, body, keyword, occurred_at, received_at"
    " FROM consent_review WHERE id > %s ORDER BY id LIMIT %s"
)
# Only a queued event can be decided: the condition lets events_review_key (partial) find it in
# each weekly partition without reading the others.
EVENT_SQL = (
    "SELECT provider, phone, scope, keyword, keyword_outcome, occurred_at, received_at, stream_id, body,"
    " provider_event_id"
    " FROM events WHERE dedupe_key = %s AND keyword_outcome = 'possible_opt_out'"
)
DECIDE_SQL = (
    "INSERT INTO review_decisions (event_key, decision, decided_by) VALUES (%s, %s, %s)"
    " ON CONFLICT (event_key) DO NOTHING RETURNING decided_at"
)
DECIDED_SQL = "SELECT decision, decided_by, decided_at, change_id FROM review_decisions WHERE event_key = %s"
SET_CHANGE_SQL = "UPDATE review_decisions SET change_id = %s WHERE event_key = %s"
CHANGE_SQL = (
    "SELECT id, txid::text, event_key, subject, scope, old_state, new_state, outcome, keyword, provider,"
    " occurred_at, received_at, decided_by FROM consent_changes WHERE id = %s"
)

Conn = psycopg.AsyncConnection[Any]


async def subject_rows(conn: Conn, subject: str, hashed: str | None = None) -> list[Row]:
    cur = await conn.execute(SUBJECT_SQL, ([subject] if hashed is None else [subject, hashed],))
    return [Row.of(row) for row in await cur.fetchall()]


async def deactivated_at(conn: Conn, subject: str) -> datetime | None:
    cur = await conn.execute(DEACTIVATED_SQL, (subject,))
    row = await cur.fetchone()
    return row[0] if row else None


async def seen_as_person(conn: Conn, subject: str) -> bool:
    """Stored as the person of some event (an Mx2 subscriberId that never opted in or out)."""
    cur = await conn.execute(SEEN_SQL, (subject,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def bulk_states(conn: Conn, values: Sequence[str], phone: Sequence[bool],
                      scope_forms: list[str] | None, hashed: Sequence[str | None] | None = None) -> list[str]:
    """One state per input, in input order: opted_in, opted_out, stale, unknown, or `invalid`.
    `hashed`: each input's erasure hash (None: no erasure key)."""
    if not values:
        return []
    async with conn.transaction(), conn.cursor(binary=True) as cur:
        # Transaction-scoped (fine behind PgBouncer): JIT compiling costs more than it saves on this
        # one-off plan, and the join and the sort of 100,000 rows fit in memory instead of spilling.
        await cur.execute(BULK_SETTINGS_SQL)
        params: list[Any] = [list(values), list(phone)] + ([list(hashed)] if hashed is not None else [])
        scopes = [[*scope_forms, "*"]] if scope_forms is not None else []
        await cur.execute(check_sql(scope_forms is not None, hashed is not None), [*params, *scopes, list(values)])
        return [row[0] for row in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class ReviewItem:
    id: int
    event_id: str
    provider: str
    subject: str | None
    scope: str | None
    body: str | None
    keyword: str | None
    occurred_at: datetime | None
    received_at: datetime


async def review_page(conn: Conn, after_id: int, limit: int) -> list[ReviewItem]:
    cur = await conn.execute(REVIEW_SQL, (after_id, limit))
    return [ReviewItem(*row) for row in await cur.fetchall()]


async def changes_page(conn: Conn, after: Position, limit: int) -> list[Change]:
    cur = await conn.execute(FEED_SQL, (str(after.txid), after.id, limit))
    return [Change.from_row(row) for row in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class Decision:
    event_id: str
    subject: str | None
    scope: str | None
    decision: str
    decided_by: str
    decided_at: datetime
    change: Change | None
    repeated: bool  # the same decision had already been taken (a retry): nothing new was written

    def as_json(self) -> dict[str, Any]:
        """The answer of `POST /v1/consent/review/{event_id}` (the dashboard answers the same)."""
        return {
            "event_id": self.event_id, "subject": self.subject, "scope": self.scope, "decision": self.decision,
            "decided_by": self.decided_by, "decided_at": iso(self.decided_at),
            "change": self.change.as_json() if self.change else None, "repeated": self.repeated,
        }


class NotInQueue(LookupError):
    """No possible_opt_out event has this id."""


class Conflict(Exception):
    """Another decision was taken on this event before."""

    def __init__(self, decision: str, decided_by: str) -> None:
        super().__init__(decision)
        self.decision = decision
        self.decided_by = decided_by


class CannotApply(ValueError):
    """The event names no subject or no scope to opt out of."""


async def decide(conn: Conn, event_id: str, decision: str, label: str, reach: str = REACH_SCOPE) -> Decision:
    """Record a person's decision; an opt_out goes through the consent rules the workers apply, audited
    with the token's label. One transaction: the decision and its change stand or fall together."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(EVENT_SQL, (event_id,))
        found = await cur.fetchone()
        if found is None or found[4] != Outcome.POSSIBLE_OPT_OUT:
            raise NotInQueue(event_id)
        provider, phone, scope, keyword, _, occurred_at, received_at, stream_id, body, message_id = found
        if decision == "opt_out" and not (phone and scope):
            raise CannotApply("the event names no subject or no scope to opt out of")
        await cur.execute(DECIDE_SQL, (event_id, decision, label))
        inserted = await cur.fetchone()
        if inserted is None:
            await cur.execute(DECIDED_SQL, (event_id,))
            found = await cur.fetchone()
            if found is None:  # the insert conflicted, so an earlier decision is there
                raise RuntimeError(f"review decision of {event_id} neither inserted nor found")
            earlier, by, at, change_id = found
            if earlier != decision:
                raise Conflict(str(earlier), str(by))
            return Decision(event_id, phone, scope, decision, str(by), at, await _change(cur, change_id), True)
        change_id = None
        if decision == "opt_out":
            # The person's word stands in for the event's: an opt-out at the event's own time.
            # Its evidence is the event's: the raw entry, the text the keyword policy flagged.
            signal = Signal(event_id, phone, scope, Outcome.OPT_OUT, occurred_at or received_at, received_at, keyword,
                            provider, source=REVIEW, stream_id=stream_id,
                            archive_key=archive_key(received_at, stream_id) if stream_id else None,
                            provider_message_id=message_id, inbound_text=body, actor=label)
            applied = await consent.apply_async(cur, [signal], decided_by=label, reach=reach)
            if applied:
                change_id = applied[0]["id"]
                await cur.execute(SET_CHANGE_SQL, (change_id, event_id))
        return Decision(event_id, phone, scope, decision, label, inserted[0], await _change(cur, change_id), False)


async def _change(cur: psycopg.AsyncCursor[Any], change_id: int | None) -> Change | None:
    if change_id is None:
        return None
    await cur.execute(CHANGE_SQL, (change_id,))
    row = await cur.fetchone()
    return Change.from_row(row) if row else None
