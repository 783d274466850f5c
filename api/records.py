"""Consent collected elsewhere (`POST /v1/consent/records`): reading the records, and importing them.

A record goes through the rules a reply goes through (`shared.consent`), at its own time: an opt-in
recorded for 10:00 does not undo a STOP received at 10:05, whichever arrived first. All or nothing:
one transaction for the request. Idempotent by the client's `id`: the same record again changes
nothing; the same id with other content is refused (409) and nothing of the request is kept.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from api.errors import ApiError, invalid
from api.inputs import known_fields, text_value
from api.subjects import MAX_SCOPE_CHARS, Classifier, InvalidSubject
from shared import consent
from shared.consent import IMPORT, OPTED_IN, OPTED_OUT, Signal
from shared.events import Outcome
from shared.phones import normalize_phone

MAX_RECORDS = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024  # 10,000 records with their evidence
MAX_ID_CHARS = 128
MAX_SOURCE_CHARS = 64
MAX_EVIDENCE_CHARS = 2000
EVIDENCE_FIELDS = ("text", "version", "url", "ip", "user_agent", "reference")
RECORD_FIELDS = ("id", "subject", "scope", "state", "occurred_at", "source", "evidence")
REQUIRED = ("id", "subject", "scope", "state", "occurred_at", "source")
# A record from the future would outrank every reply until then (the later event wins): refused,
# with a margin for the clocks of the systems that collected it.
FUTURE_MARGIN = timedelta(minutes=5)
PROVIDER = "import"  # consent.provider / consent_changes.provider of an imported record
STATE_OUTCOME = {OPTED_IN: Outcome.OPT_IN, OPTED_OUT: Outcome.OPT_OUT}


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    subject: str
    scope: str
    state: str
    occurred_at: datetime
    source: str
    evidence: dict[str, str]

    def content(self) -> bytes:
        """The record as normalized, in one canonical JSON text: what the idempotency digest covers."""
        return orjson.dumps({
            "id": self.id, "subject": self.subject, "scope": self.scope, "state": self.state,
            "occurred_at": self.occurred_at.astimezone(UTC).isoformat(), "source": self.source,
            "evidence": self.evidence}, option=orjson.OPT_SORT_KEYS)

    def digest(self) -> str:
        return hashlib.sha256(self.content()).hexdigest()


def _moment(value: Any, where: str, now: datetime) -> datetime:
    text = text_value(value, where, 64)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(f"{where} is not an ISO-8601 time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise invalid(f"{where} needs a UTC offset or Z: {text[:40]!r}")
    return checked_moment(moment, where, text, now)


def checked_moment(moment: datetime, where: str, text: str, now: datetime) -> datetime:
    """In UTC, and not in the future (a year-1 time with an offset has no UTC form: refused too)."""
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise invalid(f"{where} is out of range: {text[:40]!r}") from None
    if utc > now + FUTURE_MARGIN:
        raise invalid(f"{where} is in the future: {text[:40]!r}")
    return utc


def _subject(value: Any, where: str, classifier: Classifier) -> str:
    """A phone number in any common form (as E.164), or an id made of more than digits (an Mx2
    subscriberId) as given; digits that are no valid number are refused, never stored as an id."""
    text = text_value(value, where, 64)
    try:
        subject = classifier(text)
    except InvalidSubject as exc:
        raise invalid(f"{where}: {exc}") from None
    if not subject.phone and text.lstrip("+").replace(" ", "").replace("-", "").isdigit():
        raise invalid(f"{where}: {subject.reason}")
    if not subject.phone and not any(char.isalnum() for char in text):  # `+`, `()`: no id a provider sends
        raise invalid(f"{where}: {subject.reason}")
    return subject.value


def _evidence(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{where} must be an object with {', '.join(EVIDENCE_FIELDS)}")
    known_fields(value, EVIDENCE_FIELDS, where)
    return {key: text_value(item, f"{where}.{key}", MAX_EVIDENCE_CHARS)
            for key, item in value.items() if item is not None}


def parse_record(data: Any, index: int, classifier: Classifier, default_region: str | None, now: datetime) -> Record:
    where = f"records[{index}]"
    if not isinstance(data, dict):
        raise invalid(f"{where} must be an object")
    known_fields(data, RECORD_FIELDS, where)
    missing = [name for name in REQUIRED if data.get(name) is None]
    if missing:
        raise invalid(f"{where}: missing {', '.join(missing)}")
    state = data["state"]
    if not isinstance(state, str) or state not in STATE_OUTCOME:  # a list or an object is unhashable
        raise invalid(f"{where}.state must be opted_in or opted_out")
    scope = text_value(data["scope"], f"{where}.scope", MAX_SCOPE_CHARS)
    return Record(
        id=text_value(data["id"], f"{where}.id", MAX_ID_CHARS),
        subject=_subject(data["subject"], f"{where}.subject", classifier),
        scope=normalize_phone(scope, default_region) or scope,  # as the workers store our numbers
        state=str(state), occurred_at=_moment(data["occurred_at"], f"{where}.occurred_at", now),
        source=text_value(data["source"], f"{where}.source", MAX_SOURCE_CHARS),
        evidence=_evidence(data.get("evidence"), f"{where}.evidence"),
    )


def parse_request(data: Any, classifier: Classifier, default_region: str | None,
                  now: datetime | None = None) -> list[Record]:
    """The records of a request, each id once (a repeat of the same record is dropped; an id given
    twice with different content is refused)."""
    if not isinstance(data, dict) or set(data) != {"records"}:
        raise invalid("the body must be a JSON object with one field, records")
    items = data["records"]
    if not isinstance(items, list) or not items:
        raise invalid("records must be a non-empty list")
    if len(items) > MAX_RECORDS:
        raise invalid(f"too many records: {len(items)} (at most {MAX_RECORDS} per call)")
    moment = now or datetime.now(UTC)
    records: dict[str, Record] = {}
    for index, item in enumerate(items):
        record = parse_record(item, index, classifier, default_region, moment)
        earlier = records.setdefault(record.id, record)
        if earlier != record:
            raise invalid(f"records[{index}].id {record.id[:60]!r} is given twice with different content")
    return list(records.values())


@dataclass(frozen=True, slots=True)
class Imported:
    import_id: str
    records: int
    imported: int
    repeated: int
    changes: int

    def as_json(self) -> dict[str, Any]:
        return {"import_id": self.import_id, "records": self.records, "imported": self.imported,
                "repeated": self.repeated, "changes": self.changes}


class Clash(Exception):
    """Ids already imported with other content."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(ids[0])
        self.ids = ids


