"""A message's delivery timeline, and message search: the queries and their reading, shared by the API,
the `hookstream message` commands and the dashboard so that all three say the same. Pure: callers run
the SQL on their own connection and pass the rows in.

Which report won, and why, is computed on read from the monotonic rule message_status applies
(workers/rules.py, repeated in its ON CONFLICT … WHERE): a higher rank wins, within a rank the later
(order_at, received_at). A row that lost is said to be superseded, a repeat of the status before it,
or late (it arrived after a report it ranks below or precedes).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import ParseError
from shared.events import MAX_ID_LENGTH
from shared.phones import normalize_phone
from shared.settings import PROVIDERS
from shared.times import parse_moment

TIMELINE_COLUMNS = ("event_key", "provider", "message_ref", "recipient", "status", "status_rank", "provider_status",
                    "provider_reason", "reason", "status_at", "order_at", "received_at", "stream_id", "decided_by")
# Served by status_history_timeline; ordered as the design orders statuses: provider time, then receive time.
TIMELINE_SQL = (f"SELECT {', '.join(TIMELINE_COLUMNS)} FROM status_history"
                " WHERE provider = %s AND message_ref = %s ORDER BY recipient, order_at, received_at, event_key")


@dataclass(frozen=True, slots=True)
class Report:
    """One status_history row."""

    event_key: str
    provider: str
    message_ref: str
    recipient: str
    status: str
    status_rank: int
    provider_status: str | None
    provider_reason: str | None
    reason: str | None
    status_at: datetime | None
    order_at: datetime
    received_at: datetime
    stream_id: str | None
    decided_by: str

    @property
    def point(self) -> tuple[int, datetime, datetime]:
        """Its place under the monotonic rule: the greatest point is the current status."""
        return (self.status_rank, self.order_at, self.received_at)


@dataclass(frozen=True, slots=True)
class Step:
    report: Report
    outcome: str  # current | superseded | repeat
    why: str
    late: bool  # arrived after a report that comes after it in provider time


def reports(rows: Iterable[Sequence[Any]]) -> list[Report]:
    return [Report(*row) for row in rows]


def timeline(rows: Iterable[Report]) -> list[Step]:
    """Each recipient's reports in provider-time order (ties and missing times by receive time), each
    with what the monotonic rule made of it."""
    by_recipient: dict[str, list[Report]] = {}
    for report in rows:
        by_recipient.setdefault(report.recipient, []).append(report)
    steps: list[Step] = []
    for recipient in sorted(by_recipient):
        group = sorted(by_recipient[recipient], key=lambda r: (r.order_at, r.received_at, r.event_key))
        winner = max(group, key=lambda r: (r.point, r.event_key))
        before: Report | None = None
        for report in group:
            late = any(o.received_at < report.received_at and (o.order_at, o.received_at) >
                       (report.order_at, report.received_at) for o in group)
            steps.append(Step(report, *_judge(report, winner, before), late))
            before = report
    return steps


def _judge(report: Report, winner: Report, before: Report | None) -> tuple[str, str]:
    if report is winner:
        if report.decided_by == "hookstream":
            return "current", "hookstream's decision: no receipt came within the receipt expiry"
        return "current", "the provider's report: the highest rank, and the latest in provider time within it"
    if report.decided_by == "hookstream":
        return "superseded", f"hookstream's expiry gives way to the provider's later {winner.status}"
    if before is not None and (before.status, before.provider_status) == (report.status, report.provider_status):
        return "repeat", f"the same status as the report before it ({report.status})"
    if report.status_rank < winner.status_rank:
        return "superseded", f"{report.status} ranks below {winner.status}, whenever it arrived"
    return "superseded", f"{winner.status} has the same rank and a later time"


def archive_key(report: Report) -> str | None:
    """Where the raw request is: raw_archive's (received_at, stream_id); `hookstream replay` and the
    archive read it by that pair. None for hookstream's own decisions, which have no request."""
    if report.stream_id is None:
        return None
    return f"{report.received_at.isoformat()}/{report.stream_id}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def step_json(step: Step) -> dict[str, Any]:
    r = step.report
    return {
        "recipient": r.recipient, "status": r.status, "reason": r.reason,
        "provider_status": r.provider_status, "provider_reason": r.provider_reason,
        "provider_time": _iso(r.status_at), "received_at": _iso(r.received_at), "decided_by": r.decided_by,
        "outcome": step.outcome, "why": step.why, "late": step.late, "event_key": r.event_key,
        "archive": archive_key(r),
    }


def step_line(step: Step) -> str:
    """One line of `hookstream message show`."""
    r = step.report
    said = " ".join(x for x in (r.provider_status, r.provider_reason) if x) or "-"
    mark = "*" if step.outcome == "current" else " "
    late = " (late)" if step.late else ""
    return (f"{mark} {_iso(r.status_at) or '-':25} {_iso(r.received_at):32} {r.status:9} {r.reason or '-':14}"
            f" {said!r} [{r.decided_by}] {step.outcome}{late}: {step.why} archive={archive_key(r) or '-'}")


