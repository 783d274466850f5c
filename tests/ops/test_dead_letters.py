"""`hookstream dead-letters` against real Redis and Postgres: dead letters made by the pipeline itself."""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from starlette.testclient import TestClient

from hookstream.dead_letters import parse_when, record_from_row
from shared.display import UNSAFE, render_bytes, visible
from shared.record import RawRecord
from shared.settings import Settings
from tests.ops.conftest import Cli
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, mx2, post, rows

pytestmark = pytest.mark.integration

BINARY = b"\xff\xfe\x00garbage"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def count(db: psycopg.Connection, where: str = "TRUE") -> int:
    return int(rows(db, f"SELECT count(*) AS n FROM dead_letters WHERE {where}")[0]["n"])


def dead_by_provider(db: psycopg.Connection) -> dict[str | None, dict]:
    return {r["provider"]: r for r in rows(db, "SELECT * FROM dead_letters ORDER BY id")}


def insert_dead(db: psycopg.Connection, stream_id: str, body: bytes, received_at: datetime | None,
                provider: str | None = "mx2", feed: str | None = "webhook") -> int:
    row = rows(db, "INSERT INTO dead_letters (stream_id, provider, feed, method, reason, body, query, headers,"
                   " content_type, client, received_at) VALUES (%s, %s, %s, 'POST', 'normalizer failed: since fixed',"
                   " %s, '', %s, 'application/json', '203.0.113.9', %s) RETURNING id",
               stream_id, provider, feed, body, json.dumps({"content-type": "application/json"}), received_at)
    return int(row[0]["id"])


@pytest.mark.parametrize(("text", "expected"), [
    ("2h", NOW - timedelta(hours=2)), ("7d", NOW - timedelta(days=7)), ("90m", NOW - timedelta(minutes=90)),
    ("1.5h", NOW - timedelta(minutes=90)), ("30s", NOW - timedelta(seconds=30)), ("2W", NOW - timedelta(weeks=2)),
    ("2025-05-01T10:00:00Z", datetime(2025, 5, 1, 10, tzinfo=UTC)),
    ("2025-05-01 10:00", datetime(2025, 5, 1, 10, tzinfo=UTC)),  # no offset: UTC
    ("2025-05-01T12:00:00+02:00", datetime(2025, 5, 1, 10, tzinfo=UTC)),
    ("2025-05-01", datetime(2025, 5, 1, tzinfo=UTC)),
    ("yesterday", datetime(2025, 5, 31, tzinfo=UTC)), ("today", datetime(2025, 6, 1, tzinfo=UTC)),
])
def test_when_is_iso_or_relative(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["tomorrow", "2h ago", "-2h", "", "12x"])
def test_when_refuses_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_when(text, NOW)


def test_bytes_are_text_only_when_printable_utf8() -> None:
    assert render_bytes(b"") == ("text", "")
    assert render_bytes("héllo\n\tworld 🛑".encode()) == ("text", "héllo\n\tworld 🛑")
    assert render_bytes(BINARY) == ("hex", "ff fe 00 67 61 72 62 61 67 65")
    assert render_bytes(b"a\x00b") == ("hex", "61 00 62")  # valid UTF-8, but a NUL is not for a terminal
    assert render_bytes(bytes(range(40)))[1].count("\n") == 1  # 32 bytes a line


# ESC sequences (clear screen, window title, colour), a C1 CSI, bidi override/isolates/marks, separators, a CR.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eevil\u2066x\u2069\u200f\u061c\u2028\u2029\r\x7f"
HOSTILE_SHOWN = "\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202eevil\\u2066x\\u2069\\u200f\\u061c\\u2028\\u2029\\r\\x7f"


def test_visible_escapes_controls_bidi_and_separators() -> None:
    assert visible(HOSTILE) == HOSTILE_SHOWN
    assert visible("\u202a\u202b\u202c\u202d\u2067\u2068\u200e\x00\x85\x9f") == (
        "\\u202a\\u202b\\u202c\\u202d\\u2067\\u2068\\u200e\\x00\\x85\\x9f")
    assert visible("a\tb\nc", keep="\n") == "a\\tb\nc"
    assert visible("héllo 🛑 \\x1b ok") == "héllo 🛑 \\x1b ok"  # printable text is left alone
    # Text that is no terminal control (C1 ends at U+009F) or bidi control passes as it is.
    assert visible("\xa0\u00ad\u200b\u2030") == "\xa0\u00ad\u200b\u2030"


