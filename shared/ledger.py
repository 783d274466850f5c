"""The consent ledger's hash chains: checking them, link by link.

Each subject's consent changes are a chain (migration 009): a row's `hash` is SHA-256 over the
previous link's hash and the row's content (`consent_change_digest`, the same function the insert
trigger used), and `seq` numbers the links from 1. Links that retention removed are kept in
consent_changes_removed (their hashes, not their content), so the chain runs across them.

A chain is broken where a row's content no longer gives its hash (an edit), where a row does not
name the previous link's hash (a row inserted or rewritten around the trigger), or where a number
is missing (a row deleted around the retention procedure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

# Every link with what it should be, in chain order; the first wrong one is reported. One pass
# over consent_changes_chain (subject, seq), set-based: no round trip per subject.
BROKEN_SQL = """
WITH links AS (
    SELECT c.subject, c.seq, c.id, c.prev_hash, c.hash, consent_change_digest(c) AS computed, FALSE AS removed
    FROM consent_changes c
    UNION ALL
    SELECT r.subject, r.seq, r.change_id, r.prev_hash, r.hash, r.hash, TRUE FROM consent_changes_removed r
), chained AS (
    SELECT *, lag(hash) OVER w AS before, lag(seq) OVER w AS before_seq FROM links
    WINDOW w AS (PARTITION BY subject ORDER BY seq)
)
SELECT subject, seq, id, removed,
       CASE WHEN seq <> coalesce(before_seq, 0) + 1 THEN 'missing'
            WHEN prev_hash IS DISTINCT FROM before THEN 'prev_hash'
            ELSE 'content' END AS reason
FROM chained
WHERE seq <> coalesce(before_seq, 0) + 1 OR prev_hash IS DISTINCT FROM before OR computed <> hash
ORDER BY subject, seq
LIMIT %s
"""
COUNT_SQL = "SELECT count(DISTINCT subject), count(*) FROM consent_changes"

REASONS = {
    "missing": "a link is missing before this one (a row deleted outside the retention procedure)",
    "prev_hash": "the row does not name the previous link's hash (a row inserted or rewritten around the trigger)",
    "content": "the row's content no longer gives its hash (the row was edited)",
}


@dataclass(frozen=True, slots=True)
class BrokenLink:
    subject: str
    seq: int
    change_id: int
    removed: bool  # the link is one retention removed (its record in consent_changes_removed)
    reason: str

    def describe(self) -> str:
        return (f"subject {self.subject}: link {self.seq} (consent_changes.id {self.change_id}"
                f"{', removed by retention' if self.removed else ''}): {REASONS[self.reason]}")

    def as_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "seq": self.seq, "change_id": self.change_id, "removed": self.removed,
                "reason": self.reason, "detail": REASONS[self.reason]}


@dataclass(frozen=True, slots=True)
class Verdict:
    subjects: int
    changes: int
    broken: list[BrokenLink]  # the first broken link of each chain found, chain by chain

    @property
    def ok(self) -> bool:
        return not self.broken


def verify(conn: psycopg.Connection[Any], limit: int = 100) -> Verdict:
    """Check every chain; the first broken link of each broken subject, at most `limit` of them."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        subjects, changes = conn.execute(COUNT_SQL).fetchone() or (0, 0)
        rows = conn.execute(BROKEN_SQL, (limit * 50,)).fetchall()
    first: dict[str, BrokenLink] = {}
    for subject, seq, change_id, removed, reason in rows:
        if subject not in first and len(first) < limit:
            first[subject] = BrokenLink(subject, seq, change_id, removed, reason)
    return Verdict(subjects, changes, list(first.values()))
