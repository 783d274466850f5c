"""Helpers for the feed tests: consent changes written straight into the table, as a worker would."""

from __future__ import annotations

from typing import Any

import psycopg

INSERT = (
    "INSERT INTO consent_changes (event_key, subject, scope, old_state, new_state, outcome, keyword, provider,"
    " occurred_at, received_at) VALUES (%s, %s, %s, NULL, %s, 'opt_out', 'stop', 'cm', now(), now()) RETURNING id"
)


def insert_change(conn: psycopg.Connection[Any], key: str, subject: str = "+31612345678", scope: str = "3669",
                  new_state: str = "opted_out") -> int:
    """Insert one change in `conn`'s current transaction (committed only when the caller says so)."""
    row = conn.execute(INSERT, (key, subject, scope, new_state)).fetchone()
    assert row is not None
    return int(row[0])
