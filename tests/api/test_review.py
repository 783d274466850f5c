"""The possible_opt_out queue decided by a person: an opt_out applies through the workers' rules
and is audited with the token's label (never the token); dismiss only empties the queue."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import pytest
from starlette.testclient import TestClient

from shared.keywords import POLICY_VERSION
from tests.api.conftest import BARE, SECRET, get_json, post_json
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, post, rows

pytestmark = pytest.mark.integration
NUMBER = "+31612345678"


def queued(api: TestClient) -> list[dict[str, object]]:
    return get_json(api, "/v1/consent/review")["items"]  # type: ignore[no-any-return]


def decide(api: TestClient, event_id: str, decision: str, status: int = 200, **kwargs: object) -> dict[str, object]:
    return post_json(api, f"/v1/consent/review/{quote(event_id, safe=':')}", {"decision": decision}, status=status,
                     **kwargs)  # type: ignore[no-any-return]


def test_an_opt_out_decision_applies_and_is_audited(api: TestClient, ingress_client: TestClient, drain: Drain,
                                                    clean: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("don't stop", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    drain()
    [item] = queued(api)
    assert (item["subject"], item["scope"], item["provider"], item["body"]) == (NUMBER, "3669", "cm", "don't stop")
    assert get_json(api, f"/v1/consent/{NUMBER}?scope=3669")["allowed"] is True

    made = decide(api, str(item["event_id"]), "opt_out")
    assert (made["decision"], made["decided_by"], made["repeated"]) == ("opt_out", "alice", False)
    change = made["change"]
    assert isinstance(change, dict)
    assert (change["subject"], change["scope"], change["old_state"], change["new_state"], change["outcome"]) == (
        NUMBER, "3669", None, "opted_out", "opt_out")
    assert change["event_id"] == item["event_id"] and change["decided_by"] == "alice"
    assert change["occurred_at"] == "2025-09-03T08:00:00Z"  # the text's time: a later START still wins
    assert queued(api) == []
    assert get_json(api, f"/v1/consent/{NUMBER}?scope=3669")["allowed"] is False

    [audit] = rows(clean, "SELECT * FROM consent_changes")
    assert (audit["decided_by"], audit["event_key"]) == ("alice", item["event_id"])
    assert (audit["source"], audit["actor"], audit["inbound_text"], audit["policy_version"]) == (
        "review", "alice", item["body"], POLICY_VERSION)
    assert audit["stream_id"] and audit["archive_key"].endswith("/" + audit["stream_id"])
    [decision] = rows(clean, "SELECT * FROM review_decisions")
    assert (decision["decided_by"], decision["change_id"]) == ("alice", audit["id"])
    dump = str(rows(clean, "SELECT * FROM consent_changes")) + str(rows(clean, "SELECT * FROM review_decisions"))
    assert SECRET not in dump and BARE not in dump

    again = decide(api, str(item["event_id"]), "opt_out")  # a retry: the same answer, nothing new
    assert again["repeated"] is True and again["change"] == change
    assert len(rows(clean, "SELECT * FROM consent_changes")) == 1
    conflict = decide(api, str(item["event_id"]), "dismiss", status=409)
    assert (conflict["error"], conflict["decision"], conflict["decided_by"]) == ("conflict", "opt_out", "alice")

    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", ref="b"))  # the person changes their mind later
    drain()
    assert get_json(api, f"/v1/consent/{NUMBER}?scope=3669")["allowed"] is True


def test_dismiss_only_empties_the_queue(api: TestClient, ingress_client: TestClient, drain: Drain,
                                        clean: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("I want to unsubscribe", ref="a"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("stpo", ref="b"))
    drain()
    items = queued(api)
    assert len(items) == 2
    made = decide(api, str(items[0]["event_id"]), "dismiss",
                  headers={"authorization": f"Bearer {BARE}"})
    assert made["decided_by"].startswith("token-") and made["change"] is None  # type: ignore[union-attr]
    assert [i["event_id"] for i in queued(api)] == [items[1]["event_id"]]
    assert rows(clean, "SELECT * FROM consent_changes") == [] and rows(clean, "SELECT * FROM consent") == []
    assert len(rows(clean, "SELECT * FROM consent_review")) == 1  # the view the README documents agrees


def test_an_opt_out_older_than_a_start_changes_nothing(api: TestClient, ingress_client: TestClient, drain: Drain,
                                                        clean: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("don't stop", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("START", ref="b"), "timeUtc": "2025-09-03T09:00:00"})
    drain()
    [item] = queued(api)
    made = decide(api, str(item["event_id"]), "opt_out")
    assert made["change"] is None and made["decision"] == "opt_out"
    assert get_json(api, f"/v1/consent/{NUMBER}?scope=3669")["state"] == "opted_in"
    assert queued(api) == []


def test_review_paging(api: TestClient, ingress_client: TestClient, drain: Drain) -> None:
    for i in range(5):
        post(ingress_client, "/webhooks/cm/mo", cm_mo("don't stop", sender=f"+3161234567{i}", ref=str(i)))
    drain()
    seen: list[object] = []
    since = None
    while True:
        page = get_json(api, "/v1/consent/review", params={"limit": 2} | ({"since": since} if since else {}))
        seen += [item["event_id"] for item in page["items"]]
        since = page["next"]
        if not page["has_more"]:
            break
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize("path, body, status", [
    ("/v1/consent/review/cm:inbound:h:nothing", {"decision": "opt_out"}, 404),
    ("/v1/consent/review/x", {"decision": "maybe"}, 422),
    ("/v1/consent/review/x", {"decision": "opt_out", "why": "because"}, 422),
    ("/v1/consent/review/x", {}, 422),
    ("/v1/consent/review/x", [], 422),
    ("/v1/consent/review/x", b"nope", 400),
])
def test_bad_decisions(path: str, body: object, status: int, api: TestClient) -> None:
    error = post_json(api, path, body, status=status)
    assert error["error"] and (status == 404 or error["detail"])


def test_only_possible_opt_outs_can_be_decided(api: TestClient, ingress_client: TestClient, drain: Drain,
                                               clean: psycopg.Connection) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello"))
    drain()
    [event] = rows(clean, "SELECT dedupe_key FROM events")
    decide(api, event["dedupe_key"], "opt_out", status=404)


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=%C2%B2", "since=garbage", "since=r1.",
                                   "sinc=r1.MA"])
def test_bad_review_parameters(query: str, api: TestClient) -> None:
    get_json(api, f"/v1/consent/review?{query}", status=422)
