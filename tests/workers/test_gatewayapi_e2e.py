"""GatewayAPI's Mobile Messaging API webhooks through the ingress into rows, one per event type.

The published example file gives every event type one shared `event_id`; each is sent here under an
id of its own, since the id is what makes a delivery one row.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
from starlette.testclient import TestClient

from tests.providers.util import fixture
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import post, rows

pytestmark = pytest.mark.integration
PATH = "/webhooks/gatewayapi/events"


def published_events() -> list[dict[str, Any]]:
    """The example envelopes, each under an event_id of its own."""
    envelopes = orjson.loads(fixture("gatewayapi/messaging-api-webhook-events-thirdparty.json"))
    return [{**envelope, "event_id": f"{envelope['event_id'][:-2]}{i:02d}"} for i, envelope in enumerate(envelopes)]


def test_every_event_type_ends_as_a_row(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    sent = published_events()
    for envelope in sent:
        post(ingress_client, PATH, envelope)
    drain()
    assert rows(db, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0
    got = {r["provider_event_id"]: r for r in rows(db, "SELECT * FROM events WHERE provider = 'gatewayapi'")}
    by_type = {envelope["event_type"]: got[envelope["event_id"]] for envelope in sent}
    assert {t: (r["kind"], r["phone"], r["body"], r["event_type"]) for t, r in by_type.items()} == {
        "message.status.sms": ("status", "+4512345678", None, None),
        "message.status.rcs": ("status", "+4512345678", None, None),
        "user-message.text.sms": ("inbound", "+4512345678", "Hello World", None),
        "user-message.text.rcs": ("inbound", "+4512345678", "Hello world!", None),
        "user-message.location.rcs": ("event", "+4512345678", None, "user-message.location.rcs"),
        "user-message.file.rcs": ("event", "+4512345678", None, "user-message.file.rcs"),
    }
    assert by_type["user-message.text.rcs"]["keyword_outcome"] == "none"
    assert by_type["user-message.location.rcs"]["payload"]["event"]["content"]["latitude"] == 55.6806024
    [status] = rows(db, "SELECT * FROM message_status WHERE provider = 'gatewayapi'")
    assert (status["recipient"], status["status"]) == ("+4512345678", "delivered")


def test_an_rcs_stop_is_an_opt_out_text(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    """An RCS text's content is a plain string: its STOP is read, once however often it is delivered."""
    rcs_text = next(e for e in published_events() if e["event_type"] == "user-message.text.rcs")
    stop = {**rcs_text, "event": {**rcs_text["event"], "content": "STOP"}}
    for _ in range(3):
        post(ingress_client, PATH, stop)
    drain()
    assert rows(db, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0
    [event] = rows(db, "SELECT * FROM events")
    assert (event["kind"], event["phone"], event["body"]) == ("inbound", "+4512345678", "STOP")
    assert (event["keyword"], event["keyword_outcome"]) == ("stop", "opt_out")
    # It names nothing of ours to scope it by: the opt-out stops everything, once.
    [change] = rows(db, "SELECT subject, scope, new_state FROM consent_changes")
    assert (change["subject"], change["scope"], change["new_state"]) == ("+4512345678", "*", "opted_out")


def test_an_unscoped_start_reopens_nothing(ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    rcs_text = next(e for e in published_events() if e["event_type"] == "user-message.text.rcs")
    post(ingress_client, PATH, {**rcs_text, "event": {**rcs_text["event"], "content": "START"}})
    drain()
    [event] = rows(db, "SELECT keyword_outcome, consent, scope FROM events")
    assert (event["keyword_outcome"], event["scope"]) == ("opt_in", None)
    assert rows(db, "SELECT * FROM consent") == []
