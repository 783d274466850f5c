"""Writing a batch to Postgres: one transaction, set-based statements, no round trip per row.

Keys are collapsed inside the batch first (ON CONFLICT cannot touch a row twice in one
statement) and sorted, so concurrent workers take row locks in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, NamedTuple, get_type_hints

import orjson
import psycopg

from shared.consent import REACH_SCOPE
from shared.events import Event, Kind
from shared.record import RawRecord
from workers import consent
from workers.normalize import NORMALIZER_VERSION, Entry
from workers.rules import STATUS_RANK, StatusPoint, supersedes

# Each table the store writes is described once, by a row class: its fields are the columns in the
# order the rows hold them, each annotated with its SQL type. The INSERT's column list and unnest
# casts derive from it; tests/workers/test_store_spec.py checks it against the migrated tables.
Text = Annotated[str | None, "text"]
Int2 = Annotated[int, "int2"]
Int4 = Annotated[int, "int4"]
Timestamptz = Annotated[datetime | None, "timestamptz"]
Jsonb = Annotated[str, "jsonb"]  # serialized JSON
Bytea = Annotated[bytes, "bytea"]


class EventRow(NamedTuple):
    dedupe_key: Text
    provider: Text
    feed: Text
    kind: Text
    provider_event_id: Text
    message_ref: Text
    phone: Text
    phone_raw: Text
    counterpart: Text
    counterpart_raw: Text
    body: Text
    status: Text
    provider_status: Text
    provider_reason: Text
    reason: Text
    user_ref: Text
    event_type: Text
    consent: Text
    scope: Text
    keyword: Text
    keyword_outcome: Text
    occurred_at: Timestamptz
    received_at: Timestamptz
    stream_id: Text
    payload: Jsonb
    normalizer_version: Int4


class KeyRow(NamedTuple):
    dedupe_key: Text
    received_at: Timestamptz  # the first delivery's, where the event's row lives


class StatusRow(NamedTuple):
    provider: Text
    message_ref: Text
    recipient: Text
    status: Text
    status_rank: Int2
    provider_status: Text
    provider_reason: Text
    reason: Text
    status_at: Timestamptz
    order_at: Timestamptz
    received_at: Timestamptz
    counterpart: Text
    event_key: Text


class HistoryRow(NamedTuple):
    event_key: Text
    provider: Text
    message_ref: Text
    recipient: Text
    status: Text
    status_rank: Int2
    provider_status: Text
    provider_reason: Text
    reason: Text
    status_at: Timestamptz
    order_at: Timestamptz
    received_at: Timestamptz
    stream_id: Text


class DeadRow(NamedTuple):
    stream_id: Text
    provider: Text
    feed: Text
    method: Text
    reason: Text
    body: Bytea
    query: Bytea
    headers: Jsonb
    content_type: Text
    client: Text
    received_at: Timestamptz


class ArchiveRow(NamedTuple):
    received_at: Timestamptz
    stream_id: Text
    provider: Text
    feed: Text
    method: Text
    query: Bytea
    content_type: Text
    headers: Jsonb
    client: Text
    body: Bytea
    version: Int4


TABLES: dict[str, type[Any]] = {
    "events": EventRow, "event_keys": KeyRow, "message_status": StatusRow, "dead_letters": DeadRow,
    "raw_archive": ArchiveRow, "status_history": HistoryRow,
}


def spec(row: type[Any]) -> list[tuple[str, str]]:
    """(column, SQL type) of each field of a row class, in order."""
    hints = get_type_hints(row, include_extras=True)
    return [(column, hints[column].__metadata__[0]) for column in row._fields]


def _insert(table: str) -> str:
    """INSERT of a batch of rows sent as one array per column."""
    columns = ", ".join(TABLES[table]._fields)
    params = ", ".join(f"%b::{sql_type}[]" for _, sql_type in spec(TABLES[table]))  # %b: binary, no escaping
    return f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({params}) AS u({columns})"


EVENT_COLUMNS = EventRow._fields
RECEIVED_AT = EVENT_COLUMNS.index("received_at")
STATUS_COLUMNS = StatusRow._fields
HISTORY_COLUMNS = HistoryRow._fields
DEAD_COLUMNS = DeadRow._fields
ARCHIVE_COLUMNS = ArchiveRow._fields

# What a replay through a corrected normalizer may rewrite; first-seen facts stay.
REPLAYED_COLUMNS = [c for c in EVENT_COLUMNS if c not in ("dedupe_key", "received_at", "stream_id")]

EVENTS_INSERT = _insert("events")
# Dedupe first: a key event_keys did not hold is an event this delivery stores first, the only kind
# that is a new signal (design §2, side effects once). events is partitioned by week and holds no
# unique key; the keys live in event_keys for HOOKSTREAM_DEDUPE_HORIZON.
# Only the events of new keys are inserted, in the same statement: the worker sends the rows and
# goes on without waiting for the claim. On the partitioned table ON CONFLICT has nothing to
# arbitrate; on the unpartitioned one of an online conversion not yet swapped
# (hookstream/convert_events.py), its unique key still skips an old event whose key event_keys has
# not been filled with yet: only the keys both inserts return are stored first.
# Parameters: the keys and their receive times, then the event columns.
CLAIM_AND_STORE_SQL = (
    "WITH claimed AS (" + _insert("event_keys") + " ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key) "
    + EVENTS_INSERT + " WHERE u.dedupe_key IN (SELECT dedupe_key FROM claimed) ON CONFLICT DO NOTHING"
    " RETURNING dedupe_key"
)
EVENTS_LIVE_SQL = EVENTS_INSERT + " ON CONFLICT DO NOTHING RETURNING dedupe_key"
# A replay applies each event at its first delivery's receive time, never at the replayed entry's;
# that time is also the partition its stored row lives in.
# Whether the row is there too: a key whose event is missing (written off by hand) is stored again.
# One probe of event_keys' index per key (shared/consent.py, LOAD_SQL, says why not `= ANY`), and
# one of the events' time index per key found. As `EXISTS`, the planner may hash the whole events
# table once per page instead: it did whenever the partitioned table had no statistics of its own,
# which autovacuum never gathers (18 ms a page of 500 at 50,000 events instead of 1.7, growing
# with the table).
FIRST_SEEN_SQL = (
    "SELECT k.dedupe_key, k.received_at, e.there IS NOT NULL FROM unnest(%b::text[]) AS u(dedupe_key)"
    " CROSS JOIN LATERAL (SELECT dedupe_key, received_at FROM event_keys"
    " WHERE event_keys.dedupe_key = u.dedupe_key LIMIT 1) AS k"
    " LEFT JOIN LATERAL (SELECT true AS there FROM events WHERE events.received_at = k.received_at"
    " AND events.dedupe_key = k.dedupe_key LIMIT 1) AS e ON true"
)
EVENTS_REPLAY_SQL = (
    "UPDATE events AS e SET "
    + ", ".join(f"{c} = u.{c}" for c in REPLAYED_COLUMNS)
    + ", updated_at = now() FROM unnest("
    + ", ".join(f"%b::{sql_type}[]" for _, sql_type in spec(EventRow))
    + f") AS u({', '.join(EVENT_COLUMNS)})"
    " WHERE e.received_at = u.received_at AND e.dedupe_key = u.dedupe_key"
    # The page's receive times as bounds too: partitions outside them are pruned when the statement is
    # planned, and the rest are read by time through their index, whatever the statistics of the
    # partitioned table (autovacuum never analyzes one; without them the join read every partition).
    " AND e.received_at BETWEEN %b AND %b AND ("
    + ", ".join(f"e.{c}" for c in REPLAYED_COLUMNS)
    + ") IS DISTINCT FROM ("
    + ", ".join(f"u.{c}" for c in REPLAYED_COLUMNS)
    + ") RETURNING e.dedupe_key"
)

STATUS_KEY = ("provider", "message_ref", "recipient")
STATUS_SQL = (
    _insert("message_status")
    + f" ON CONFLICT ({', '.join(STATUS_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in STATUS_COLUMNS if c not in STATUS_KEY)
    + ", updated_at = now()"
    " WHERE excluded.status_rank > message_status.status_rank"
    " OR (excluded.status_rank = message_status.status_rank"
    " AND (excluded.order_at, excluded.received_at) > (message_status.order_at, message_status.received_at))"
)

# Every report, not only the winner: one row per event, so a replay or a redelivery adds none and a
# replay through a corrected normalizer corrects its row.
HISTORY_REPLAYED = ("status", "status_rank", "provider_status", "provider_reason", "reason", "status_at", "order_at")
HISTORY_SQL = (
    _insert("status_history")
    + " ON CONFLICT (event_key, received_at) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in HISTORY_REPLAYED)
    + " WHERE (" + ", ".join(f"status_history.{c}" for c in HISTORY_REPLAYED)
    + ") IS DISTINCT FROM (" + ", ".join(f"excluded.{c}" for c in HISTORY_REPLAYED) + ")"
)

DEAD_SQL = (
    _insert("dead_letters")
    + " ON CONFLICT (stream_id) DO UPDATE SET reason = excluded.reason, last_seen = now(),"
    " attempts = dead_letters.attempts + 1"
)
# A replay is not another delivery: it may correct the reason, never count a try.
DEAD_REPLAY_SQL = _insert("dead_letters") + " ON CONFLICT (stream_id) DO UPDATE SET reason = excluded.reason"

ARCHIVE_SQL = _insert("raw_archive") + " ON CONFLICT DO NOTHING"
# A replay that turns a dead letter into events has repaired it.
# A semi-join, not `= ANY(array)`: 0.45 instead of 1.05 ms per page of 500 over 300 dead letters.
REPAIRED_SQL = "DELETE FROM dead_letters WHERE stream_id IN (SELECT unnest(%b::text[]))"


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


# The rows built for every entry (events, statuses, archive) are plain tuples in their row class's
# field order: building the NamedTuple itself would add ~0.7 µs per entry (about three rows), by
# keyword ~2.3 µs, to a store phase of ~7 µs. tests/workers/test_store_spec.py reads each
# builder's rows through its row class, by name.
Row = tuple[Any, ...]


def _event_row(event: Event, record: Arrival) -> Row:  # an EventRow's fields
    return (
        event.dedupe_key, event.provider, event.feed, str(event.kind), clean(event.provider_event_id),
        clean(event.message_ref), clean(event.phone), clean(event.phone_raw), clean(event.counterpart),
        clean(event.counterpart_raw), clean(event.body), event.status and str(event.status),
        clean(event.provider_status), clean(event.provider_reason), event.reason and str(event.reason),
        clean(event.user_ref), clean(event.event_type), event.consent and str(event.consent), clean(event.scope),
        clean(event.keyword), event.outcome and str(event.outcome), event.occurred_at, record.received_at,
        record.stream_id, _payload_json(event.payload), NORMALIZER_VERSION,
    )


def _archive_row(record: RawRecord) -> Row:  # an ArchiveRow's fields
    return (
        record.received_at, record.stream_id, record.provider, record.feed, record.method, record.query,
        clean(record.content_type), _payload_json(dict(record.headers)), record.client, record.body, record.version,
    )


def _columns(rows: Sequence[Row], width: int) -> list[list[Any]]:
    """The rows as one list per column, the parameters of an `_insert`."""
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


def _at_first_delivery(cur: psycopg.Cursor[Any], items: list[tuple[Event, Arrival]]
                       ) -> tuple[list[tuple[Event, Arrival]], dict[str, bool]]:
    """Each event with the receive time of its first delivery where its key is stored; and for each
    stored key, whether its event's row is there."""
    found = cur.execute(FIRST_SEEN_SQL, ([event.dedupe_key for event, _ in items],)).fetchall()
    first = {key: at for key, at, _ in found}
    return ([(event, arrival._replace(received_at=first.get(event.dedupe_key, arrival.received_at)))
             for event, arrival in items], {key: bool(there) for key, _, there in found})


