"""Numbers reported disconnected or reassigned (`POST /v1/consent/deactivations`).

A carrier deactivation file or a reassigned-numbers database says a number changed hands since a
date: consent last confirmed before that date was given by somebody else, so it no longer allows
texting. The consent rows stay as they are; lookups and the bulk check answer `stale` (not allowed)
while the row's `confirmed_at` is older than the latest deactivation, until a new opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from api.errors import invalid
from api.inputs import MAX_SUBJECTS, text_value
from api.records import MAX_SOURCE_CHARS, checked_moment
from api.subjects import Classifier, InvalidSubject

INSERT_SQL = (
    "INSERT INTO consent_deactivations (subject, deactivated_at, source, reported_by)"
    " SELECT s, %b::timestamptz, %b::text, %b::text FROM unnest(%b::text[]) AS s ON CONFLICT DO NOTHING"
)
STALE_SQL = (
    "SELECT count(DISTINCT subject) FROM consent WHERE subject = ANY(%b::text[]) AND state = 'opted_in'"
    " AND confirmed_at < %b::timestamptz"
)


@dataclass(frozen=True, slots=True)
class Report:
    subjects: list[str]
    since: datetime
    source: str


def _since(value: Any, now: datetime) -> datetime:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise invalid("since must be an ISO-8601 time with an offset, or a date (midnight UTC)")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(f"since is not an ISO-8601 time: {value[:40]!r}") from None
    if moment.tzinfo is None:
        if len(value) > 10:
            raise invalid(f"since needs a UTC offset or Z: {value[:40]!r}")
        moment = moment.replace(tzinfo=UTC)  # a date alone: midnight UTC
    return checked_moment(moment, "since", value, now)


def parse_request(data: Any, classifier: Classifier, now: datetime | None = None) -> Report:
    if not isinstance(data, dict) or set(data) != {"subjects", "since", "source"}:
        raise invalid("the body must be a JSON object with subjects, since and source")
    subjects = data["subjects"]
    if not isinstance(subjects, list) or not subjects or len(subjects) > MAX_SUBJECTS:
        raise invalid(f"subjects must be a list of 1 to {MAX_SUBJECTS} phone numbers")
    source = text_value(data["source"], "source", MAX_SOURCE_CHARS)
    numbers: list[str] = []
    for index, raw in enumerate(subjects):
        if not isinstance(raw, str):
            raise invalid(f"subjects[{index}] is not a string")
        try:
            subject = classifier(raw)
        except InvalidSubject as exc:
            raise invalid(f"subjects[{index}]: {exc}") from None
        if not subject.phone:
            raise invalid(f"subjects[{index}]: {subject.reason}")
        numbers.append(subject.value)
    return Report(sorted(set(numbers)), _since(data["since"], now or datetime.now(UTC)), source)


async def record(conn: psycopg.AsyncConnection[Any], report: Report, label: str) -> tuple[int, int]:
    """(rows recorded, subjects whose opt-in is now stale)."""
    async with conn.transaction(), conn.cursor(binary=True) as cur:
        await cur.execute(INSERT_SQL, (report.since, report.source, label, report.subjects))
        recorded = max(cur.rowcount, 0)
        await cur.execute(STALE_SQL, (report.subjects, report.since))
        row = await cur.fetchone()
    return recorded, int(row[0]) if row else 0
