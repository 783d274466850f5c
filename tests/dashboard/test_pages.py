"""The dashboard inside the API app, through HTTP (in-process), against real Redis and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from typing import Any

import psycopg
import pytest
import redis
from starlette.testclient import TestClient

from api.auth import ApiTokens
from api.dashboard.app import DATA_PATHS, PARTIAL_PATHS, STATIC_FILES
from api.dashboard.session import COOKIE
from hookstream import stats, status
from shared.display import UNSAFE
from shared.settings import Settings
from tests.dashboard.conftest import (
    AUTH,
    OTHER,
    SECRET,
    combined_app,
    login,
    send_traffic,
)
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import rows

pytestmark = pytest.mark.integration
AGES = ("stream_oldest_age_s", "pending_oldest_age_s", "pending_oldest_idle_s")
JSON = {"accept": "application/json"}


def steady(report: dict[str, Any]) -> dict[str, Any]:
    """A status report without the ages, its own or its shards', which grow between two readings."""
    kept = {k: v for k, v in report.items() if k not in AGES}
    if isinstance(kept.get("shards"), list):
        kept["shards"] = [steady(shard) for shard in kept["shards"]]
    return kept


def review_items(client: TestClient) -> list[dict[str, Any]]:
    return client.get("/dashboard/data/consent").json()["review"]["items"]  # type: ignore[no-any-return]


# -- logging in --------------------------------------------------------------------------------------


def test_login_sets_a_signed_httponly_strict_cookie(web: TestClient) -> None:
    first = web.get("/")
    assert first.status_code == 303 and first.headers["location"] == "/login"
    form = web.get("/login")
    assert form.status_code == 200 and 'name="token"' in form.text and 'type="password"' in form.text
    wrong = web.post("/login", data={"token": "not-a-token"})
    assert wrong.status_code == 401 and "not one of HOOKSTREAM_API_TOKENS" in wrong.text
    assert COOKIE not in wrong.headers.get("set-cookie", "")
    right = web.post("/login", data={"token": SECRET})
    assert right.status_code == 303 and right.headers["location"] == "/"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "samesite=strict" in cookie.lower() and SECRET not in cookie
    page = web.get("/")
    assert page.status_code == 200 and ">ops<" in page.text  # the label, never the token
    assert SECRET not in page.text
    assert web.get("/login").status_code == 303  # logged in already


def test_a_bare_token_logs_in_under_its_derived_label(web: TestClient, tokens: ApiTokens) -> None:
    login(web, OTHER)
    (label,) = [lbl for lbl in tokens.labels if lbl != "ops"]
    assert f">{label}<" in web.get("/").text


def test_data_and_partials_need_a_session_or_a_bearer_token(web: TestClient) -> None:
    paths = [f"/dashboard/{kind}/{s}" for kind in ("data", "partial") for s in ("flow", "deliverability", "consent")]
    for path in paths:
        assert web.get(path).status_code == 401, path
        assert web.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401, path
        assert web.get(path, headers=AUTH).status_code == 200, path
    web.cookies.set(COOKIE, "forged.value")
    assert web.get(paths[0]).status_code == 401
    assert web.get("/dashboard/dead-letters").status_code == 303
    web.cookies.clear()
    login(web)
    for path in paths:
        assert web.get(path).status_code == 200, path


def test_a_session_ends_when_its_token_is_removed(settings: Settings, web: TestClient) -> None:
    login(web)
    cookie = web.cookies.get(COOKIE)
    app, dash = combined_app(settings, ApiTokens.parse(f"someone-else:{OTHER}"), signer=web_signer(web))
    try:
        with TestClient(app, follow_redirects=False) as other:
            other.cookies.set(COOKIE, cookie)
            assert other.get("/dashboard/data/flow").status_code == 401
    finally:
        dash.close()


def web_signer(web: TestClient) -> Any:
    """The signer of the app behind `web` (the dashboard routes' bound methods know their Dashboard)."""
    for route in web.app.router.routes:  # type: ignore[attr-defined]
        endpoint = getattr(route, "endpoint", None)
        if getattr(endpoint, "__self__", None) is not None and hasattr(endpoint.__self__, "signer"):
            return endpoint.__self__.signer
    raise AssertionError("no dashboard route")