INSERT_SQL = (
    "INSERT INTO consent_records (id, digest, import_id, subject, scope, state, occurred_at, source, evidence,"
    " imported_by) SELECT u.*, %b::text FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[],"
    " %b::text[], %b::timestamptz[], %b::text[], %b::jsonb[]) AS u ON CONFLICT (id) DO NOTHING RETURNING id"
)
DIGESTS_SQL = "SELECT id, digest FROM consent_records WHERE id = ANY(%b::text[])"
EVENT_KEY_PREFIX = "import:"


def signals(records: Sequence[Record], import_id: str, label: str, now: datetime) -> list[Signal]:
    return [Signal(EVENT_KEY_PREFIX + r.id, r.subject, r.scope, STATE_OUTCOME[r.state], r.occurred_at, now, None,
                   PROVIDER, source=IMPORT, import_id=import_id,
                   evidence=orjson.dumps({"record_id": r.id, "source": r.source, **r.evidence}).decode(), actor=label)
            for r in records]


async def import_records(conn: psycopg.AsyncConnection[Any], records: Sequence[Record], label: str,
                         reach: str) -> Imported:
    """Store and apply the records in one transaction; Clash (nothing kept) when an id was imported
    before with other content."""
    import_id = f"imp_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    by_id: Mapping[str, Record] = {r.id: r for r in records}
    digests = {r.id: r.digest() for r in records}
    async with conn.transaction(), conn.cursor(binary=True) as cur:
        await cur.execute(INSERT_SQL, (
            label, [r.id for r in records], [digests[r.id] for r in records], [import_id] * len(records),
            [r.subject for r in records], [r.scope for r in records], [r.state for r in records],
            [r.occurred_at for r in records], [r.source for r in records],
            [orjson.dumps(r.evidence).decode() for r in records]))
        fresh = {row[0] for row in await cur.fetchall()}
        seen = [r.id for r in records if r.id not in fresh]
        if seen:
            await cur.execute(DIGESTS_SQL, (seen,))
            clashes = sorted(key for key, digest in await cur.fetchall() if digest != digests[key])
            if clashes:
                raise Clash(clashes)
        applied = await consent.apply_async(cur, signals([by_id[key] for key in by_id if key in fresh], import_id,
                                                         label, now), reach=reach)
    return Imported(import_id, len(records), len(fresh), len(seen), len(applied))


async def import_or_refuse(conn: psycopg.AsyncConnection[Any], records: Sequence[Record], label: str,
                           reach: str) -> Imported:
    try:
        return await import_records(conn, records, label, reach)
    except Clash as exc:
        raise ApiError(409, "conflict", f"{len(exc.ids)} record id(s) were imported before with other content;"
                       " nothing of this request was kept", ids=exc.ids[:20], count=len(exc.ids)) from None
