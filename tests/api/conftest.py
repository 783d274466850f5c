"""The consent API against the session's real Redis and PostgreSQL, with the workers' pipeline fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from shared.settings import Settings
from tests.workers.conftest import dispatcher, drain, ingress_client, settings, worker_context  # noqa: F401

SECRET = "alice-secret-0123456789abcdef"
BARE = "bare-secret-0123456789abcdef"
TOKENS = f"alice:{SECRET},{BARE}"
AUTH = {"authorization": f"Bearer {SECRET}"}


@pytest.fixture
def tokens() -> ApiTokens:
    return ApiTokens.parse(TOKENS)


@pytest.fixture
def clean(db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """`db` (emptied tables) plus the API's own table, emptied before and after: a decision left
    behind would hide an event of the same key from another test's review queue."""
    db.execute("TRUNCATE review_decisions")
    yield db
    db.execute("TRUNCATE review_decisions")


@pytest.fixture
def api(settings: Settings, tokens: ApiTokens, clean: psycopg.Connection) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(create_app(settings, tokens), headers=AUTH) as client:
        yield client


def get_json(client: TestClient, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = client.get(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def post_json(client: TestClient, path: str, body: Any, status: int = 200, **kwargs: Any) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    response = client.post(path, content=content, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()