def test_bytes_shown_as_text_escape_what_a_terminal_would_act_on() -> None:
    body = "\u202eRLO\u2069 line one\r\n\tline two\u0085".encode()
    assert render_bytes(body) == ("text", "\\u202eRLO\\u2069 line one\\r\n\tline two\\x85")
    assert render_bytes("\x1b[31m\u202e".encode())[0] == "hex"  # C0 controls: binary, shown as hex


def test_provider_text_is_escaped_in_list_and_show(settings: Settings, db: psycopg.Connection, cli: Cli) -> None:
    headers = {"x-note\u202e": f"a{HOSTILE}", "content-type": "application/json"}
    [binary, text] = [rows(db, "INSERT INTO dead_letters (stream_id, provider, feed, method, reason, body, query,"
                                " headers, content_type, client, received_at) VALUES (%s, 'mx2', 'webhook', 'POST',"
                                " %s, %s, %s, %s, %s, '203.0.113.9', now()) RETURNING id",
                           stream_id, f"normalizer failed: {HOSTILE}", body, "q=\u202eevil\u2069&r=\x85".encode(),
                           json.dumps(headers), f"text/plain{HOSTILE}")[0]["id"]
                      for stream_id, body in (("1-1", f"{{{HOSTILE}}}".encode()),
                                              ("1-2", "{\u202eevil\u2069}\n\t\u2028".encode()))]

    def printed_controls(out: str) -> set[str]:
        return {c for c in out if UNSAFE.match(c)}

    code, out = cli(settings, "dead-letters", "list")
    assert code == 0 and printed_controls(out) == {"\n"}  # only the line breaks between rows
    assert out.count(f"normalizer failed: {HOSTILE_SHOWN[:40]}") == 2

    code, out = cli(settings, "dead-letters", "show", str(binary))
    assert code == 0 and printed_controls(out) == {"\n"}
    assert f"reason: normalizer failed: {HOSTILE_SHOWN}" in out
    assert f"content_type: text/plain{HOSTILE_SHOWN}" in out
    assert '"x-note\\u202e":"a\\u001b[2J' in out and "\\u2066x\\u2069" in out  # headers: one line of JSON
    assert "query (text, 17 bytes):\nq=\\u202eevil\\u2069&r=\\x85" in out  # no C0 control: text, escaped
    assert "body (hex, " in out and "7b 1b 5b 32 4a" in out  # the ESC in the body: binary, as hex

    code, out = cli(settings, "dead-letters", "show", str(text))
    assert code == 0 and printed_controls(out) == {"\n", "\t"}  # the body's own layout: newline and tab
    assert "body (text, 17 bytes):\n{\\u202eevil\\u2069}\n\t\\u2028" in out


