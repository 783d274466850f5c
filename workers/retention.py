"""Retention of the tables that are not partitioned by time: batched deletes, each bounded in time.

- event_keys past HOOKSTREAM_DEDUPE_HORIZON. It cannot be partitioned by time: its primary key is
  the dedupe key alone, and a partitioned table's unique key must hold the partition key. Deleting a
  horizon's far edge costs as many deletes as inserts, done here in batches of ctids found by
  event_keys_received_at (an index that only grows on its right edge).
- message_status: final rows (delivered, failed, expired, rejected) whose status we received longer
  ago than HOOKSTREAM_STATUS_RETENTION, found by message_status_final_received (partial: final rows
  only). Our receive time, not the provider's: a report that arrives today about an old message is
  kept. A row still in flight stays; a late report about a deleted message makes it again.
- consent_changes past HOOKSTREAM_CONSENT_EVIDENCE_RETENTION, except the change that set a
  subject's current state, the evidence of what `consent` says. `consent` is never deleted.

The dispatcher runs these (workers/upkeep.py) between its reads: each call stops after `budget_s`
and the rest waits for the next round.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from shared import connections
from shared.settings import Settings

log = logging.getLogger("hookstream.retention")

BATCH = 5000
BUDGET_S = 0.25

KEYS_SQL = ("DELETE FROM event_keys WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM event_keys WHERE received_at < %s LIMIT %s))")
STATUS_SQL = (
    "DELETE FROM message_status WHERE ctid = ANY(ARRAY(SELECT ctid FROM message_status WHERE received_at < %s"
    " AND status IN ('delivered', 'failed', 'expired', 'rejected') LIMIT %s))"  # message_status_final_received
)
# consent_changes is append-only (migration 009): its retention is a procedure of the database that
# may delete, keeps the links of each subject's hash chain and logs what it removed; one row per id.
EVIDENCE_SQL = "SELECT * FROM consent_evidence_retention(%s, %s)"


def delete_batches(conn: psycopg.Connection[Any], sql: str, cutoff: Any, *, batch: int = BATCH,
                   budget_s: float = BUDGET_S) -> int:
    """Run a batched DELETE (params: cutoff, batch) until it deletes less than a batch or the budget is
    spent; each batch commits on its own. Returns the rows deleted."""
    deadline, deleted = time.monotonic() + budget_s, 0
    while True:
        with conn.transaction():
            count = max(conn.execute(sql, (cutoff, batch)).rowcount, 0)
        deleted += count
        if count < batch or time.monotonic() >= deadline:
            return deleted


class Retention:
    """The three deletes, on a Postgres connection of its own opened when first needed."""

    def __init__(self, settings: Settings, budget_s: float = BUDGET_S) -> None:
        self.settings = settings
        self.budget_s = budget_s
        self._database: psycopg.Connection[Any] | None = None

    def event_keys(self, now: datetime | None = None) -> int:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.settings.dedupe_horizon_s)
        return self._run("event_keys", KEYS_SQL, cutoff)

    def statuses(self, now: datetime | None = None) -> int:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.settings.status_retention_s)
        return self._run("message_status", STATUS_SQL, cutoff)

    def consent_evidence(self, now: datetime | None = None) -> int:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.settings.consent_evidence_retention_s)
        return self._run("consent_changes", EVIDENCE_SQL, cutoff)

    def _run(self, table: str, sql: str, cutoff: Any) -> int:
        """Rows deleted; Postgres trouble waits for the next round."""
        try:
            if self._database is None or self._database.closed:
                self._database = connections.connect(self.settings.database_url_or_default(),
                                                     connections.Role.DISPATCHER)
            deleted = delete_batches(self._database, sql, cutoff, budget_s=self.budget_s)
        except psycopg.Error as exc:
            log.warning("%s retention: postgres unavailable (%s), will retry", table, type(exc).__name__)
            self.close()
            return 0
        if deleted:
            log.info("%s retention: %d row(s) deleted", table, deleted)
        return deleted

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
        self._database = None
