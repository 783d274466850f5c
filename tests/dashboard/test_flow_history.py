"""The dashboard's flow over the last hours, from the dispatcher's samples in Redis (real servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis
from starlette.testclient import TestClient

from shared import flow_history
from shared.settings import Settings
from tests.dashboard.conftest import AUTH, login

pytestmark = pytest.mark.integration


def test_the_flow_section_charts_the_last_hours(web: TestClient, settings: Settings,
                                                redis_client: redis.Redis) -> None:
    now = datetime.now(UTC)
    for minutes_ago, added, lag in ((30, 100, 0), (29, 400, 120), (28, 700, 10)):
        at = now - timedelta(minutes=minutes_ago)
        redis_client.xadd(flow_history.key(settings.key_prefix), flow_history.encode(
            {"at": at.isoformat(), "added": added, "lag": lag, "pending": 0, "events": 250, "latency_avg_ms": 35,
             "latency_max_ms": 90}), id=f"{int(at.timestamp() * 1000)}-0")
    history = web.get("/dashboard/data/flow", headers=AUTH).json()["history"]
    assert history["samples"] >= 1 and max(v or 0 for v in history["lag"]) == 120
    assert sum(v or 0 for v in history["added"]) == 600 and sum(v or 0 for v in history["events"]) == 750
    login(web)
    page = web.get("/").text
    assert 'id="flow-history-charts"' in page and page.count("data-chart=") >= 3


def test_no_samples_says_so(web: TestClient, settings: Settings, redis_client: redis.Redis) -> None:
    redis_client.delete(flow_history.key(settings.key_prefix))
    login(web)
    assert "No samples yet" in web.get("/").text
