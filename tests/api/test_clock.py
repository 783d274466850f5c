"""The revocation clock: receive → commit of each opt-out (workers), and what still waits (API /metrics)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from shared.settings import Settings
from tests.deploy.test_manifests import need_tool
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, post
from workers.context import WorkerContext

pytestmark = pytest.mark.integration


@pytest.fixture
def scraper(settings: Settings, tokens: ApiTokens, clean: psycopg.Connection) -> Iterator[TestClient]:
    with TestClient(create_app(settings, tokens), client=("127.0.0.1", 50000)) as client:
        yield client


def gauge(text: str, queue: str) -> float:
    line = next(line for line in text.splitlines()
                if line.startswith(f'hookstream_consent_unapplied_opt_out_age_seconds{{queue="{queue}"}}'))
    return float(line.split()[-1])


def test_what_waits_and_how_long_an_opt_out_took(scraper: TestClient, ingress_client: TestClient, drain: Drain,
                                                 worker_context: WorkerContext) -> None:
    assert scraper.get("/metrics").status_code == 200  # no token needed from an allowed address
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("STOP", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("stop sending me these", ref="b", to="4000"),
                                             "timeUtc": "2025-09-03T09:00:00"})
    waiting = scraper.get("/metrics").text
    assert gauge(waiting, "stream") > 0 and gauge(waiting, "review") == 0
    drain()
    after = scraper.get("/metrics").text
    assert gauge(after, "stream") == 0 and gauge(after, "review") > 0  # the possible opt-out waits for a person
    registry = worker_context.metrics.revocation
    samples = {s.name: s.value for m in registry.collect() for s in m.samples if s.labels.get("source") == "keyword"}
    assert samples["hookstream_consent_revocation_seconds_count"] == 1
    promtool = need_tool("promtool", "prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=after, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_metrics_only_for_allowed_addresses(settings: Settings, tokens: ApiTokens, clean: psycopg.Connection) -> None:
    with TestClient(create_app(settings, tokens), client=("203.0.113.7", 50000)) as client:
        response = client.get("/metrics")
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
