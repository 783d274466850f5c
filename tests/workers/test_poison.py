"""One hostile record among good ones, and a provider's ordinary redelivery: regressions of the outside review.

Each test failed before its fix: a redelivered START that reversed a later STOP, an over-long id that
held its batch for ever, a literal `\\u0000` that made a record unwritable, a deep body that took its
neighbours into the dead letters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from psycopg_pool import PoolTimeout
from starlette.testclient import TestClient

from shared.settings import Settings
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, consent_of, post, rows
from workers.batch import is_outage

pytestmark = pytest.mark.integration


def changes_of(db: psycopg.Connection) -> list[tuple[str, str | None, str]]:
    return [(c["scope"], c["old_state"], c["new_state"])
            for c in rows(db, "SELECT scope, old_state, new_state FROM consent_changes ORDER BY occurred_at, id")]


@pytest.mark.parametrize("first,second", [("START", "STOP"), ("STOP", "START")])
def test_a_redelivered_reply_never_reverses_a_later_one(first: str, second: str, ingress_client: TestClient,
                                                        drain: Drain, db: psycopg.Connection) -> None:
    """CM replies carry no provider time: a retry arrives with a new receive time and must not count as new."""
    post(ingress_client, "/webhooks/cm/mo", cm_mo(first, ref="a"))
    drain()
    post(ingress_client, "/webhooks/cm/mo", cm_mo(second, ref="b"))
    drain()
    time.sleep(0.01)  # the retry is received strictly later
    post(ingress_client, "/webhooks/cm/mo", cm_mo(first, ref="a"))  # CM retries the first reply
    drain()
    final = "opted_out" if second == "STOP" else "opted_in"
    assert consent_of(db) == {("+31612345678", "3669"): final}
    assert changes_of(db)[-1][2] == final
    assert len(rows(db, "SELECT * FROM events")) == 2


def test_a_redelivery_in_the_same_batch_as_the_later_reply(ingress_client: TestClient, drain: Drain,
                                                           db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", ref="a"))
    drain()
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="b"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", ref="a"))
    drain()
    assert consent_of(db) == {("+31612345678", "3669"): "opted_out"}
    assert changes_of(db) == [("3669", None, "opted_in"), ("3669", "opted_in", "opted_out")]


def test_a_redelivered_status_keeps_its_first_order_time(ingress_client: TestClient, drain: Drain,
                                                         db: psycopg.Connection) -> None:
    """Two failures of one message without provider times: the retry of the first must not win."""
    def mx2(status: str, message: str) -> dict[str, Any]:
        return {"subscriberId": "s1", "cguid": "C9", "status": status, "statusMessage": message, "textMessage": "",
                "messageType": "", "datetime": ""}

    post(ingress_client, "/webhooks/mx2", mx2("failed", "first"))
    drain()
    post(ingress_client, "/webhooks/mx2", mx2("failed", "second"))
    drain()
    before = rows(db, "SELECT provider_reason, order_at FROM message_status")
    time.sleep(0.01)
    post(ingress_client, "/webhooks/mx2", mx2("failed", "first"))
    drain()
    assert rows(db, "SELECT provider_reason, order_at FROM message_status") == before


def smsmode_status(message_id: str, phone: str = "33612345678") -> dict[str, Any]:
    return {"messageId": message_id, "status": {"value": "DELIVERED"}, "recipient": {"to": phone},
            "from": "SENDER", "sentDate": "2025-01-01T10:00:00.000Z"}


def assert_one_dead_among_good(db: psycopg.Connection, good_events: int, reason_part: str) -> None:
    dead = rows(db, "SELECT reason FROM dead_letters")
    assert len(dead) == 1, dead
    assert reason_part in dead[0]["reason"]
    assert len(dead[0]["reason"]) <= 600
    assert len(rows(db, "SELECT 1 FROM events")) == good_events


def test_an_over_long_id_is_one_dead_letter_and_its_neighbours_land(ingress_client: TestClient, drain: Drain,
                                                                    db: psycopg.Connection) -> None:
    for n in range(10):
        post(ingress_client, "/webhooks/smsmode/status", smsmode_status(f"good-{n}"))
    post(ingress_client, "/webhooks/smsmode/status", smsmode_status("x" * 3000))
    for n in range(10, 20):
        post(ingress_client, "/webhooks/smsmode/status", smsmode_status(f"good-{n}"))
    drain()  # an outage's retry-for-ever would leave the batch pending
    assert_one_dead_among_good(db, 20, "longer than")


def test_a_record_the_database_refuses_is_bisected_out(ingress_client: TestClient, drain: Drain,
                                                       db: psycopg.Connection, settings: Settings,
                                                       redis_client: redis.Redis,
                                                       constraints: Callable[[str, str], None]) -> None:
    """Beyond the parse-time caps: any error of a record's own rows is its own dead letter, never an outage."""
    constraints("events", "message_ref IS DISTINCT FROM 'poison'")
    poison_batch(ingress_client)
    drain()
    assert_one_dead_among_good(db, 6, "database refused the record: 23514")
    assert not redis_client.xpending(settings.stream, settings.group)["pending"]


