"""The store's row classes against the migrated tables, and its row builders against the row classes.

A row class is the one description of a table the store writes (column names, their order, their
SQL types): a column it misnames or mistypes, or a required column it lacks, fails here rather
than at the first batch. The hot builders fill their rows by position: each is read back through
its row class and checked field by field, by name, so a value in the wrong slot fails here too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest

from shared.events import Event, Kind, Outcome, Reason, Status
from shared.record import RawRecord
from workers.normalize import NORMALIZER_VERSION
from workers.rules import STATUS_RANK
from workers.store import (
    TABLES,
    ArchiveRow,
    Arrival,
    EventRow,
    StatusRow,
    _archive_row,
    _event_row,
    spec,
    status_winners,
)

COLUMNS_SQL = (
    "SELECT column_name, udt_name,"
    " is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO' AND is_generated = 'NEVER'"
    " FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s"
)

RECEIVED = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
OCCURRED = datetime(2026, 3, 1, 11, 59, 58, tzinfo=UTC)


@pytest.mark.integration
@pytest.mark.parametrize("table", sorted(TABLES))
def test_the_row_class_matches_the_migrated_table(table: str, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        found = conn.execute(COLUMNS_SQL, (table,)).fetchall()
    assert found, f"no table {table}"
    types = {column: udt for column, udt, _ in found}
    required = {column for column, _, needed in found if needed}
    written = dict(spec(TABLES[table]))
    # column: (the type the store sends, the table's type or None when the table lacks the column)
    assert {c: (t, types.get(c)) for c, t in written.items() if types.get(c) != t} == {}
    assert sorted(required - written.keys()) == [], "NOT NULL columns without a default the store never writes"


def status_event() -> Event:
    """An event whose every field holds a value of its own, so no two columns can be confused."""
    return Event(
        provider="provider", feed="feed", kind=Kind.STATUS, dedupe_key="dedupe_key", payload={"payload": 1},
        occurred_at=OCCURRED, provider_event_id="provider_event_id", message_ref="message_ref", phone="phone",
        phone_raw="phone_raw", counterpart="counterpart", counterpart_raw="counterpart_raw", body="body",
        status=Status.DELIVERED, provider_status="provider_status", provider_reason="provider_reason",
        reason=Reason.BLOCKED, user_ref="user_ref", event_type="event_type", consent=Outcome.OPT_OUT,
        scope="scope", keyword="keyword", outcome=Outcome.HELP,
    )


def test_the_event_row_puts_each_value_in_its_column() -> None:
    event, arrival = status_event(), Arrival("1-0", RECEIVED)
    row = EventRow._make(_event_row(event, arrival))  # _make refuses a row of another length
    same_name = {c: getattr(event, c) for c in EventRow._fields if hasattr(event, c)}
    assert row._asdict() == {
        **same_name, "keyword_outcome": "help", "received_at": RECEIVED, "stream_id": "1-0",
        "payload": '{"payload":1}', "normalizer_version": NORMALIZER_VERSION,
    }
    assert [type(v) for v in (row.kind, row.status, row.reason, row.consent)] == [str] * 4  # values, not enums


def test_the_status_row_puts_each_value_in_its_column() -> None:
    event = status_event()
    [values] = status_winners([(event, Arrival("1-0", RECEIVED))])
    row = StatusRow._make(values)
    assert row._asdict() == {
        "provider": "provider", "message_ref": "message_ref", "recipient": "phone", "status": "delivered",
        "status_rank": STATUS_RANK[Status.DELIVERED], "provider_status": "provider_status",
        "provider_reason": "provider_reason", "reason": "blocked", "status_at": OCCURRED, "order_at": OCCURRED,
        "received_at": RECEIVED, "counterpart": "counterpart", "event_key": "dedupe_key",
    }


def test_the_archive_row_puts_each_value_in_its_column() -> None:
    record = RawRecord(
        provider="provider", feed="feed", method="POST", query=b"query", content_type="content_type",
        headers={"user-agent": "agent"}, client="client", received_at_ms=int(RECEIVED.timestamp() * 1000),
        body=b"body", version=7, stream_id="1-0",
    )
    row = ArchiveRow._make(_archive_row(record))
    same_name: dict[str, Any] = {c: getattr(record, c) for c in ArchiveRow._fields}
    assert row._asdict() == {**same_name, "headers": orjson.dumps({"user-agent": "agent"}).decode()}
    assert row.received_at == RECEIVED
