"""CM's formats as accounts receive them, end to end: ingress → stream → workers → rows.

A status report by GET and in the older XML root, an SMS reply in the Xml format's MESSAGES
envelope, a Business Messaging reply on a channel whose numbers are account ids, and a Messenger
opt-in event (the published examples, tests/fixtures/cm/).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from starlette.testclient import TestClient

from tests.providers.util import example
from tests.workers.conftest import Drain

pytestmark = pytest.mark.integration
JSON = {"content-type": "application/json"}
XML = {"content-type": "text/xml"}
GET_PARAMS = example("cm/dlr-get-params-thirdparty.txt").decode().split()


def rows(db: psycopg.Connection, sql: str) -> list[dict[str, Any]]:
    return db.cursor(row_factory=psycopg.rows.dict_row).execute(sql).fetchall()  # type: ignore[arg-type]


def send(client: TestClient, method: str, path: str, body: bytes = b"", query: str = "",
         headers: dict[str, str] | None = None) -> None:
    response = client.request(method, path + (f"?{query}" if query else ""), content=body, headers=headers or {})
    assert response.status_code == 200, response.text


def report_query(**values: str) -> str:
    """A GET status report with every parameter the third-party integration reads, in its order."""
    return urlencode([(name, values.get(name, "")) for name in GET_PARAMS])


def test_status_reports_by_get_and_in_the_older_xml_root(ingress_client: TestClient, drain: Drain,
                                                         db: psycopg.Connection) -> None:
    accepted = report_query(reference="ref-3f2a", sent="2025-09-03T08:00:00", received="2025-09-03T08:00:02",
                            to="0031612345678", statuscode="0", errorcode="", errordescription="")
    failed = report_query(reference="ref-77", sent="2025-09-03T08:00:00", received="2025-09-03T08:01:00",
                          to="0031612345679", statuscode="3", errorcode="23", errordescription="Unknown subscriber")
    send(ingress_client, "GET", "/webhooks/cm/status", query=accepted)
    send(ingress_client, "GET", "/webhooks/cm/status", query=failed)
    send(ingress_client, "GET", "/webhooks/cm/status", query=failed)  # CM retries: one event
    # The same message's later report, in the older XML root (a third party's vector: CODE 200).
    send(ingress_client, "POST", "/webhooks/cm/status", example("cm/dlr-xml-messages-sent-thirdparty.xml"), headers=XML)
    drain()
    assert rows(db, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0
    assert rows(db, "SELECT count(*) AS n FROM events WHERE provider = 'cm' AND kind = 'status'")[0]["n"] == 3
    final = {(r["message_ref"], r["recipient"]): (r["status"], r["provider_status"], r["reason"])
             for r in rows(db, "SELECT * FROM message_status")}
    assert final == {
        # 0 (sent) then 200, not a CM code: unknown never overrides what is known
        ("ref-3f2a", "+31612345678"): ("sent", "0", None),
        ("ref-77", "+31612345679"): ("failed", "3", "invalid_number"),
    }


def test_apple_reply_is_kept_under_its_account_id(ingress_client: TestClient, drain: Drain,
                                                  db: psycopg.Connection) -> None:
    """A STOP on Apple Messages for Business: the consent subject is the Apple id, not a phone."""
    published = json.loads(example("cm/mo-apple-business-chat.json"))
    stop = {**published, "from": {"number": "12345678", "name": ""}, "message": {"text": "STOP"}}
    send(ingress_client, "POST", "/webhooks/cm/mo", json.dumps(published).encode(), headers=JSON)
    send(ingress_client, "POST", "/webhooks/cm/mo", json.dumps(stop).encode(), headers=JSON)
    drain()
    inbound = {r["body"]: (r["phone"], r["counterpart"]) for r in rows(db, "SELECT * FROM events WHERE kind = 'inbound'")}
    assert inbound == {"Edit appointment": ("00000000-0000-0000-0000-000000000000", "11111111111111111111111111111111"),
                       "STOP": ("12345678", "11111111111111111111111111111111")}
    consent = [(r["subject"], r["scope"], r["state"]) for r in rows(db, "SELECT * FROM consent")]
    assert consent == [("12345678", "11111111111111111111111111111111", "opted_out")]


def test_messenger_opt_in_event_is_a_consent_change(ingress_client: TestClient, drain: Drain,
                                                     db: psycopg.Connection) -> None:
    for name in ("cm/event-messenger-optinsubscribed.json", "cm/event-messenger-optinextended.json"):
        send(ingress_client, "POST", "/webhooks/cm/events", example(name), headers=JSON)
    drain()
    events = [(r["kind"], r["event_type"]) for r in rows(db, "SELECT * FROM events ORDER BY event_type")]
    assert events == [("consent", "OptInExtended"), ("consent", "OptInSubscribed")]
    consent = [(r["subject"], r["scope"], r["state"]) for r in rows(db, "SELECT * FROM consent")]
    assert consent == [("Recipients PSID", "Your Facebook account ID", "opted_in")]
    assert len(rows(db, "SELECT * FROM consent_changes")) == 1  # the renewal confirms, it changes nothing


def test_xml_reply_in_the_messages_envelope(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    published = example("cm/mo-xml-messages-salesforce-plugin.xml")
    stop = published.replace(b"<MESSAGE>Test</MESSAGE>", b"<MESSAGE>STOP</MESSAGE>").replace(b"519161862", b"519161863")
    for body in (published, stop):
        send(ingress_client, "POST", "/webhooks/cm/mo", body, headers=XML)
    drain()
    assert rows(db, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0
    inbound = {r["provider_event_id"]: (r["phone"], r["counterpart"], r["body"], r["keyword_outcome"])
               for r in rows(db, "SELECT * FROM events WHERE kind = 'inbound'")}
    assert inbound == {"519161862": ("0123456789", "8850", "Test", "none"),
                       "519161863": ("0123456789", "8850", "STOP", "opt_out")}
    consent = [(r["subject"], r["scope"], r["state"]) for r in rows(db, "SELECT * FROM consent")]
    assert consent == [("0123456789", "8850", "opted_out")]  # national: no default region set