def test_list_show_and_filters(ingress_client: TestClient, drain: Drain, settings: Settings, db: psycopg.Connection,
                               cli: Cli) -> None:
    post(ingress_client, "/webhooks/mx2", BINARY)
    post(ingress_client, "/webhooks/cm/mo", b"not json")
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello"))  # fine: an event, not a dead letter
    drain()
    dead = dead_by_provider(db)
    assert set(dead) == {"mx2", "cm"}

    def listed(*argv: str) -> tuple[set[int], str]:
        code, out = cli(settings, "dead-letters", "list", *argv)
        assert code == 0
        ids = {int(line.split()[0]) for line in out.splitlines()[1:-1]}
        return ids, out.splitlines()[-1]

    both, mx2_id, cm_id = {dead["mx2"]["id"], dead["cm"]["id"]}, dead["mx2"]["id"], dead["cm"]["id"]
    assert listed() == (both, "2 dead letter(s) match, 2 shown")
    assert listed("--limit", "1") == ({cm_id}, "2 dead letter(s) match, 1 shown")  # newest first
    assert listed("--provider", "mx2")[0] == {mx2_id}
    assert listed("--feed", "mo")[0] == {cm_id}
    assert listed("--reason", "NOT VALID utf-8")[0] == {mx2_id}  # a substring, in any case
    assert listed("--reason", "Invalid Literal")[0] == {cm_id}
    assert listed("--reason", "parse error")[0] == both
    assert listed("--reason", "PARSE ERROR", "--provider", "cm")[0] == {cm_id}
    assert listed("--reason", "%")[0] == listed("--reason", "_")[0] == set()  # literal, not a LIKE pattern
    assert listed("--reason", "no such reason") == (set(), "0 dead letter(s) match, 0 shown")
    assert listed("--since", "1h")[0] == both
    assert listed("--until", "1h")[0] == set()
    assert listed("--since", "2000-01-01", "--until", "2999-01-01T00:00:00+02:00")[0] == both
    assert listed("--since", "2999-01-01")[0] == set()

    code, out = cli(settings, "dead-letters", "show", str(mx2_id))
    assert code == 0
    assert "provider: mx2" in out and f"stream_id: {dead['mx2']['stream_id']}" in out
    assert '"content-type":"application/json"' in out
    assert "body (hex, 10 bytes):\nff fe 00 67 61 72 62 61 67 65" in out
    assert "query (text, 0 bytes):" in out
    code, out = cli(settings, "dead-letters", "show", str(cm_id))
    assert code == 0 and "body (text, 8 bytes):\nnot json" in out
    code, out = cli(settings, "dead-letters", "show", "999999")
    assert code == 1 and "no dead letter 999999" in out


def test_requeued_garbage_dead_letters_again_under_its_new_stream_id(
    ingress_client: TestClient, drain: Drain, settings: Settings, db: psycopg.Connection, redis_client: redis.Redis,
    cli: Cli,
) -> None:
    post(ingress_client, "/webhooks/mx2", BINARY)
    drain()
    [first] = rows(db, "SELECT * FROM dead_letters")
    [(_, original)] = redis_client.xrange(settings.stream)

    code, out = cli(settings, "dead-letters", "requeue", str(first["id"]))
    assert (code, out.strip()) == (0, "requeued 1, skipped 0, failed 0")
    assert redis_client.xlen(settings.stream) == 2
    [(new_id, fields)] = redis_client.xrevrange(settings.stream, count=1)
    assert RawRecord.from_fields(fields) == RawRecord.from_fields(original)  # the same record, receive time too
    assert rows(db, "SELECT requeued_at FROM dead_letters")[0]["requeued_at"] is not None

    drain()
    old, new = rows(db, "SELECT * FROM dead_letters ORDER BY id")
    assert old["id"] == first["id"] and old["requeued_at"] is not None
    assert new["stream_id"] == new_id.decode() != old["stream_id"] and new["requeued_at"] is None
    assert bytes(new["body"]) == BINARY and new["received_at"] == old["received_at"] and new["reason"] == old["reason"]

    assert cli(settings, "dead-letters", "list")[1].splitlines()[-1] == "1 dead letter(s) match, 1 shown"
    assert cli(settings, "dead-letters", "list", "--include-requeued")[1].splitlines()[-1].startswith("2 ")
    assert cli(settings, "dead-letters", "list", "--only-requeued")[1].splitlines()[1].split()[0] == str(old["id"])
    code, out = cli(settings, "dead-letters", "requeue", str(old["id"]))  # already requeued: not again by default
    assert code == 0 and "requeued 0" in out and "some IDs did not match" in out
    assert redis_client.xlen(settings.stream) == 2


