"""With the production caches (Flow read every 2 s, deliverability every 30 s), a deliverability
section cached while empty is not shown as "No delivery reports" beside the statuses Flow counts;
each section says when its figures were read."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
from starlette.testclient import TestClient

from api.auth import ApiTokens
from shared.settings import Settings
from tests.dashboard.conftest import AUTH, combined_app, send_traffic
from tests.workers.conftest import Drain

pytestmark = pytest.mark.integration


@pytest.fixture
def cached(settings: Settings, tokens: ApiTokens, clean: psycopg.Connection) -> Iterator[TestClient]:
    app, dash = combined_app(settings, tokens)  # the production TTLs
    with TestClient(app, base_url="http://testserver", headers=AUTH) as client:
        yield client
    dash.close()


def test_deliverability_follows_the_statuses_flow_shows(cached: TestClient, ingress_client: TestClient,
                                                        drain: Drain) -> None:
    assert cached.get("/dashboard/data/deliverability").json()["total"] == 0  # cached empty, for 30 s
    send_traffic(ingress_client, drain)
    flow = cached.get("/dashboard/data/flow").json()
    assert any(s["outcome"] == "status" and s["total"] for s in flow["per_minute"]["series"])
    assert cached.get("/dashboard/data/deliverability").json()["total"] > 0
    assert "No delivery reports" not in cached.get("/dashboard/partial/deliverability").text


def test_each_section_says_when_it_was_read(cached: TestClient) -> None:
    page = cached.get("/").text
    assert len(re.findall(r'class="section-updated" data-updated="\d\d:\d\d:\d\d"', page)) == 3
    for name in ("flow", "deliverability", "consent"):
        partial = cached.get(f"/dashboard/partial/{name}").text
        assert re.match(r'<p class="section-updated" data-updated="(\d\d:\d\d:\d\d)"', partial), name
        assert cached.get(f"/dashboard/data/{name}").json()["updated"]
