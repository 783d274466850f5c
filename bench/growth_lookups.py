"""The consent API's lookups and the dashboard's sections on a big database: p50/p95 per route.

Run by bench/postgres_growth.py on its largest database. The real app (`api.app.create_app`, the
dashboard mounted as `hookstream api` mounts it) runs in-process behind Starlette's TestClient, with
the dashboard's section cache off, so every request runs its queries. Besides the events already
there it seeds what the API and the dashboard read beside them, at the sizes of bench/consent.py and
bench/dashboard.py: 300,000 people with consent rows, 30,000 consent changes, `messages` message
status rows over 30 days, 2,000 dead letters, a stream of 10,000 entries with 2,000 pending.

Subjects are realistic: a third with consent rows, a third numbers the pre-fill's events hold (seen,
no consent), a third never seen; in the notations senders use (E.164, 00, with spaces).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
from redis import Redis
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from api.dashboard.app import CACHE_TTL_S, Dashboard
from bench import consent, dashboard
from shared.settings import Settings

PEOPLE = 300_000


def subject(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        n = rng.randrange(1, PEOPLE + 1)  # has consent rows (bench.consent.seed)
    elif kind == 1:
        n = rng.randrange(PEOPLE + 1, 10_000_000)  # the pre-fill's numbers: seen as the person of events
    else:
        n = rng.randrange(90_000_000, 100_000_000)  # never seen
    digits = f"316{n:08d}"
    return rng.choice([f"+{digits}", f"00{digits}", f"+31 6 {digits[3:7]} {digits[7:]}"])


def seed(database_url: str, redis: Redis, settings: Settings, messages: int, log: Callable[[str], None]) -> None:
    started = time.perf_counter()
    consent.seed(database_url, PEOPLE)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE message_status, dead_letters")
        conn.execute(dashboard.CHANGES_SQL, {})
        conn.execute(dashboard.STATUS_SQL, {"n": messages})
        conn.execute(dashboard.DEAD_SQL, {})
        for table in ("consent", "consent_changes", "message_status", "dead_letters"):
            conn.execute(f"VACUUM ANALYZE {table}")
    dashboard.load_redis(redis, settings)
    log(f"lookups: seeded in {time.perf_counter() - started:.0f}s")


def figures(ms: list[float]) -> dict[str, Any]:
    return {"requests": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(dashboard.percentile(ms, 0.95), 1), "max_ms": round(max(ms), 1)}


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return elapsed


def measure(settings: Settings, *, lookups: int = 300, checks: int = 100, pages: int = 300,
            dashboard_runs: int = 30) -> dict[str, Any]:
    """p50/p95/max per route; every answer must be a 200."""
    rng = random.Random(18)
    tokens = ApiTokens.parse(f"bench:{dashboard.TOKEN}")
    dash = Dashboard(settings, tokens, cache_ttl_s=dict.fromkeys(CACHE_TTL_S, 0.0))
    app = create_app(settings, tokens, dashboard=dash)
    out: dict[str, Any] = {}
    try:
        with TestClient(app, headers={"authorization": f"Bearer {dashboard.TOKEN}"}) as api:
            for _ in range(20):  # the pool's connections and the code paths warm
                api.get(f"/v1/consent/{quote(subject(rng), safe='')}")
            out["GET /v1/consent/{subject}"] = figures(
                [timed(lambda: api.get(f"/v1/consent/{quote(subject(rng), safe='')}")) for _ in range(lookups)])
            out["POST /v1/consent/check (1,000 subjects)"] = figures([timed(lambda: api.post(
                "/v1/consent/check", content=orjson.dumps({"subjects": [subject(rng) for _ in range(1000)]})))
                for _ in range(checks)])
            since: list[str] = []

            def page() -> Any:
                response = api.get("/v1/consent/changes", params={"limit": 100, **({"since": since[0]} if since else {})})
                since[:] = [response.json()["next"]]
                return response

            out["GET /v1/consent/changes (pages of 100)"] = figures([timed(page) for _ in range(pages)])
        with TestClient(app, base_url="http://127.0.0.1") as browser:
            login = browser.post("/login", data={"token": dashboard.TOKEN}, follow_redirects=False)
            assert login.status_code == 303, login.text[:300]
            for path in dashboard.PATHS:
                out[f"GET {path}"] = figures([timed(partial(browser.get, path)) for _ in range(dashboard_runs)])
    finally:
        dash.close()
    return out


def over(results: dict[str, Any], target_ms: float = 200.0) -> list[str]:
    return [route for route, f in results.items() if f["p95_ms"] > target_ms]
