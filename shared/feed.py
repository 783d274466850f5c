"""The consent-change feed as the API and the outbound stream show it: positions, changes, times.

Why commit order and not `consent_changes.id`: ids are taken when a row is inserted, not when it
commits, so with several workers id 8 can become visible after id 9 was already read, and an
id cursor would skip it for ever. Every row carries its transaction id (`txid`, xid8); we read
in (txid, id) order and only rows whose txid is below `pg_snapshot_xmin(pg_current_snapshot())`,
the oldest transaction still running: every transaction that can still commit has a txid at or
above it (running ones, and any that starts later), so nothing can commit behind a position.
The cost: the feed waits for the oldest open write transaction in the cluster (seconds, normally).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# The version of a change's stream record (its `v` field).
RECORD_VERSION = 1

# Every committed change after a position, in commit order (see the module docstring).
FEED_SQL = (
    "SELECT id, txid::text, event_key, subject, scope, old_state, new_state, outcome, keyword, provider,"
    " occurred_at, received_at, decided_by FROM consent_changes"
    " WHERE (txid, id) > (%s::text::xid8, %s) AND txid < pg_snapshot_xmin(pg_current_snapshot())"
    " ORDER BY txid, id LIMIT %s"
)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the feed: the change's transaction id, then its id (ties inside one transaction)."""

    txid: int = 0
    id: int = 0

    def encode(self) -> str:
        return f"{self.txid}-{self.id}"

    @classmethod
    def decode(cls, raw: str | bytes | None) -> Position:
        """The stored cursor; raises ValueError for anything that is not `<txid>-<id>`."""
        if raw is None:
            return cls()
        text = raw.decode() if isinstance(raw, bytes) else raw
        txid, sep, change_id = text.partition("-")
        if not sep or not txid.isdigit() or not change_id.isdigit():
            raise ValueError(f"not a feed position: {text[:40]!r}")
        return cls(int(txid), int(change_id))


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with a `Z`: the one time format of the API and the stream."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Change:
    """One row of consent_changes as the feeds show it (the API as JSON, the stream as fields)."""

    change_id: int
    position: Position
    event_id: str
    subject: str
    scope: str
    old_state: str | None
    new_state: str
    outcome: str
    keyword: str | None
    provider: str
    occurred_at: datetime
    received_at: datetime
    decided_by: str | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Change:
        """A row of FEED_SQL's columns."""
        change_id, txid, event_key, subject, scope, old, new, outcome, keyword, provider, occurred, received, by = row
        return cls(change_id, Position(int(txid), change_id), event_key, subject, scope, old, new, outcome, keyword,
                   provider, occurred, received, by)

    def as_json(self) -> dict[str, Any]:
        return {
            "change_id": self.change_id, "event_id": self.event_id, "subject": self.subject, "scope": self.scope,
            "old_state": self.old_state, "new_state": self.new_state, "outcome": self.outcome,
            "keyword": self.keyword, "provider": self.provider, "occurred_at": iso(self.occurred_at),
            "received_at": iso(self.received_at), "decided_by": self.decided_by,
        }

    def as_fields(self) -> dict[str, str]:
        """The stream record: every value a string, "" for none; `v` is the record format's version."""
        return {"v": str(RECORD_VERSION), **{k: "" if v is None else str(v) for k, v in self.as_json().items()}}