def _store_new(cur: psycopg.Cursor[Any], items: list[tuple[Event, Arrival]]) -> set[str]:
    """Claim the items' keys, insert the events of the keys claimed now; returns the keys stored first."""
    if not items:
        return set()
    columns = _columns([_event_row(event, arrival) for event, arrival in items], len(EVENT_COLUMNS))
    return {row[0] for row in cur.execute(CLAIM_AND_STORE_SQL, [columns[0], columns[RECEIVED_AT], *columns])}


def _replay(cur: psycopg.Cursor[Any], items: list[tuple[Event, Arrival]], result: WriteResult
            ) -> list[tuple[Event, Arrival]]:
    """Stored events updated in place (found by first receive time and key), others stored; returns
    every item at its first delivery's time: a replay's signals are all of them."""
    items, known = _at_first_delivery(cur, items)
    result.inserted = len(_store_new(cur, [item for item in items if item[0].dedupe_key not in known]))
    missing = [_event_row(event, arrival) for event, arrival in items if known.get(event.dedupe_key) is False]
    if missing:
        result.inserted += len(cur.execute(EVENTS_LIVE_SQL, _columns(missing, len(EVENT_COLUMNS))).fetchall())
    rows = [_event_row(event, arrival) for event, arrival in items if known.get(event.dedupe_key)]
    if rows:
        first_seen = [row[RECEIVED_AT] for row in rows]
        params = [*_columns(rows, len(EVENT_COLUMNS)), min(first_seen), max(first_seen)]
        result.updated = len(cur.execute(EVENTS_REPLAY_SQL, params).fetchall())
    return items


