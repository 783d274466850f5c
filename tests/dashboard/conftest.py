"""The dashboard against the session's real Redis and PostgreSQL, with the workers' pipeline fixtures,
served inside the consent API app the way `hookstream api` serves it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from api.dashboard import Dashboard
from shared.settings import Settings
from tests.workers.conftest import Drain, dispatcher, drain, ingress_client, settings, worker_context  # noqa: F401
from tests.workers.test_pipeline import cm_mo, gw_dlr, post

SECRET = "dash-secret-0123456789abcdef"
OTHER = "other-secret-0123456789abcdef"
TOKENS = f"ops:{SECRET},{OTHER}"
AUTH = {"authorization": f"Bearer {SECRET}"}


def combined_app(settings: Settings, tokens: ApiTokens, **options: Any) -> tuple[Starlette, Dashboard]:  # noqa: F811
    """The API application with this dashboard (its test options: no caching) at `/`."""
    dash = Dashboard(settings, tokens, **options)
    return create_app(settings, tokens, dashboard=dash), dash


@pytest.fixture
def tokens() -> ApiTokens:
    return ApiTokens.parse(TOKENS)


@pytest.fixture
def clean(db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Emptied tables, the API's review decisions included (before and after)."""
    db.execute("TRUNCATE review_decisions")
    yield db
    db.execute("TRUNCATE review_decisions")


@pytest.fixture
def dashboard_app(settings: Settings, tokens: ApiTokens, clean: psycopg.Connection  # noqa: F811
                  ) -> Iterator[tuple[Starlette, Dashboard]]:
    app, dash = combined_app(settings, tokens, cache_ttl_s={"flow": 0, "deliverability": 0, "consent": 0},
                             ingress_port=8000)
    yield app, dash
    dash.close()


@pytest.fixture
def web(dashboard_app: tuple[Starlette, Dashboard]) -> Iterator[TestClient]:
    """A browser-like client (no token header); log in with `login(web)`."""
    with TestClient(dashboard_app[0], base_url="http://testserver", follow_redirects=False) as client:
        yield client


def login(client: TestClient, token: str = SECRET) -> str:
    """Logs in through the form; returns the session's CSRF token as the page shows it."""
    response = client.post("/login", data={"token": token})
    assert response.status_code == 303, response.text
    page = client.get("/")
    assert page.status_code == 200, page.text
    marker = '<meta name="csrf-token" content="'
    start = page.text.index(marker) + len(marker)
    return page.text[start:page.text.index('"', start)]


def send_traffic(client: TestClient, drain: Drain) -> None:  # noqa: F811
    """A little of everything the page shows: texts (a STOP, a START, an ambiguous one, plain ones), delivery
    reports with senders and final statuses, a body no normalizer reads (a dead letter)."""
    for i, text in enumerate(["STOP", "hello", "I want to unsubscribe", "START", "don't stop"]):
        post(client, "/webhooks/cm/mo", cm_mo(text, sender=f"+3161234567{i}", ref=f"ref-{i}"))
    now = int(time.time())
    for i, (status, sender) in enumerate([("DELIVERED", "36034"), ("DELIVERED", "36034"), ("UNDELIVERED", "36034"),
                                          ("EXPIRED", "INFO"), ("REJECTED", "INFO"), ("SENT", "INFO")]):
        post(client, "/webhooks/smsmode/status", {
            "messageId": f"m{i}", "direction": "MT", "from": sender, "recipient": {"to": "+33612345678"},
            "status": {"value": status, "deliveryDate": datetime.fromtimestamp(now, UTC).isoformat()}})
    for i, status in enumerate(["DELIVERED", "DELIVERED", "UNDELIVERABLE"]):
        post(client, "/webhooks/gatewayapi", gw_dlr(status, now, msg=2000 + i, msisdn=4587650000 + i))
    post(client, "/webhooks/mx2", b"{not json")
    drain()
