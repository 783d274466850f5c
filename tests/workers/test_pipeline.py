"""Through the ingress into Postgres with real Redis, real Postgres and RQ workers in burst mode."""

from __future__ import annotations

import json
import random
from typing import Any

import psycopg
import pytest
import redis
from starlette.testclient import TestClient

from shared.settings import Settings
from tests.ingress.test_app import BRIEF_CM_EVENT, BRIEF_CM_MO, examples
from tests.workers.conftest import Drain
from workers.batch import run_batch
from workers.context import WorkerContext, normalize_context
from workers.normalize import normalize_entries

pytestmark = pytest.mark.integration
JSON = {"content-type": "application/json"}


def rows(db: psycopg.Connection, sql: str, *params: Any) -> list[dict[str, Any]]:
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(sql, params).fetchall()  # type: ignore[arg-type]


def post(client: TestClient, path: str, body: dict[str, Any] | bytes, **kwargs: Any) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=content, headers=kwargs.pop("headers", JSON), **kwargs)
    assert response.status_code == 200, response.text


def assert_every_entry_accounted(db: psycopg.Connection, redis_client: redis.Redis, settings: Settings) -> None:
    """Each stream entry is its events in Postgres (a retry shares the first delivery's rows) or a dead letter."""
    raw = [(sid.decode(), fields) for sid, fields in redis_client.xrange(settings.stream)]
    keys = {r["dedupe_key"] for r in rows(db, "SELECT dedupe_key FROM events")}
    dead = {r["stream_id"]: r["reason"] for r in rows(db, "SELECT stream_id, reason FROM dead_letters")}
    for entry in normalize_entries(raw, normalize_context(settings)):
        if entry.dead_reason:
            assert dead.get(entry.stream_id) == entry.dead_reason
        else:
            assert entry.stream_id not in dead
            assert {event.dedupe_key for event in entry.events} <= keys


def test_every_example_ends_as_events_or_a_dead_letter(ingress_client: TestClient, drain: Drain, settings: Settings,
                                                      db: psycopg.Connection, redis_client: redis.Redis) -> None:
    sent = examples()
    for _, method, path, body, query, headers in sent:
        response = ingress_client.request(method, path + (f"?{query}" if query else ""), content=body, headers=headers)
        assert response.status_code == 200
    drain()
    assert_every_entry_accounted(db, redis_client, settings)
    assert redis_client.xlen(settings.stream) == len(sent)
    kinds = {(r["provider"], r["kind"]) for r in rows(db, "SELECT provider, kind FROM events")}
    assert {("cm", "inbound"), ("cm", "event"), ("cm", "status"), ("smsmode", "status"), ("smsmode", "inbound"),
            ("mx2", "status"), ("gatewayapi", "status"), ("gatewayapi", "inbound")} <= kinds


