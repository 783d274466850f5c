"""Wrong bearer tokens are limited per client address (a token bucket): past the burst, 429 with
Retry-After and the token is not even looked at; every failure is logged with the address, never a
secret or a label."""

from __future__ import annotations

import logging

import pytest
from starlette.testclient import TestClient

from api.auth import FailureLimit
from tests.api.conftest import SECRET


def test_the_bucket_allows_a_burst_then_one_try_per_interval() -> None:
    limit = FailureLimit(burst=3, per_s=0.5)
    for _ in range(3):
        assert limit.retry_after_s("a", 100.0) == 0
        limit.failed("a", 100.0)
    assert limit.retry_after_s("a", 100.0) == 2
    assert limit.retry_after_s("b", 100.0) == 0  # per address
    assert limit.retry_after_s("a", 101.0) == 1
    assert limit.retry_after_s("a", 102.0) == 0  # one more try after 1/per_s
    limit.failed("a", 102.0)
    assert limit.retry_after_s("a", 102.0) == 2


def test_a_flood_of_addresses_is_bounded() -> None:
    limit = FailureLimit(burst=1, per_s=0.01, max_clients=100)
    for i in range(1000):
        limit.failed(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limit._buckets) == 100
    assert limit.retry_after_s("10.0.3.231", 0.0) > 0  # the newest are remembered


@pytest.mark.integration
def test_wrong_tokens_are_limited_and_logged(api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    api.headers.pop("authorization", None)
    wrong = {"authorization": "Bearer not-the-token-0123456789"}
    with caplog.at_level(logging.WARNING, logger="hookstream.api.auth"):
        for _ in range(FailureLimit().burst):
            assert api.get("/v1/consent/changes", headers=wrong).status_code == 401
    refused = api.get("/v1/consent/changes", headers=wrong)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json() == {"error": "too many wrong tokens"}
    # from that address even a right token waits: the bucket stops the guessing, not one guess
    assert api.get("/v1/consent/changes", headers={"authorization": f"Bearer {SECRET}"}).status_code == 429
    failures = [r.getMessage() for r in caplog.records if r.name == "hookstream.api.auth"]
    assert len(failures) == FailureLimit().burst
    assert all(m == "wrong API token from testclient" for m in failures)
    assert "not-the-token" not in caplog.text and SECRET not in caplog.text


@pytest.mark.integration
def test_no_token_at_all_is_not_counted(api: TestClient) -> None:
    api.headers.pop("authorization", None)
    for _ in range(3 * int(FailureLimit().burst)):
        assert api.get("/v1/consent/changes").status_code == 401
    assert api.get("/v1/consent/changes", headers={"authorization": f"Bearer {SECRET}"}).status_code == 200