def status_winners(items: list[tuple[Event, Arrival]]) -> list[Row]:
    """One row (a StatusRow's fields) per (provider, message, recipient): the status the monotonic rule keeps."""
    best: dict[tuple[str, str, str], tuple[StatusPoint, Row]] = {}
    for event, record in items:
        if event.kind is not Kind.STATUS or event.status is None or not event.message_ref or not event.phone:
            continue
        seen_at = record.received_at
        point = StatusPoint(STATUS_RANK[event.status], event.occurred_at or seen_at, seen_at)
        key = (event.provider, clean(event.message_ref) or "", clean(event.phone) or "")
        row = (
            *key, str(event.status), point.rank, clean(event.provider_status), clean(event.provider_reason),
            event.reason and str(event.reason), event.occurred_at, point.order_at, seen_at, clean(event.counterpart),
            event.dedupe_key,
        )
        current = best.get(key)
        if current is None or supersedes(point, current[0]):
            best[key] = (point, row)
    return [best[key][1] for key in sorted(best)]


def history_rows(items: list[tuple[Event, Arrival]]) -> list[Row]:
    """One row (a HistoryRow's fields) per status report of a message, each at its first delivery's time."""
    rows = []
    for event, record in items:
        if event.kind is not Kind.STATUS or event.status is None or not event.message_ref:
            continue
        rows.append((
            event.dedupe_key, event.provider, clean(event.message_ref), clean(event.phone) or "", str(event.status),
            STATUS_RANK[event.status], clean(event.provider_status), clean(event.provider_reason),
            event.reason and str(event.reason), event.occurred_at, event.occurred_at or record.received_at,
            record.received_at, record.stream_id,
        ))
    return rows