def test_a_literal_nul_escape_in_a_header_is_stored_verbatim(ingress_client: TestClient, drain: Drain,
                                                             db: psycopg.Connection) -> None:
    """Six characters `\\u0000` are text, not a NUL: editing serialized JSON broke them (and the batch)."""
    agent = "probe\\u0000agent"
    for n in range(5):
        headers = {"content-type": "application/json", "user-agent": agent if n == 2 else "ok"}
        post(ingress_client, "/webhooks/smsmode/status", smsmode_status(f"m-{n}"), headers=headers)
    drain()
    assert rows(db, "SELECT 1 FROM dead_letters") == []
    assert len(rows(db, "SELECT 1 FROM events")) == 5
    stored = rows(db, "SELECT headers->>'user-agent' AS agent FROM raw_archive WHERE headers->>'user-agent' <> 'ok'")
    assert stored == [{"agent": agent}]


def test_a_real_nul_in_a_body_is_cleaned_not_fatal(ingress_client: TestClient, drain: Drain,
                                                   db: psycopg.Connection) -> None:
    body = {**cm_mo("hello\u0000there", ref="n"), "extra": {"k\u0000": "v\u0000"}}
    post(ingress_client, "/webhooks/cm/mo", body)
    drain()
    assert rows(db, "SELECT 1 FROM dead_letters") == []
    (event,) = rows(db, "SELECT body, payload FROM events")
    assert event["body"] == "hellothere" and event["payload"]["extra"] == {"k": "v"}


def test_a_deep_body_is_one_dead_letter_beside_ten_stops(ingress_client: TestClient, drain: Drain,
                                                         db: psycopg.Connection) -> None:
    for n in range(10):
        post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", sender=f"+3161234{n:04d}", ref=f"s{n}"))
    deep = {**cm_mo("STOP", sender="+31699999999", ref="deep"), "unread": json.loads("[" * 600 + "]" * 600)}
    post(ingress_client, "/webhooks/cm/mo", deep)
    drain()
    assert_one_dead_among_good(db, 10, "nested deeper than")
    assert len([s for s in consent_of(db).values() if s == "opted_out"]) == 10


def poison_batch(ingress_client: TestClient) -> None:
    for n in range(6):
        post(ingress_client, "/webhooks/smsmode/status", smsmode_status(f"ok-{n}"))
        if n == 3:
            post(ingress_client, "/webhooks/smsmode/status", smsmode_status("poison"))


@pytest.fixture
def constraints(db: psycopg.Connection) -> Iterator[Callable[[str, str], None]]:
    added: list[tuple[str, str]] = []

    def add(table: str, check: str) -> None:
        name = f"probe_{len(added)}"
        db.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({check})")
        db.commit()
        added.append((table, name))

    yield add
    for table, name in added:
        db.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    db.commit()


def test_a_dead_letter_falls_back_to_the_raw_bytes(ingress_client: TestClient, drain: Drain, db: psycopg.Connection,
                                                   constraints: Callable[[str, str], None]) -> None:
    constraints("events", "message_ref IS DISTINCT FROM 'poison'")
    constraints("dead_letters", "provider IS NULL OR body NOT LIKE '%poison%'")  # the parsed form is refused too
    poison_batch(ingress_client)
    drain()
    (dead,) = rows(db, "SELECT provider, body, reason FROM dead_letters")
    assert dead["provider"] is None and b"poison" in bytes(dead["body"]) and "23514" in dead["reason"]
    assert len(rows(db, "SELECT 1 FROM events")) == 6


def test_an_entry_no_dead_letter_can_hold_is_parked_not_looped(ingress_client: TestClient, drain: Drain,
                                                               db: psycopg.Connection, settings: Settings,
                                                               redis_client: redis.Redis,
                                                               constraints: Callable[[str, str], None]) -> None:
    constraints("events", "message_ref IS DISTINCT FROM 'poison'")
    constraints("dead_letters", "body NOT LIKE '%poison%'")
    poison_batch(ingress_client)
    drain()
    assert rows(db, "SELECT 1 FROM dead_letters") == []
    assert len(rows(db, "SELECT 1 FROM events")) == 6
    (parked,) = redis_client.xrange(settings.parked_stream)
    assert b"poison" in parked[1][b"b"] and b"23514" in parked[1][b"parked_reason"]
    assert not redis_client.xpending(settings.stream, settings.group)["pending"]


@pytest.mark.parametrize("exc,outage", [
    (psycopg.OperationalError("server closed the connection unexpectedly"), True),
    (psycopg.errors.AdminShutdown(), True),
    (psycopg.errors.ConnectionFailure(), True),
    (psycopg.errors.DiskFull(), True),
    (psycopg.errors.DeadlockDetected(), True),
    (psycopg.InterfaceError("the connection is closed"), True),
    (PoolTimeout("couldn't get a connection after 1.00 sec"), True),
    (psycopg.errors.UndefinedTable(), True),  # workers newer than the schema: wait for migrate
    (psycopg.errors.InsufficientPrivilege(), True),
    (psycopg.errors.ProgramLimitExceeded(), False),  # index row too large: one record's fault
    (psycopg.errors.UntranslatableCharacter(), False),
    (psycopg.errors.CheckViolation(), False),
    (psycopg.errors.QueryCanceled(), False),
    (TypeError("Recursion limit reached"), False),
])
def test_only_connection_class_failures_are_outages(exc: BaseException, outage: bool) -> None:
    assert is_outage(exc) is outage