def test_the_api_routes_still_need_their_bearer_token(web: TestClient) -> None:
    login(web)
    assert web.get("/v1/consent/review").status_code == 401  # a session cookie is not an API credential
    assert web.get("/v1/consent/review", headers=AUTH).status_code == 200
    assert web.get("/openapi.json").status_code == 200


def test_every_dashboard_answer_says_nosniff(web: TestClient) -> None:
    """Pages, partials, JSON, redirects, the handlers' own errors and static files, signed in or not."""
    static = [f"/dashboard/static/{name}" for name in STATIC_FILES]
    gets = ["/", "/login", "/login?notice=logged_out", "/dashboard/dead-letters", "/dashboard/dead-letters?id=x",
            "/dashboard/dead-letters?id=1", *DATA_PATHS, *PARTIAL_PATHS, *static]
    posts = [("/login", {"data": {"token": "wrong"}}), ("/logout", {}),
             ("/dashboard/review", {"data": {"decision": "dismiss"}}),
             ("/dashboard/review", {"content": b"[", "headers": {"content-type": "application/json"}})]

    def answers() -> list[tuple[str, Any]]:
        return ([(path, web.get(path)) for path in gets] + [(path, web.get(path, headers=AUTH)) for path in gets]
                + [(path, web.post(path, **options)) for path, options in posts]
                + [(path, web.post(path, **{**options, "headers": {**options.get("headers", {}), **AUTH, **JSON}}))
                   for path, options in posts])

    signed_out = answers()
    login(web)
    seen = signed_out + answers()
    assert {answer.status_code for _, answer in seen} >= {200, 303, 400, 401, 404, 422}
    for path, answer in seen:
        assert answer.headers.get("x-content-type-options") == "nosniff", (path, answer.status_code)
        if path in DATA_PATHS and answer.status_code == 200:
            assert answer.headers["content-type"] == "application/json"
        if path not in static:
            assert answer.headers["cache-control"] == "no-store", (path, answer.status_code)


def test_a_malformed_origin_or_content_length_is_refused_not_a_500(web: TestClient) -> None:
    assert web.post("/login", data={"token": SECRET}, headers={"origin": "http://["}).status_code == 403
    too_long = {"content-length": "1" * 5000, "content-type": "application/x-www-form-urlencoded"}
    assert web.post("/login", content=f"token={SECRET}".encode(), headers=too_long).status_code == 401
    csrf = login(web)
    for origin in ("http://[", "http://[::1"):
        refused = web.post("/dashboard/review", data={"csrf": csrf, "event_id": "x", "decision": "dismiss"},
                           headers={"origin": origin, **JSON})
        assert refused.status_code == 403 and refused.json()["error"] == "csrf"


def test_security_headers_and_static_files(web: TestClient) -> None:
    login(web)
    page = web.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    styles = re.findall(r'<link rel="stylesheet" href="([^"]+)"', page.text)
    assert scripts and styles and all(u.startswith("/dashboard/static/") for u in scripts + styles)
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline: the CSP allows none
    js = web.get(scripts[0])
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert web.get(styles[0]).headers["content-type"].startswith("text/css")
    assert "http://" not in js.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in js.text


# -- empty states ------------------------------------------------------------------------------------


def test_empty_states_say_what_to_do(web: TestClient, redis_client: redis.Redis) -> None:
    login(web)
    page = web.get("/").text
    assert 'id="no-traffic"' in page and "No traffic yet" in page
    assert "curl -i -X POST http://127.0.0.1:8000/webhooks/cm/mo" in page
    assert 'id="no-deliverability"' in page and "/webhooks/smsmode/status" in page
    assert 'id="review-empty"' in page and "Nothing to review" in page


# -- the numbers -------------------------------------------------------------------------------------