# -- search ----------------------------------------------------------------------------------------

SEARCH_COLUMNS = ("provider", "message_ref", "recipient", "status", "reason", "status_at", "received_at")
MAX_LIMIT = 200
CURSOR_PREFIX = "m1."


class BadQuery(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Search:
    message_ref: str | None = None
    phone: str | None = None  # E.164, as the ingress stores it
    provider: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    after: tuple[datetime, str, str, str] | None = None  # the last row of the previous page


def storable_id(value: str) -> bool:
    """Whether a provider id could be stored at all: a longer one or one with NUL is refused at
    parse time (shared.events), so asking for it is a client error, never a database one."""
    return len(value) <= MAX_ID_LENGTH and "\x00" not in value


def search_of(*, ref: str | None = None, phone: str | None = None, provider: str | None = None,
              since: str | None = None, until: str | None = None, limit: int = 50, cursor: str | None = None,
              default_region: str | None = None, providers: Sequence[str] = ()) -> Search:
    """A Search from what a person typed (API query, command line, search box): a phone number in any
    notation is parsed as the ingress parses it; times in the commands' grammar (ISO, `today`, `2h`)."""
    if provider is not None and providers and provider not in providers:
        raise BadQuery(f"provider {provider[:40]!r} is not one of {', '.join(providers)}")
    if ref is not None and not storable_id(ref):
        raise BadQuery(f"ref must be at most {MAX_ID_LENGTH} characters, without NUL")
    number = None
    if phone is not None:
        if "\x00" in phone:  # the parser keeps a NUL inside the digits; Postgres refuses it in text
            raise BadQuery("phone contains a NUL character")
        number = normalize_phone(phone.strip(), default_region)
        if not number or not number.startswith("+"):
            raise BadQuery(f"phone {phone[:40]!r} is not a number in international form"
                           " (or a national one with HOOKSTREAM_DEFAULT_REGION set)")
    try:
        start = parse_moment(since) if since else None
        end = parse_moment(until) if until else None
    except ParseError as exc:
        raise BadQuery(str(exc)) from None
    return Search(message_ref=ref.strip() if ref else None, phone=number, provider=provider, since=start, until=end,
                  limit=limit, after=decode_cursor(cursor) if cursor else None)


def search_sql(search: Search) -> tuple[str, list[Any]]:
    """Newest first by received_at over message_status, one row per message and recipient; each filter
    has an index of its own (migration 010). Keyset pagination: no OFFSET to walk."""
    if not (search.message_ref or search.phone or search.provider):
        raise BadQuery("give a message id, a phone number or a provider")
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("message_ref", search.message_ref), ("recipient", search.phone),
                          ("provider", search.provider)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if search.message_ref is not None and search.provider is None:
        # Every provider named: the primary key (provider, message_ref, recipient) is probed once per
        # provider, so no index of message_ref alone is kept up by every status write.
        where.append("provider = ANY(%s)")
        params.append(list(PROVIDERS))
    if search.since is not None:
        where.append("received_at >= %s")
        params.append(search.since)
    if search.until is not None:
        where.append("received_at < %s")
        params.append(search.until)
    if search.after is not None:
        where.append("(received_at, provider, message_ref, recipient) < (%s, %s, %s, %s)")
        params.extend(search.after)
    sql = (f"SELECT {', '.join(SEARCH_COLUMNS)} FROM message_status WHERE {' AND '.join(where)}"
           " ORDER BY received_at DESC, provider DESC, message_ref DESC, recipient DESC LIMIT %s")
    return sql, [*params, min(max(search.limit, 1), MAX_LIMIT) + 1]


def page(rows: Sequence[Sequence[Any]], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """(the page's rows as dicts, the cursor of the next page or None); `rows` holds one row past the page."""
    limit = min(max(limit, 1), MAX_LIMIT)
    shown = [dict(zip(SEARCH_COLUMNS, row, strict=True)) for row in rows[:limit]]
    if len(rows) <= limit:
        return [_jsonable(r) for r in shown], None
    last = shown[-1]
    return [_jsonable(r) for r in shown], encode_cursor(
        (last["received_at"], last["provider"], last["message_ref"], last["recipient"]))


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


def encode_cursor(after: tuple[datetime, str, str, str]) -> str:
    inside = "\x1f".join((after[0].isoformat(), *after[1:]))
    return CURSOR_PREFIX + base64.urlsafe_b64encode(inside.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, str, str]:
    bad = BadQuery("not a cursor of this search (pass the `next` of a previous answer)")
    if not cursor.startswith(CURSOR_PREFIX) or len(cursor) > 1024:
        raise bad
    body = cursor[len(CURSOR_PREFIX):]
    try:
        parts = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().split("\x1f")
        if len(parts) != 4 or not re.fullmatch(r"[0-9T:.+\-]+", parts[0]):
            raise bad
        at = datetime.fromisoformat(parts[0])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if at.tzinfo is None or not all(storable_id(part) for part in parts[1:]):
        raise bad
    return at, parts[1], parts[2], parts[3]