def _dead_row(entry: Entry) -> DeadRow:
    """Dead letters are rare: their rows are built by name."""
    record, fields = entry.record, entry.fields
    if record is None:
        return DeadRow(stream_id=entry.stream_id, provider=None, feed=None, method=None,
                       reason=reason_text(entry.dead_reason), body=fields.get(b"b", b""), query=fields.get(b"q", b""),
                       headers="{}", content_type=None, client=None, received_at=None)
    return DeadRow(
        stream_id=entry.stream_id, provider=record.provider, feed=record.feed, method=record.method,
        reason=reason_text(entry.dead_reason), body=record.body, query=record.query,
        headers=_payload_json(dict(record.headers)), content_type=clean(record.content_type), client=record.client,
        received_at=record.received_at,
    )


def _send_unawaited(side: psycopg.Cursor[Any], entries: list[Entry], replay: bool) -> int:
    """The batch's writes that nothing waits for: the raw archive (live) or the repaired dead
    letters (replay), and its dead letters; returns how many dead letters."""
    if replay:
        repaired = [entry.stream_id for entry in entries if entry.events]
        if repaired:
            side.execute(REPAIRED_SQL, (repaired,))
    else:
        archived = [_archive_row(entry.record) for entry in entries if entry.record is not None]
        if archived:
            side.execute(ARCHIVE_SQL, _columns(archived, len(ARCHIVE_COLUMNS)))
    dead = [_dead_row(entry) for entry in entries if entry.dead_reason is not None]
    if dead:
        side.execute(DEAD_REPLAY_SQL if replay else DEAD_SQL, _columns(dead, len(DEAD_COLUMNS)))
    return len(dead)


def write_entries(conn: psycopg.Connection, entries: list[Entry], *, replay: bool = False,
                  reach: str = REACH_SCOPE) -> WriteResult:
    """Write one batch in the caller's transaction; `reach`: HOOKSTREAM_OPT_OUT_REACH.

    The statements are pipelined: each is sent as soon as its rows are built, and the worker waits
    only for the results it needs (the keys stored first, the consent rows). The writes nothing
    waits for go first, so that Postgres stores them while the worker builds the events' rows: a
    batch's write took 15-20% less time. A refused statement still fails the batch with its own
    error, raised at the next wait.
    """
    result = WriteResult()
    items = unique_events(entries)
    statuses: list[Row] = []
    # The cursors outlive the pipeline: its end delivers the results they were not asked for yet.
    with conn.cursor() as cur, conn.cursor() as side, conn.cursor() as status_cur:
        with conn.pipeline():
            result.dead_letters = _send_unawaited(side, entries, replay)
            if items:
                result.events = len(items)
                if replay:
                    signals = _replay(cur, items, result)
                else:
                    stored = _store_new(cur, items)
                    result.inserted = len(stored)
                    signals = [item for item in items if item[0].dedupe_key in stored]
                statuses = status_winners(signals)
                if statuses:
                    status_cur.execute(STATUS_SQL, _columns(statuses, len(STATUS_COLUMNS)))
                history = history_rows(signals)
                if history:
                    side.execute(HISTORY_SQL, _columns(history, len(HISTORY_COLUMNS)))
                result.changes = consent.apply(cur, signals, reach)
                result.consent_changes = len(result.changes)
        if statuses:
            result.statuses = max(status_cur.rowcount, 0)
    return result