def test_flow_matches_status_and_postgres(web: TestClient, ingress_client: TestClient, drain: Drain,
                                          settings: Settings, db: psycopg.Connection) -> None:
    send_traffic(ingress_client, drain)
    login(web)
    flow = web.get("/dashboard/data/flow").json()
    assert flow["errors"] == []
    assert steady(flow["status"]) == steady(status.collect(settings))
    assert flow["status"]["stream_length"] == 15 and flow["status"]["dead_letters"] == 1
    expected: dict[tuple[str, str], int] = {}
    for r in rows(db, "SELECT provider, kind, count(*) AS n FROM events GROUP BY 1, 2"):
        expected[(r["provider"], r["kind"])] = r["n"]
    for r in rows(db, "SELECT provider, count(*) AS n FROM dead_letters WHERE requeued_at IS NULL GROUP BY 1"):
        expected[(r["provider"], "dead_letter")] = r["n"]
    shown = {(s["provider"], s["outcome"]): s["total"] for s in flow["per_minute"]["series"]}
    assert shown == expected
    assert flow["per_minute"]["providers"] == ["cm", "gatewayapi", "mx2", "smsmode"]
    (newest,) = flow["dead_letters"]["newest"]
    assert newest["provider"] == "mx2" and "not valid JSON" in newest["reason"]
    page = web.get("/").text
    assert 'id="no-traffic"' not in page
    assert re.search(r'data-status="lag".*?<dd>0</dd>', page, re.S)
    assert re.search(r'data-status="dead_letters".*?<dd>1</dd>', page, re.S)
    assert f'href="/dashboard/dead-letters?id={newest["id"]}"' in page
    assert page.count(' data-chart=') == 4 + 2 + 1  # flow per provider, deliverability per provider, consent


def test_deliverability_matches_hookstream_stats(web: TestClient, ingress_client: TestClient, drain: Drain,
                                                 settings: Settings) -> None:
    send_traffic(ingress_client, drain)
    login(web)
    shown = web.get("/dashboard/data/deliverability").json()
    cli = stats.to_json(stats.fetch(settings.database_url_or_default(), 14, None), 14, None)
    import json

    totals = json.loads(cli)["totals"]
    assert shown["by_provider"] == totals
    by_provider = {r["provider"]: r for r in shown["by_provider"]}
    assert (by_provider["smsmode"]["delivered"], by_provider["smsmode"]["failed"], by_provider["smsmode"]["expired"],
            by_provider["smsmode"]["rejected"], by_provider["smsmode"]["sent"]) == (2, 1, 1, 1, 1)
    senders = {(r["provider"], r["sender"]): r["total"] for r in shown["by_sender"]}
    assert senders == {("gatewayapi", ""): 3, ("smsmode", "36034"): 3, ("smsmode", "INFO"): 3}
    page = web.get("/").text
    assert re.search(r'<tr data-provider="smsmode" data-sender="INFO">.*?data-key="rate">0.0%<', page, re.S)


def test_consent_counts_and_review_queue_match_postgres(web: TestClient, ingress_client: TestClient, drain: Drain,
                                                        db: psycopg.Connection) -> None:
    send_traffic(ingress_client, drain)
    login(web)
    consent = web.get("/dashboard/data/consent").json()
    changes = rows(db, "SELECT new_state, count(*) AS n FROM consent_changes GROUP BY 1")
    by_state = {r["new_state"]: r["n"] for r in changes}
    assert consent["total_opt_outs"] == by_state.get("opted_out", 0) == 1
    assert consent["total_opt_ins"] == by_state.get("opted_in", 0) == 1
    assert consent["opt_outs"][-1] == 1 and consent["opt_ins"][-1] == 1
    queue = rows(db, "SELECT event_key, body FROM consent_review ORDER BY id")
    assert [(i["event_key"], i["body"]) for i in consent["review"]["items"]] == [
        (q["event_key"], q["body"]) for q in queue]
    assert consent["review"]["count"] == len(queue) == 2
    page = web.get("/").text
    for q in queue:
        assert f'<tr data-event-id="{q["event_key"]}">' in page


# -- deciding --------------------------------------------------------------------------------------