def test_requeue_after_a_fix_gives_events_at_the_original_receive_time(
    drain: Drain, settings: Settings, db: psycopg.Connection, redis_client: redis.Redis, cli: Cli,
) -> None:
    received = datetime(2024, 3, 26, 0, 5, 7, 123000, tzinfo=UTC)
    payload = json.dumps(mx2("received", "2024-03-25 20:05:00", "hello")).encode()
    fixed = insert_dead(db, "1-1", payload, received)
    foreign = insert_dead(db, "1-2", b"\x00\x01", None, provider=None, feed=None)  # never was a record

    code, out = cli(settings, "dead-letters", "requeue", "--all", "--dry-run")
    assert code == 0 and out.splitlines()[-1] == "would requeue 1, skipped 1, failed 0"
    assert f"dead letter {foreign}: not a hookstream record" in out
    assert redis_client.xlen(settings.stream) == 0 and count(db, "requeued_at IS NOT NULL") == 0

    code, out = cli(settings, "dead-letters", "requeue", "--all")
    assert code == 0 and out.splitlines()[-1] == "requeued 1, skipped 1, failed 0"
    [(new_id, _)] = redis_client.xrange(settings.stream)
    drain()
    [event] = rows(db, "SELECT * FROM events")
    assert (event["provider"], event["kind"], event["body"], event["phone"]) == ("mx2", "inbound", "hello", "xct7jy")
    assert event["received_at"] == received and event["stream_id"] == new_id.decode()
    state = {r["id"]: r["requeued_at"] for r in rows(db, "SELECT id, requeued_at FROM dead_letters")}
    assert state[fixed] is not None and state[foreign] is None and len(state) == 2


def test_requeue_marks_nothing_when_redis_is_down(settings: Settings, db: psycopg.Connection, cli: Cli,
                                                  closed_port: int) -> None:
    insert_dead(db, "1-1", b"{}", datetime(2024, 1, 1, tzinfo=UTC))
    broken = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{closed_port}/0")
    code, out = cli(broken, "dead-letters", "requeue", "--provider", "mx2")
    assert code == 1 and out.splitlines()[-1] == "requeued 0, skipped 0, failed 1"
    assert "redis refused 1 record(s), left them unmarked" in out
    assert count(db, "requeued_at IS NULL") == 1


def test_postgres_down_is_one_line_not_a_traceback(settings: Settings, cli: Cli, closed_port: int) -> None:
    broken = dataclasses.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{closed_port}/postgres")
    code, out = cli(broken, "dead-letters", "list")
    assert code == 1 and out.startswith("hookstream dead-letters: OperationalError: ") and out.count("\n") == 1


def test_record_from_row_needs_provider_and_feed() -> None:
    row = {"provider": "cm", "feed": None, "method": "POST", "query": b"", "content_type": None, "headers": {},
           "client": None, "received_at": None, "first_seen": NOW, "body": b""}
    assert record_from_row(row) is None
    record = record_from_row({**row, "feed": "mo"})
    assert record is not None and record.received_at == NOW and record.content_type == "" and record.client == ""


def test_purge_needs_a_filter_or_all_and_yes(ingress_client: TestClient, drain: Drain, settings: Settings,
                                             db: psycopg.Connection, cli: Cli) -> None:
    post(ingress_client, "/webhooks/mx2", BINARY)
    post(ingress_client, "/webhooks/cm/mo", b"not json")
    drain()
    assert count(db) == 2

    def purge(*argv: str) -> tuple[int, str]:
        code, out = cli(settings, "dead-letters", "purge", *argv)
        return code, out.strip()

    assert purge()[0] == 2 and purge("--yes")[0] == 2 and "--all" in purge("--yes")[1]
    assert purge("--include-requeued", "--yes")[0] == 2  # widening is not a filter
    assert purge("--all") == (1, "would delete 2 dead letter(s); nothing deleted (add --yes)")
    assert purge("--provider", "mx2") == (1, "would delete 1 dead letter(s); nothing deleted (add --yes)")
    assert count(db) == 2
    assert purge("--provider", "mx2", "--yes") == (0, "deleted 1 dead letter(s)")
    assert set(dead_by_provider(db)) == {"cm"}
    assert cli(settings, "dead-letters", "requeue")[0] == 2  # requeue is guarded the same way

    assert cli(settings, "dead-letters", "requeue", "--provider", "cm")[0] == 0
    drain()  # dead again: one requeued row, one new
    assert count(db) == 2
    assert purge("--all", "--yes") == (0, "deleted 1 dead letter(s)")  # the filters' default: not requeued
    assert count(db, "requeued_at IS NOT NULL") == 1
    [kept] = rows(db, "SELECT id FROM dead_letters")
    assert purge(str(kept["id"] + 1000), "--include-requeued", "--yes") == (0, "deleted 0 dead letter(s)")
    assert purge(str(kept["id"]), "--include-requeued", "--yes") == (0, "deleted 1 dead letter(s)")
    assert count(db) == 0
