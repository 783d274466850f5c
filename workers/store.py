"""Writing a batch to Postgres: one transaction, set-based statements, no round trip per row.

Keys are collapsed inside the batch first (ON CONFLICT cannot touch a row twice in one
statement) and sorted, so concurrent workers take row locks in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, NamedTuple

import orjson
import psycopg

from shared.events import Event, Kind
from shared.record import RawRecord
from workers import consent
from workers.normalize import NORMALIZER_VERSION, Entry
from workers.rules import STATUS_RANK, StatusPoint, supersedes

EVENT_COLUMNS = (
    "dedupe_key", "provider", "feed", "kind", "provider_event_id", "message_ref", "phone", "phone_raw",
    "counterpart", "counterpart_raw", "body", "status", "provider_status", "provider_reason", "reason",
    "user_ref", "event_type", "consent", "scope", "keyword", "keyword_outcome", "occurred_at",
    "received_at", "stream_id", "payload", "normalizer_version",
)
EVENT_TYPES = ["text"] * 21 + ["timestamptz", "timestamptz", "text", "jsonb", "int4"]
# What a replay through a corrected normalizer may rewrite; first-seen facts stay.
REPLAYED_COLUMNS = [c for c in EVENT_COLUMNS if c not in ("dedupe_key", "received_at", "stream_id")]


def _unnest(columns: Iterable[str], types: Iterable[str]) -> str:
    params = ", ".join(f"%b::{t}[]" for t in types)  # %b: binary arrays, no per-element escaping
    return f"SELECT * FROM unnest({params}) AS u({', '.join(columns)})"


EVENTS_INSERT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) {_unnest(EVENT_COLUMNS, EVENT_TYPES)}"
# Only the events this delivery stored first are new signals: a redelivery is not (design §2, side effects once).
EVENTS_LIVE_SQL = EVENTS_INSERT + " ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key"
# A replay applies each event at its first delivery's receive time, never at the replayed entry's.
FIRST_SEEN_SQL = "SELECT dedupe_key, received_at FROM events WHERE dedupe_key = ANY(%b::text[])"
EVENTS_REPLAY_SQL = (
    EVENTS_INSERT
    + " ON CONFLICT (dedupe_key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in REPLAYED_COLUMNS)
    + ", updated_at = now() WHERE ("
    + ", ".join(f"events.{c}" for c in REPLAYED_COLUMNS)
    + ") IS DISTINCT FROM ("
    + ", ".join(f"excluded.{c}" for c in REPLAYED_COLUMNS)
    + ") RETURNING (xmax = 0)"  # true: inserted, false: updated
)

STATUS_COLUMNS = (
    "provider", "message_ref", "recipient", "status", "status_rank", "provider_status", "provider_reason",
    "reason", "status_at", "order_at", "received_at", "counterpart", "event_key",
)
STATUS_TYPES = ["text"] * 4 + ["int2"] + ["text"] * 3 + ["timestamptz"] * 3 + ["text", "text"]
STATUS_SQL = (
    f"INSERT INTO message_status ({', '.join(STATUS_COLUMNS)}) {_unnest(STATUS_COLUMNS, STATUS_TYPES)}"
    " ON CONFLICT (provider, message_ref, recipient) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in STATUS_COLUMNS[3:])
    + ", updated_at = now()"
    " WHERE excluded.status_rank > message_status.status_rank"
    " OR (excluded.status_rank = message_status.status_rank"
    " AND (excluded.order_at, excluded.received_at) > (message_status.order_at, message_status.received_at))"
)

DEAD_COLUMNS = (
    "stream_id", "provider", "feed", "method", "reason", "body", "query", "headers", "content_type", "client",
    "received_at",
)
DEAD_TYPES = ["text"] * 5 + ["bytea", "bytea", "jsonb", "text", "text", "timestamptz"]
DEAD_SQL = (
    f"INSERT INTO dead_letters ({', '.join(DEAD_COLUMNS)}) {_unnest(DEAD_COLUMNS, DEAD_TYPES)}"
    " ON CONFLICT (stream_id) DO UPDATE SET reason = excluded.reason, last_seen = now(),"
    " attempts = dead_letters.attempts + 1"
)


ARCHIVE_COLUMNS = (
    "received_at", "stream_id", "provider", "feed", "method", "query", "content_type", "headers", "client", "body",
    "version",
)
ARCHIVE_TYPES = ["timestamptz", "text", "text", "text", "text", "bytea", "text", "jsonb", "text", "bytea", "int4"]
ARCHIVE_SQL = (
    f"INSERT INTO raw_archive ({', '.join(ARCHIVE_COLUMNS)}) {_unnest(ARCHIVE_COLUMNS, ARCHIVE_TYPES)}"
    " ON CONFLICT DO NOTHING"
)
# A replay that turns a dead letter into events has repaired it.
REPAIRED_SQL = "DELETE FROM dead_letters WHERE stream_id = ANY(%b::text[])"


@dataclass
class WriteResult:
    events: int = 0
    inserted: int = 0
    updated: int = 0  # replays only: stored rows a corrected normalizer changed
    statuses: int = 0
    consent_changes: int = 0
    dead_letters: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    parked: list[Entry] = field(default_factory=list)  # not even a raw dead letter could hold them

    def summary(self, **extra: Any) -> dict[str, Any]:
        """The job's result: counts only (results live in Redis; changes carry phone numbers)."""
        counts = {"events": self.events, "inserted": self.inserted, "updated": self.updated, "statuses": self.statuses,
                  "consent_changes": self.consent_changes, "dead_letters": self.dead_letters,
                  "parked": len(self.parked)}
        return {**counts, **extra}


