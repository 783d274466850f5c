"""Consent rows → the answer for a subject: pure, and built on the rule the workers apply.

The state of (subject, scope) is its own row against the subject's `*` row: the later event
wins, an opt-out wins a tie (`shared.consent.effective`). `winner` picks the deciding row with
the same key, so the answer can also say which event decided it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.consent import OPTED_IN, OPTED_OUT, UNKNOWN
from shared.events import GLOBAL_SCOPE
from shared.feed import iso

STALE = "stale"  # opted in before the number was reported disconnected or reassigned
NOT_ALLOWED = frozenset({OPTED_OUT, STALE})
ROW_SQL_COLUMNS = "scope, state, changed_at, confirmed_at, keyword, provider, event_key"


@dataclass(frozen=True, slots=True)
class Row:
    scope: str
    state: str
    changed_at: datetime
    confirmed_at: datetime
    keyword: str | None
    provider: str
    event_key: str

    @classmethod
    def of(cls, row: Sequence[Any]) -> Row:
        return cls(*row)


def _key(row: Row) -> tuple[datetime, bool]:
    return row.confirmed_at, row.state == OPTED_OUT


def winner(rows: Iterable[Row | None]) -> Row | None:
    """The row whose state holds: latest `confirmed_at`, an opt-out on a tie, the first on a full tie."""
    present = [row for row in rows if row is not None]
    return max(present, key=_key) if present else None


@dataclass(frozen=True, slots=True)
class Answer:
    subject: str
    scope: str | None
    deciding: Row | None
    state: str
    scopes: list[tuple[str, str, Row]]  # every scope of the subject with its state and the row deciding it

    @property
    def allowed(self) -> bool:
        return self.state not in NOT_ALLOWED

    def as_json(self) -> dict[str, Any]:
        d = self.deciding
        return {
            "subject": self.subject, "scope": self.scope, "state": self.state, "allowed": self.allowed,
            "changed_at": iso(d.changed_at) if d else None, "keyword": d.keyword if d else None,
            "provider": d.provider if d else None, "event_id": d.event_key if d else None,
            "scopes": [{"scope": scope, "state": state, "changed_at": iso(row.changed_at)}
                       for scope, state, row in self.scopes],
        }


def per_scope(rows: Sequence[Row]) -> list[tuple[str, Row]]:
    """Each scope with its deciding row: its own row against the `*` row (the `*` row stands alone)."""
    everywhere = next((row for row in rows if row.scope == GLOBAL_SCOPE), None)
    decided = [(row.scope, row if row.scope == GLOBAL_SCOPE else winner([row, everywhere])) for row in rows]
    return sorted(((scope, row) for scope, row in decided if row is not None), key=lambda item: item[0])


def merged(rows: Sequence[Row]) -> list[Row]:
    """One row per scope: the number's and its erasure hash's rows of a scope, the winner of them."""
    by_scope: dict[str, Row] = {}
    for row in rows:
        best = winner([by_scope.get(row.scope), row])
        if best is not None:
            by_scope[row.scope] = best
    return list(by_scope.values())


def state_of(row: Row | None, deactivated_at: datetime | None) -> str:
    """The row's state, `stale` for an opt-in confirmed before the number was deactivated."""
    if row is None:
        return UNKNOWN
    if row.state == OPTED_IN and deactivated_at is not None and row.confirmed_at < deactivated_at:
        return STALE
    return row.state


def answer(subject: str, rows: Sequence[Row], scope_forms: Sequence[str] | None,
           deactivated_at: datetime | None = None) -> Answer:
    """With scope forms: that scope's state, a `*` opt-out included. Without: opted out if the
    subject is opted out in any scope (the conservative answer for a sender that did not say which)."""
    rows = merged(rows)
    scopes = [(scope, state_of(row, deactivated_at), row) for scope, row in per_scope(rows)]
    if scope_forms is not None:
        own = winner(row for row in rows if row.scope in scope_forms)
        everywhere = next((row for row in rows if row.scope == GLOBAL_SCOPE), None)
        deciding = everywhere if GLOBAL_SCOPE in scope_forms else winner([own, everywhere])
        return Answer(subject, scope_forms[0], deciding, state_of(deciding, deactivated_at), scopes)
    opted_out = [row for _, _, row in scopes if row.state == OPTED_OUT]
    deciding = winner(opted_out) or winner(row for _, _, row in scopes)
    return Answer(subject, None, deciding, state_of(deciding, deactivated_at), scopes)
