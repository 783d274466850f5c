"""503 while Redis is down (the provider retries), 200 again once it is back; nothing half-stored."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import redis
from starlette.testclient import TestClient

from hookstream.embedded import RedisServer
from ingress.app import create_app
from shared.settings import Settings

BODY = b'{"subscriberId": "s1", "cguid": "c1", "status": "sent", "datetime": "2024-03-25 20:01:58"}'


def test_503_while_redis_is_down_then_200(redis_server: object) -> None:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-outage-"))).start()
    try:
        settings = Settings(redis_url=server.url)
        with TestClient(create_app(settings), client=("127.0.0.1", 1)) as client:
            assert client.post("/webhooks/mx2", content=BODY).status_code == 200
            server.stop()
            started = time.monotonic()
            assert client.post("/webhooks/mx2", content=BODY).status_code == 503
            assert time.monotonic() - started < 3, "a 503 must come quickly, not after a hang"
            assert client.get("/readyz").status_code == 503
            server.start()
            assert client.post("/webhooks/mx2", content=BODY).status_code == 200
            assert client.get("/readyz").status_code == 200
        # AOF kept the first append across the restart.
        assert redis.Redis.from_url(server.url).xlen("hookstream:raw") == 2
    finally:
        server.stop()