# A dead letter's reason quotes provider text (a parse error, a database message): bounded.
MAX_REASON = 500


def clean(text: str | None) -> str | None:
    """Text columns reject NUL; raw bytes are kept in the dead letters and the archive instead."""
    return text.replace("\x00", "") if text is not None and "\x00" in text else text


def reason_text(reason: str | None) -> str:
    text = clean(reason) or "unknown"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def without_nul(value: Any) -> Any:
    """The value with NUL removed from every string, keys included; jsonb refuses NUL."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nul(v) for v in value]
    return value


def _payload_json(payload: Any) -> str:
    """JSON for a jsonb column. NUL is cleaned in the values, never in the serialized text, where
    `\\u0000` may just as well be six characters of a string; the pattern only picks the slow path."""
    data = orjson.dumps(payload, default=str)
    if b"\\u0000" in data:
        data = orjson.dumps(without_nul(payload), default=str)
    return data.decode()


class Arrival(NamedTuple):
    """What the rows need of an event's record. `RawRecord.received_at` builds a datetime on every
    read, and a batch reads it three or four times per event: here it is built once per record."""

    stream_id: str | None
    received_at: datetime


def _event_row(event: Event, record: Arrival) -> list[Any]:
    return [
        event.dedupe_key, event.provider, event.feed, str(event.kind), clean(event.provider_event_id),
        clean(event.message_ref), clean(event.phone), clean(event.phone_raw), clean(event.counterpart),
        clean(event.counterpart_raw), clean(event.body), event.status and str(event.status),
        clean(event.provider_status), clean(event.provider_reason), event.reason and str(event.reason),
        clean(event.user_ref), clean(event.event_type), event.consent and str(event.consent), clean(event.scope),
        clean(event.keyword), event.outcome and str(event.outcome), event.occurred_at, record.received_at,
        record.stream_id, _payload_json(event.payload), NORMALIZER_VERSION,
    ]


def _archive_row(record: RawRecord) -> list[Any]:
    return [record.received_at, record.stream_id, record.provider, record.feed, record.method, record.query,
            clean(record.content_type), _payload_json(dict(record.headers)), record.client, record.body, record.version]


def _columns(rows: list[list[Any]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


def unique_events(entries: list[Entry]) -> list[tuple[Event, Arrival]]:
    """Events of the batch, first delivery of each dedupe key wins, sorted by key."""
    seen: dict[str, tuple[Event, Arrival]] = {}
    for entry in entries:
        if entry.events and entry.record is not None:
            arrival = Arrival(entry.record.stream_id, entry.record.received_at)
            for event in entry.events:
                seen.setdefault(event.dedupe_key, (event, arrival))
    return [seen[key] for key in sorted(seen)]


def _at_first_delivery(cur: psycopg.Cursor[Any], items: list[tuple[Event, Arrival]]) -> list[tuple[Event, Arrival]]:
    """Each event with the receive time of its first delivery, where it is already stored."""
    first = dict(cur.execute(FIRST_SEEN_SQL, ([event.dedupe_key for event, _ in items],)).fetchall())
    return [(event, arrival._replace(received_at=first.get(event.dedupe_key, arrival.received_at)))
            for event, arrival in items]


def status_winners(items: list[tuple[Event, Arrival]]) -> list[list[Any]]:
    """One row per (provider, message, recipient): the status the monotonic rule keeps."""
    best: dict[tuple[str, str, str], tuple[StatusPoint, list[Any]]] = {}
    for event, record in items:
        if event.kind is not Kind.STATUS or event.status is None or not event.message_ref or not event.phone:
            continue
        seen_at = record.received_at
        point = StatusPoint(STATUS_RANK[event.status], event.occurred_at or seen_at, seen_at)
        key = (event.provider, clean(event.message_ref) or "", clean(event.phone) or "")
        row = [
            *key, str(event.status), point.rank, clean(event.provider_status), clean(event.provider_reason),
            event.reason and str(event.reason), event.occurred_at, point.order_at, seen_at, clean(event.counterpart),
            event.dedupe_key,
        ]
        current = best.get(key)
        if current is None or supersedes(point, current[0]):
            best[key] = (point, row)
    return [best[key][1] for key in sorted(best)]


def _dead_row(entry: Entry) -> list[Any]:
    record, fields = entry.record, entry.fields
    if record is None:
        return [entry.stream_id, None, None, None, reason_text(entry.dead_reason), fields.get(b"b", b""),
                fields.get(b"q", b""), "{}", None, None, None]
    return [
        entry.stream_id, record.provider, record.feed, record.method, reason_text(entry.dead_reason), record.body,
        record.query, _payload_json(dict(record.headers)), clean(record.content_type), record.client,
        record.received_at,
    ]


def write_entries(conn: psycopg.Connection, entries: list[Entry], *, replay: bool = False) -> WriteResult:
    """Write one batch in the caller's transaction."""
    result = WriteResult()
    items = unique_events(entries)
    with conn.cursor() as cur:
        if items:
            rows = [_event_row(event, record) for event, record in items]
            result.events = len(rows)
            if replay:
                items = _at_first_delivery(cur, items)
                written = [row[0] for row in cur.execute(EVENTS_REPLAY_SQL, _columns(rows, len(EVENT_COLUMNS)))]
                result.inserted, result.updated = written.count(True), written.count(False)
                signals = items
            else:
                cur.execute(EVENTS_LIVE_SQL, _columns(rows, len(EVENT_COLUMNS)))
                stored = {row[0] for row in cur}
                result.inserted = len(stored)
                signals = [item for item in items if item[0].dedupe_key in stored]
            statuses = status_winners(signals)
            if statuses:
                cur.execute(STATUS_SQL, _columns(statuses, len(STATUS_COLUMNS)))
                result.statuses = max(cur.rowcount, 0)
            result.changes = consent.apply(cur, signals)
            result.consent_changes = len(result.changes)
        archived = [_archive_row(entry.record) for entry in entries if entry.record is not None]
        if archived and not replay:
            cur.execute(ARCHIVE_SQL, _columns(archived, len(ARCHIVE_COLUMNS)))
        if replay:
            repaired = [entry.stream_id for entry in entries if entry.events]
            if repaired:
                cur.execute(REPAIRED_SQL, (repaired,))
        dead = [_dead_row(entry) for entry in entries if entry.dead_reason is not None]
        if dead:
            cur.execute(DEAD_SQL, _columns(dead, len(DEAD_COLUMNS)))
            result.dead_letters = len(dead)
    return result
