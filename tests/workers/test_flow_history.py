"""The dispatcher's flow sample against real servers, and the dashboard's charts of it."""

from __future__ import annotations

import psycopg
import pytest
import redis
from starlette.testclient import TestClient

from shared import flow_history
from shared.settings import Settings
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import gw_dlr, post
from workers import flow_history as sampler

pytestmark = pytest.mark.integration


def test_a_sample_holds_the_streams_figures(ingress_client: TestClient, drain: Drain, db: psycopg.Connection,
                                            settings: Settings, redis_client: redis.Redis) -> None:
    for msg in range(3):
        post(ingress_client, "/webhooks/gatewayapi", gw_dlr("DELIVERED", 100, msg=msg))
    drain()
    post(ingress_client, "/webhooks/gatewayapi", gw_dlr("DELIVERED", 100, msg=9))  # appended, not read yet
    sampler.sample(redis_client, settings)
    [(_, fields)] = redis_client.xrange(flow_history.key(settings.key_prefix))
    sample = flow_history.decode(fields)
    assert (sample["added"], sample["lag"], sample["pending"]) == (4, 1, 0)
    assert sample["events"] is not None  # the last full minute's, maybe 0 at a minute's edge