def test_a_decision_needs_the_csrf_token_and_writes_the_audit_row(web: TestClient, ingress_client: TestClient,
                                                                  drain: Drain, db: psycopg.Connection) -> None:
    send_traffic(ingress_client, drain)
    csrf = login(web)
    first, second = review_items(web)
    form = {"event_id": first["event_key"], "decision": "opt_out"}
    assert web.post("/dashboard/review", data=form, headers=JSON).status_code == 403  # no token
    assert web.post("/dashboard/review", data={**form, "csrf": "wrong"}, headers=JSON).status_code == 403
    foreign = web.post("/dashboard/review", data=form,
                       headers={**JSON, "x-csrf-token": csrf, "origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert rows(db, "SELECT * FROM review_decisions") == []
    made = web.post("/dashboard/review", data=form, headers={**JSON, "x-csrf-token": csrf})
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["decision"] == "opt_out" and body["decided_by"] == "ops" and body["change"]["new_state"] == "opted_out"
    (audit,) = rows(db, "SELECT * FROM consent_changes WHERE event_key = %s", first["event_key"])
    assert (audit["subject"], audit["scope"], audit["new_state"], audit["decided_by"]) == (
        first["subject"], first["scope"], "opted_out", "ops")
    assert [i["event_key"] for i in review_items(web)] == [second["event_key"]]
    again = web.post("/dashboard/review", data={**form, "decision": "dismiss"}, headers={**JSON, "x-csrf-token": csrf})
    assert again.status_code == 409 and again.json()["decided_by"] == "ops"  # decided already, otherwise
    assert "decided already" in again.json()["detail"]
    # Without JavaScript: the form's hidden field, a redirect back with a fixed notice.
    plain = web.post("/dashboard/review", data={"event_id": second["event_key"], "decision": "dismiss", "csrf": csrf})
    assert plain.status_code == 303 and plain.headers["location"] == "/?notice=dismiss#consent"
    assert "Dismissed." in web.get("/?notice=dismiss").text
    assert review_items(web) == []
    assert rows(db, "SELECT decision, decided_by FROM review_decisions ORDER BY decided_at") == [
        {"decision": "opt_out", "decided_by": "ops"}, {"decision": "dismiss", "decided_by": "ops"}]


def test_a_bearer_client_decides_without_csrf(web: TestClient, ingress_client: TestClient, drain: Drain,
                                              db: psycopg.Connection) -> None:
    send_traffic(ingress_client, drain)
    item = web.get("/dashboard/data/consent", headers=AUTH).json()["review"]["items"][0]
    made = web.post("/dashboard/review", json={"event_id": item["event_key"], "decision": "dismiss"},
                    headers={**AUTH, **JSON})
    assert made.status_code == 200 and made.json()["decided_by"] == "ops"
    bad = web.post("/dashboard/review", json={"event_id": item["event_key"], "decision": "maybe"},
                   headers={**AUTH, **JSON})
    assert bad.status_code == 422
    assert web.post("/dashboard/review", json={"event_id": "x", "decision": "dismiss"}, headers=JSON).status_code == 401


def test_logout_needs_the_csrf_token(web: TestClient) -> None:
    csrf = login(web)
    assert web.post("/logout", data={}).headers["location"] == "/?notice=csrf"
    out = web.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login?notice=logged_out"
    assert web.get("/").status_code == 303


def test_the_routes_alone_decide_on_a_connection_of_their_own(settings: Settings, tokens: ApiTokens,
                                                                ingress_client: TestClient, drain: Drain,
                                                                clean: psycopg.Connection) -> None:
    """Without the API app around them (no API pool in the lifespan state), through the same API code."""
    from starlette.applications import Starlette

    from api.dashboard import Dashboard

    send_traffic(ingress_client, drain)
    dash = Dashboard(settings, tokens, cache_ttl_s={"flow": 0, "deliverability": 0, "consent": 0})
    try:
        with TestClient(Starlette(routes=dash.routes()), follow_redirects=False) as client:
            item = client.get("/dashboard/data/consent", headers=AUTH).json()["review"]["items"][0]
            made = client.post("/dashboard/review", json={"event_id": item["event_key"], "decision": "opt_out"},
                               headers={**AUTH, **JSON})
            assert made.status_code == 200, made.text
            assert client.get("/v1/consent/review", headers=AUTH).status_code == 404  # no API here
    finally:
        dash.close()
    (audit,) = rows(clean, "SELECT decided_by, new_state FROM consent_changes WHERE event_key = %s", item["event_key"])
    assert audit == {"decided_by": "ops", "new_state": "opted_out"}


# -- dead letters ----------------------------------------------------------------------------------


def test_dead_letter_details(web: TestClient, ingress_client: TestClient, drain: Drain, db: psycopg.Connection) -> None:
    send_traffic(ingress_client, drain)
    login(web)
    (letter,) = rows(db, "SELECT id, reason FROM dead_letters")
    listing = web.get("/dashboard/dead-letters")
    assert listing.status_code == 200 and f'<tr data-id="{letter["id"]}">' in listing.text
    detail = web.get(f"/dashboard/dead-letters?id={letter['id']}")
    assert detail.status_code == 200 and "{not json" in detail.text and "not valid JSON" in detail.text
    assert f"hookstream dead-letters requeue {letter['id']}" in detail.text
    assert web.get("/dashboard/dead-letters?id=99999").status_code == 404
    assert web.get("/dashboard/dead-letters?id=abc").status_code == 422


def test_dead_letter_text_shows_controls_and_bidi_escaped(web: TestClient, db: psycopg.Connection) -> None:
    hostile = "\x1b[31m\u202eevil\u2069\x9b\u2028"
    [letter] = rows(db, "INSERT INTO dead_letters (stream_id, provider, feed, method, reason, body, query, headers,"
                        " content_type, client) VALUES ('1-1', 'mx2', 'webhook', 'POST', %s, %s, '', %s, %s, '')"
                        " RETURNING id", f"parse error: {hostile}", "{\u202eevil\u2069}".encode(),
                    json.dumps({"x-note": hostile}), f"text/plain{hostile}")
    shown = "\\x1b[31m\\u202eevil\\u2069\\x9b\\u2028"
    pages = [web.get(path, headers=AUTH).text for path in (
        "/dashboard/dead-letters", f"/dashboard/dead-letters?id={letter['id']}", "/dashboard/partial/flow")]
    for page in pages:
        assert not UNSAFE.search(page.replace("\n", "")) and f"parse error: {shown}" in page
    assert f"text/plain{shown}" in pages[1] and "{\\u202eevil\\u2069}" in pages[1]
    assert "\\u001b[31m\\u202eevil" in pages[1]  # the headers' JSON: JSON's own escape, then ours


@pytest.mark.parametrize("raw", [
    "\u00b2", "\u0661\u0662", "\uff11",  # digits to str.isdigit(), refused or misread by int()
    "1" * 5000,  # past int()'s 4,300-digit limit
    "9223372036854775808", "99999999999999999999",  # past Postgres' bigint
    "0", "-1", "+1", " 1", "1.0", "1e3", "0x1", "abc", "\x00",
])
def test_an_id_that_cannot_be_one_is_422_never_500(web: TestClient, raw: str) -> None:
    answer = web.get("/dashboard/dead-letters", params={"id": raw}, headers=AUTH)
    assert answer.status_code == 422 and "Not a dead-letter id" in answer.text


def test_a_well_formed_id_that_is_not_there_is_404(web: TestClient) -> None:
    for raw in ("1", "007", "9223372036854775807"):
        answer = web.get("/dashboard/dead-letters", params={"id": raw}, headers=AUTH)
        assert answer.status_code == 404 and "No dead letter" in answer.text, raw


# -- sources down --------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_postgres_or_redis_down_is_shown_not_a_500(settings: Settings, tokens: ApiTokens,
                                                  db: psycopg.Connection) -> None:
    port = closed_port()
    for broken, source in ((dataclasses.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{port}/x"),
                            "postgres:"),
                           (dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{port}/0"), "redis:")):
        app, dash = combined_app(broken, tokens, cache_ttl_s={"flow": 0, "deliverability": 0, "consent": 0},
                                 pool_timeout_s=0.3)
        try:
            with TestClient(app, follow_redirects=False, raise_server_exceptions=True) as client:
                flow = client.get("/dashboard/data/flow", headers=AUTH)
                assert flow.status_code == 200
                assert any(e.startswith(source) for e in flow.json()["errors"])
                assert any(e.startswith(source) for e in flow.json()["status"]["errors"])
                page = client.get("/dashboard/partial/flow", headers=AUTH)
                assert page.status_code == 200 and source in page.text
                whole = client.get("/", headers=AUTH)
                assert whole.status_code == 200 and source in whole.text
                if source == "postgres:":
                    for name in ("deliverability", "consent"):
                        errors = client.get(f"/dashboard/data/{name}", headers=AUTH).json()["errors"]
                        assert errors[0].startswith(source)
                    assert client.get("/dashboard/dead-letters", headers=AUTH).status_code == 503
                else:
                    assert flow.json()["per_minute"] is not None  # Postgres still answers
        finally:
            dash.close()
