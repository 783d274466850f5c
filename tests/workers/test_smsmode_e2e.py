"""smsmode's REST API callbacks (SMS and RCS) through the ingress into rows.

A STOP opts out the person who sent it, in the scope of what they replied to, in every orientation
smsmode sends a reply in; a BLACKLISTED report opts its recipient out everywhere, as code 3999 does.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
from starlette.testclient import TestClient

from tests.providers.util import fixture
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import consent_of, post, rows

pytestmark = pytest.mark.integration


def stop(name: str, **changes: Any) -> dict[str, Any]:
    """A published reply with its text replaced by STOP."""
    reply = orjson.loads(fixture(name))
    return {**reply, "body": {"type": "TEXT", "text": "STOP"}, **changes}


SMS_REPLY = {"messageId": "sms-mo-1", "direction": "MO", "type": "SMS", "channel": {"type": "SMS"},
             "from": "33601020304", "recipient": {"to": "36034"}, "body": {"text": "STOP"},
             "sentDate": "2025-03-01T10:00:00Z"}

# (label, reply, the person, the scope): each reply opts out its person, never our side.
REPLIES: list[tuple[str, dict[str, Any], str, str]] = [
    ("rcs_person_in_recipient_to",
     stop("smsmode/rest-rcs-mo-suggestion-production-thirdparty.json"), "+33633921577", "Messaging Me (TEST)"),
    ("rcs_person_in_from", stop("smsmode/rest-rcs-mo-suggestion-spec.json"), "+33600000000", "RcsAgent"),
    ("sms_person_in_from", SMS_REPLY, "+33601020304", "36034"),
    ("sms_person_in_recipient_to",
     {**SMS_REPLY, "messageId": "sms-mo-2", "from": "36034", "recipient": {"to": "33601020304"}},
     "+33601020304", "36034"),
]


@pytest.mark.parametrize(("label", "reply", "person", "scope"), REPLIES, ids=[r[0] for r in REPLIES])
def test_a_stop_opts_out_the_person_who_sent_it(label: str, reply: dict[str, Any], person: str, scope: str,
                                                ingress_client: TestClient, drain: Drain,
                                                db: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/smsmode/mo", reply)
    drain()
    [event] = rows(db, "SELECT * FROM events")
    assert (event["kind"], event["phone"], event["counterpart"], event["keyword_outcome"]) == (
        "inbound", person, scope, "opt_out")
    assert consent_of(db) == {(person, scope): "opted_out"}


def test_a_location_is_an_event_and_no_consent(ingress_client: TestClient, drain: Drain,
                                               db: psycopg.Connection) -> None:
    reply = orjson.loads(fixture("smsmode/rest-rcs-mo-suggestion-production-thirdparty.json"))
    post(ingress_client, "/webhooks/smsmode/mo", {**reply, "body": {"type": "LOCATION", "latitude": 48.85,
                                                                    "longitude": 2.35}})
    drain()
    [event] = rows(db, "SELECT * FROM events")
    assert (event["kind"], event["event_type"], event["phone"], event["body"]) == (
        "event", "LOCATION", "+33633921577", None)
    assert consent_of(db) == {}


def test_reports_and_a_blacklisted_recipient(ingress_client: TestClient, drain: Drain,
                                             db: psycopg.Connection) -> None:
    delivered = orjson.loads(fixture("smsmode/rest-rcs-status-delivered-spec.json"))
    read = orjson.loads(fixture("smsmode/rest-rcs-status-read-card-production-thirdparty.json"))
    status = {"value": "UNDELIVERABLE", "detail": "BLACKLISTED", "deliveryDate": "2025-04-01T16:00:11"}
    blacklisted = {**delivered, "messageId": "m-blacklisted", "recipient": {"to": "33612345678"}, "status": status}
    for body in (delivered, read, blacklisted, blacklisted):
        post(ingress_client, "/webhooks/smsmode/status", body)
    drain()
    assert rows(db, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0
    final = {r["recipient"]: r["status"] for r in rows(db, "SELECT * FROM message_status")}
    assert final == {"+33600000000": "delivered", "+33633921577": "delivered", "+33612345678": "rejected"}
    [report] = rows(db, "SELECT * FROM events WHERE kind = 'status' AND message_ref = 'm-blacklisted'")
    assert (report["reason"], report["provider_status"], report["provider_reason"]) == (
        "opted_out", "UNDELIVERABLE", "BLACKLISTED")
    assert consent_of(db) == {("+33612345678", "*"): "opted_out"}
    assert len(rows(db, "SELECT * FROM consent_changes")) == 1
