"""Pure state rules: the monotonic delivery status and consent transitions.

Both are written so that applying the same event twice, or events in any order, leaves the
same answer; the SQL in `store.py` repeats the status rule in its ON CONFLICT clause so it
also holds between concurrent workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.events import GLOBAL_SCOPE, Outcome, Status

# queued < sent < a terminal state; unknown never overwrites anything.
STATUS_RANK: dict[Status, int] = {
    Status.UNKNOWN: 0,
    Status.QUEUED: 1,
    Status.SENT: 2,
    Status.DELIVERED: 3,
    Status.FAILED: 3,
    Status.EXPIRED: 3,
    Status.REJECTED: 3,
}


@dataclass(frozen=True, slots=True)
class StatusPoint:
    rank: int
    order_at: datetime  # provider time, or receive time when the provider gave none
    received_at: datetime


def supersedes(new: StatusPoint, old: StatusPoint) -> bool:
    """A higher rank wins; within a rank (between terminal states too) the later time wins."""
    if new.rank != old.rank:
        return new.rank > old.rank
    return (new.order_at, new.received_at) > (old.order_at, old.received_at)


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
