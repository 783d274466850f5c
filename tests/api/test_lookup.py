"""Single lookups through the real pipeline: STOP → not allowed, START → allowed, STOPALL, notations."""

from __future__ import annotations

import psycopg
import pytest
from starlette.testclient import TestClient

from tests.api.conftest import get_json
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, mx2, post

pytestmark = pytest.mark.integration
NUMBER = "+31612345678"


def test_stop_then_start_through_the_ingress(api: TestClient, ingress_client: TestClient, drain: Drain) -> None:
    before = get_json(api, f"/v1/consent/{NUMBER}?scope=3669")
    assert before == {"subject": NUMBER, "scope": "3669", "state": "unknown", "allowed": True, "changed_at": None,
                      "keyword": None, "provider": None, "event_id": None, "scopes": []}
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("STOP", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    drain()
    stopped = get_json(api, f"/v1/consent/{NUMBER}?scope=3669")
    assert (stopped["state"], stopped["allowed"], stopped["keyword"], stopped["provider"]) == (
        "opted_out", False, "stop", "cm")
    assert stopped["event_id"].startswith("cm:inbound:")
    assert stopped["scopes"] == [{"scope": "3669", "state": "opted_out", "changed_at": stopped["changed_at"]}]
    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", ref="b"))
    drain()
    started = get_json(api, f"/v1/consent/{NUMBER}?scope=3669")
    assert (started["state"], started["allowed"]) == ("opted_in", True)
    assert started["event_id"] != stopped["event_id"]


def test_stopall_blocks_every_scope(api: TestClient, ingress_client: TestClient, drain: Drain) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello", to="3669", ref="a"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOPALL", to="4000", ref="b"))
    drain()
    for scope in ("3669", "4000", "never-used"):
        found = get_json(api, f"/v1/consent/{NUMBER}", params={"scope": scope})
        assert (found["state"], found["allowed"]) == ("opted_out", False), scope
    anywhere = get_json(api, f"/v1/consent/{NUMBER}")
    assert (anywhere["scope"], anywhere["state"], anywhere["allowed"]) == (None, "opted_out", False)
    assert [s["scope"] for s in anywhere["scopes"]] == ["*"]


def test_without_scope_any_opt_out_is_not_allowed(api: TestClient, ingress_client: TestClient, drain: Drain) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", to="3669", ref="a"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("START", to="4000", ref="b"))
    drain()
    anywhere = get_json(api, f"/v1/consent/{NUMBER}")
    assert (anywhere["state"], anywhere["allowed"]) == ("opted_out", False)
    assert {s["scope"]: s["state"] for s in anywhere["scopes"]} == {"3669": "opted_out", "4000": "opted_in"}
    assert get_json(api, f"/v1/consent/{NUMBER}?scope=4000")["allowed"] is True


@pytest.mark.parametrize("notation", ["+31612345678", "0031612345678", "31612345678", "+31 6 1234 5678",
                                      "0031-6-12345678", " +31612345678 "])
def test_notations_are_one_subject(notation: str, api: TestClient, ingress_client: TestClient, drain: Drain) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP"))
    drain()
    found = get_json(api, f"/v1/consent/{notation}", params={"scope": "3669"})
    assert (found["subject"], found["allowed"]) == (NUMBER, False)


def test_mx2_subscriber_id_is_a_known_subject(api: TestClient, ingress_client: TestClient, drain: Drain) -> None:
    post(ingress_client, "/webhooks/mx2", mx2("optout", "2024-03-25 20:01:00", sub="xct7jy", cguid="C1"))
    post(ingress_client, "/webhooks/mx2", mx2("delivered", "2024-03-25 20:01:00", sub="only-a-status", cguid="C1"))
    drain()
    found = get_json(api, "/v1/consent/xct7jy?scope=C1")
    assert (found["subject"], found["state"], found["allowed"], found["provider"]) == ("xct7jy", "opted_out", False, "mx2")
    assert get_json(api, "/v1/consent/xct7jy?scope=C2")["allowed"] is True
    seen = get_json(api, "/v1/consent/only-a-status")  # a person of an event, never opted in or out
    assert (seen["state"], seen["allowed"]) == ("unknown", True)


@pytest.mark.parametrize("subject, reason", [
    ("hello-world", "not a phone number"), ("0612345678", "HOOKSTREAM_DEFAULT_REGION"), ("3669", "short code"),
    ("+12", "not a possible phone number"), ("x" * 65, "longer than 64"),
])
def test_neither_a_number_nor_a_known_id_is_422(subject: str, reason: str, api: TestClient) -> None:
    error = get_json(api, f"/v1/consent/{subject}", status=422)
    assert error["error"] == "invalid" and reason in error["detail"]


def test_a_number_never_seen_is_unknown_and_allowed(api: TestClient) -> None:
    found = get_json(api, "/v1/consent/+4587654321?scope=451204")
    assert (found["subject"], found["state"], found["allowed"]) == ("+4587654321", "unknown", True)


def test_national_numbers_with_a_default_region(settings, tokens, clean: psycopg.Connection) -> None:  # noqa: ANN001
    import dataclasses

    from api.app import create_app
    from tests.api.conftest import AUTH

    clean.execute("INSERT INTO consent (subject, scope, state, changed_at, confirmed_at, provider, event_key)"
                  " VALUES ('+31612345678', '3669', 'opted_out', now(), now(), 'cm', 'k1')")
    with TestClient(create_app(dataclasses.replace(settings, default_region="NL"), tokens), headers=AUTH) as client:
        found = get_json(client, "/v1/consent/06 12345678?scope=3669")
        assert (found["subject"], found["allowed"]) == (NUMBER, False)


def test_fixed_routes_win_over_a_subject_of_that_name(api: TestClient) -> None:
    response = api.get("/v1/consent/check")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json() == {"error": "method_not_allowed"}
    assert set(get_json(api, "/v1/consent/review")) == {"items", "next", "has_more"}
    assert set(get_json(api, "/v1/consent/changes")) == {"changes", "next", "has_more"}


def test_scope_in_both_notations(api: TestClient, clean: psycopg.Connection) -> None:
    clean.execute("INSERT INTO consent (subject, scope, state, changed_at, confirmed_at, provider, event_key)"
                  " VALUES ('+31612345678', '+3197010203040', 'opted_out', now(), now(), 'cm', 'k1')")
    for scope in ("+3197010203040", "003197010203040", "3197010203040"):
        assert get_json(api, f"/v1/consent/{NUMBER}", params={"scope": scope})["allowed"] is False, scope


def test_postgres_unreachable_is_a_503_not_a_500(tokens) -> None:  # noqa: ANN001
    from api.app import create_app
    from hookstream.embedded import free_port
    from shared.settings import Settings
    from tests.api.conftest import AUTH

    down = Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1")
    with TestClient(create_app(down, tokens), headers=AUTH) as client:
        response = client.get(f"/v1/consent/{NUMBER}")
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"] == "unavailable"
        client.headers.pop("authorization")
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