def test_cm_mo_fields(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", BRIEF_CM_MO)
    post(ingress_client, "/webhooks/cm/events", BRIEF_CM_EVENT)
    drain()
    [mo] = rows(db, "SELECT * FROM events WHERE kind = 'inbound'")
    assert (mo["phone"], mo["counterpart"], mo["body"]) == ("+31612345678", "3669", "This is an example message.")
    assert mo["message_ref"] == "2f2d42ac-3809-40fb-bce5-dc720e4db138"
    assert mo["keyword_outcome"] == "none"
    [event] = rows(db, "SELECT * FROM events WHERE kind = 'event'")
    assert event["provider_event_id"] == "121c38a5-cf77-424a-9ea9-d6c044a845f8"
    assert event["event_type"] == "SuggestionClick"
    assert event["phone"] == "+31612345678"
    assert event["occurred_at"].isoformat() == "2025-09-03T08:00:05+00:00"


def test_retried_deliveries_are_one_event(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    for _ in range(5):
        post(ingress_client, "/webhooks/cm/mo", BRIEF_CM_MO)
    drain()
    for _ in range(3):
        post(ingress_client, "/webhooks/cm/mo", BRIEF_CM_MO)
    drain()
    assert rows(db, "SELECT count(*) AS n FROM events")[0]["n"] == 1


def gw_dlr(status: str, time: int, msg: int = 1000001, msisdn: int = 4587654321) -> dict[str, Any]:
    return {"id": msg, "msisdn": msisdn, "time": time, "status": status, "userref": "u1"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_status_is_monotonic_under_shuffled_and_duplicated_delivery(
    seed: int, ingress_client: TestClient, drain: Drain, db: psycopg.Connection
) -> None:
    history = [gw_dlr("BUFFERED", 100), gw_dlr("ENROUTE", 110), gw_dlr("DELIVERED", 120)]
    other = [gw_dlr("ENROUTE", 100, msisdn=4511111111), gw_dlr("UNDELIVERABLE", 130, msisdn=4511111111),
             gw_dlr("ENROUTE", 140, msisdn=4511111111)]
    deliveries = (history + other) * 2
    random.Random(seed).shuffle(deliveries)
    for i, payload in enumerate(deliveries):
        post(ingress_client, "/webhooks/gatewayapi", payload)
        if i % 4 == 3:
            drain()  # some in separate batches, some in one
    drain()
    final = {r["recipient"]: r["status"] for r in rows(db, "SELECT recipient, status FROM message_status")}
    assert final == {"+4587654321": "delivered", "+4511111111": "failed"}
    assert rows(db, "SELECT count(*) AS n FROM events")[0]["n"] == 6


def cm_mo(body: str, sender: str = "+31612345678", to: str = "3669", ref: str = "r") -> dict[str, Any]:
    return {"reference": ref, "from": sender, "to": to, "body": body, "groupings": ["", "", ""]}


def consent_of(db: psycopg.Connection) -> dict[tuple[str, str], str]:
    return {(r["subject"], r["scope"]): r["state"] for r in rows(db, "SELECT subject, scope, state FROM consent")}


def test_stop_then_start(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", ref="a"))
    drain()
    post(ingress_client, "/webhooks/cm/mo", cm_mo("Stop please", ref="b"))  # a repeat changes nothing
    drain()
    assert consent_of(db) == {("+31612345678", "3669"): "opted_out"}
    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", ref="c"))
    drain()
    assert consent_of(db) == {("+31612345678", "3669"): "opted_in"}
    changes = rows(db, "SELECT old_state, new_state, keyword FROM consent_changes ORDER BY id")
    assert [(c["old_state"], c["new_state"]) for c in changes] == [(None, "opted_out"), ("opted_out", "opted_in")]


def mx2(status: str, when: str, text: str = "", sub: str = "xct7jy", cguid: str = "C1") -> dict[str, Any]:
    return {"subscriberId": sub, "cguid": cguid, "status": status, "statusMessage": "", "textMessage": text,
            "messageType": "", "datetime": when}


def test_start_then_an_older_stop_changes_nothing(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/mx2", mx2("received", "2024-03-25 20:05:00", "START"))
    drain()
    post(ingress_client, "/webhooks/mx2", mx2("optout", "2024-03-25 20:01:00"))
    drain()
    assert consent_of(db) == {("xct7jy", "C1"): "opted_in"}
    assert len(rows(db, "SELECT * FROM consent_changes")) == 1


def test_stopall_and_a_start_on_one_scope(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", to="3669", ref="a"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOPALL", to="4000", ref="b"))
    drain()
    assert consent_of(db)[("+31612345678", "*")] == "opted_out"
    changes = rows(db, "SELECT scope, outcome FROM consent_changes ORDER BY occurred_at, id")
    assert {(c["scope"], c["outcome"]) for c in changes} == {("3669", "opt_out"), ("*", "opt_out_all")}


def test_gatewayapi_leased_keyword_is_stripped_and_scoped(ingress_client: TestClient, drain: Drain,
                                                         db: psycopg.Connection) -> None:
    mo = {"id": 77, "msisdn": 4587654321, "receiver": 451204, "message": "foo stop", "senttime": 1450000000,
          "webhook_label": "test"}
    post(ingress_client, "/webhooks/gatewayapi", mo)
    drain()
    assert consent_of(db) == {("+4587654321", "451204/foo"): "opted_out"}


def test_possible_opt_out_is_listed_for_review(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("don't stop"))
    drain()
    assert consent_of(db) == {}
    [review] = rows(db, "SELECT * FROM consent_review")
    assert review["subject"] == "+31612345678"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2,3]", b"{\"deep\": " * 50 + b"1" + b"}" * 50,
                                  b"\xff\xfe\x00garbage", "{\"emoji\": \"\U0001F6D1\", \"nul\": \"\\u0000\"}".encode()])
def test_garbage_becomes_a_dead_letter_with_the_raw_body(body: bytes, ingress_client: TestClient, drain: Drain,
                                                         db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/mx2", body)
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello"))  # shares the batch, unharmed
    drain()
    [dead] = rows(db, "SELECT * FROM dead_letters")
    assert bytes(dead["body"]) == body
    assert dead["provider"] == "mx2" and dead["reason"]
    assert len(rows(db, "SELECT * FROM events")) == 1


def test_the_same_batch_twice_changes_nothing(ingress_client: TestClient, settings: Settings, redis_client: redis.Redis,
                                              worker_context: WorkerContext, db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP"))
    post(ingress_client, "/webhooks/gatewayapi", gw_dlr("DELIVERED", 120))
    post(ingress_client, "/webhooks/mx2", b"garbage")
    ids = [sid.decode() for sid, _ in redis_client.xrange(settings.stream)]
    snapshot_sql = ("SELECT (SELECT json_agg(e ORDER BY id) FROM (SELECT id, dedupe_key, updated_at FROM events) e)::text,"
                    " (SELECT json_agg(m) FROM message_status m)::text, (SELECT json_agg(c) FROM consent c)::text,"
                    " (SELECT count(*) FROM consent_changes)")
    run_batch(worker_context, ids)
    first = db.execute(snapshot_sql).fetchone()
    second_result = run_batch(worker_context, ids)
    assert db.execute(snapshot_sql).fetchone() == first
    assert second_result["inserted"] == 0
