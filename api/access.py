"""A person's requests: everything held about them (export), and erasure.

The export reads every table that holds the subject, under the number and under its keyed hashes
(what an erasure left: the opted-out consent that keeps them suppressed, the rehashed changes), in
one read-only snapshot. As JSON: one list of rows per table. As CSV: one line per field of every
row (`table,row,field,value`), so that tables of different shapes fit one file. A text a spreadsheet
would run as a formula (it starts with = + - @, a tab or a carriage return) is written behind a `'`,
the usual guard, so opening the export cannot run what a sender put in a reply; a plain number
(`+31612345678`, `-1.5`) stays as it is.

Erasure is `shared.erasure`: the streams first (an unprocessed entry is marked before the rows are
erased, so a batch committing in between is erased after it), then the rows in one transaction.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from shared.feed import iso

TABLES = {
    "consent": "SELECT * FROM consent WHERE subject = ANY(%(subjects)s) ORDER BY subject, scope",
    "changes": ("SELECT id, seq, prev_hash, hash, event_key, subject, scope, old_state, new_state, outcome, keyword,"
                " provider, occurred_at, received_at, created_at, decided_by, source, stream_id, archive_key,"
                " provider_message_id, import_id, inbound_text, inbound_sha256, policy_version, reach, actor, evidence"
                " FROM consent_changes WHERE subject = ANY(%(subjects)s) ORDER BY subject, seq"),
    "records": "SELECT * FROM consent_records WHERE subject = ANY(%(subjects)s) ORDER BY occurred_at, id",
    "deactivations": "SELECT * FROM consent_deactivations WHERE subject = ANY(%(subjects)s) ORDER BY deactivated_at",
    "events": "SELECT * FROM events WHERE phone = ANY(%(subjects)s) ORDER BY received_at, id",
    "statuses": "SELECT * FROM message_status WHERE recipient = ANY(%(subjects)s) ORDER BY received_at",
    "erasures": "SELECT * FROM erasures WHERE subject_hash = ANY(%(subjects)s) ORDER BY requested_at",
}

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return value


async def export(conn: psycopg.AsyncConnection[Any], subjects: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows of the subjects, in one repeatable-read snapshot."""
    found: dict[str, list[dict[str, Any]]] = {}
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        async with conn.cursor(row_factory=dict_row) as cur:
            for name, sql in TABLES.items():
                await cur.execute(sql, {"subjects": list(subjects)})
                found[name] = [{k: _value(v) for k, v in row.items() if k not in ("txid",)}
                               for row in await cur.fetchall()]
    return found


def as_json(subject: str, tables: dict[str, list[dict[str, Any]]]) -> bytes:
    return orjson.dumps({"subject": subject, "exported_at": iso(datetime.now(UTC)), **tables}, default=str)


def plain_number(text: str) -> bool:
    return _PLAIN_NUMBER.fullmatch(text) is not None


def cell(text: str) -> str:
    """The text as a CSV cell no spreadsheet runs as a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) and not plain_number(text) else text


def as_csv(subject: str, tables: dict[str, list[dict[str, Any]]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["table", "row", "field", "value"])
    writer.writerow(["export", 0, "subject", cell(subject)])
    writer.writerow(["export", 0, "exported_at", iso(datetime.now(UTC))])
    for table, rows in tables.items():
        for index, row in enumerate(rows, start=1):
            for field, value in row.items():
                text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
                writer.writerow([table, index, field, "" if value is None else cell(text)])
    return out.getvalue().encode()


def held(tables: dict[str, list[dict[str, Any]]]) -> bool:
    return any(tables.values())
