"""Bulk consent check: 100,000 subjects in one call, beside the same lookups one query per subject.

    python -m bench.consent [--subjects 100000] [--people 300000] [--per-subject 100000] [--database-url URL]

Without --database-url it starts a throw-away PostgreSQL (as the tests do); with one, it EMPTIES
consent and consent_changes there first. Figures (JSON on stdout, seconds):
- `http_cold`: POST /v1/consent/check through the app (JSON in, normalizing every subject, the one
  query, JSON out), on a fresh app: every number parsed with phonenumbers;
- `http_warm`: the same list again (a sender re-checking its list: normalized subjects remembered);
- `query_only`: the one set-based statement alone, subjects already normalized;
- `per_subject`: the same answers with one query per subject on one pooled connection (the
  naive design), and `per_subject_100k` scaled to the whole list when fewer were timed.
Each with a scope and without, the best of --repeat runs. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import time
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.testclient import TestClient

from api import queries
from api.app import create_app
from api.auth import ApiTokens
from hookstream.embedded import PostgresServer
from hookstream.migrate import migrate
from shared.settings import Settings

TOKEN = "bench-token-0123456789abcdef"


def seed(database_url: str, people: int) -> None:
    """`people` numbers with 1–3 consent rows each (a quarter of them opted out somewhere, some `*`)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE consent, consent_changes RESTART IDENTITY")
        conn.execute(
            "INSERT INTO consent (subject, scope, state, changed_at, confirmed_at, keyword, provider, event_key)"
            " SELECT '+316' || lpad(i::text, 8, '0'), s.scope,"
            " CASE WHEN (i + s.n) %% 4 = 0 THEN 'opted_out' ELSE 'opted_in' END,"
            " now() - (i %% 1000) * interval '1 minute', now() - (i %% 1000) * interval '1 minute', 'stop', 'cm',"
            " 'bench:' || i || ':' || s.scope"
            " FROM generate_series(1, %s) AS i"
            " CROSS JOIN (VALUES (1, '3669'), (2, '4000'), (3, '*')) AS s(n, scope)"
            " WHERE s.n = 1 OR i %% s.n = 0 AND (s.n < 3 OR i %% 10 = 0)",
            (people,),
        )
        conn.execute("ANALYZE consent")


def subjects(count: int, people: int) -> list[str]:
    """Half the list are people with consent rows, half never seen; in the notations senders use."""
    rng = random.Random(1)
    out = []
    for _ in range(count):
        n = rng.randrange(1, people + 1) if rng.random() < 0.5 else people + rng.randrange(1, 10**7)
        digits = f"316{n:08d}"
        out.append(rng.choice([f"+{digits}", f"00{digits}", digits, f"+31 6 {digits[3:7]} {digits[7:]}"]))
    return out


def timed_post(client: TestClient, body: dict[str, Any]) -> tuple[float, list[dict[str, Any]]]:
    started = time.perf_counter()
    response = client.post("/v1/consent/check", content=orjson.dumps(body))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text[:300]
    return elapsed, response.json()["results"]


async def query_only(database_url: str, values: list[str], scope: str | None) -> float:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as pool:
        async with pool.connection() as conn:
            await queries.bulk_states(conn, values[:1000], [True] * 1000, None if scope is None else [scope])  # warm-up
            started = time.perf_counter()
            await queries.bulk_states(conn, values, [True] * len(values), None if scope is None else [scope])
            return time.perf_counter() - started


async def per_subject(database_url: str, values: list[str]) -> float:
    """One round trip per subject, on one connection: the lookup a naive client loop would do."""
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as pool:
        async with pool.connection() as conn:
            started = time.perf_counter()
            for value in values:
                await queries.subject_rows(conn, value)
            return time.perf_counter() - started


def run(database_url: str, count: int, people: int, per_subject_count: int, repeat: int = 3) -> dict[str, Any]:
    seed(database_url, people)
    listed = subjects(count, people)
    settings = Settings(database_url=database_url)
    tokens = ApiTokens.parse(f"bench:{TOKEN}")
    figures: dict[str, Any] = {"subjects": count, "consent_rows": 0, "python": platform.python_version(),
                               "machine": platform.machine()}
    with psycopg.connect(database_url) as conn:
        figures["consent_rows"] = conn.execute("SELECT count(*) FROM consent").fetchone()[0]  # type: ignore[index]
        figures["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    for scope in ("3669", None):
        name = f"scope_{scope}" if scope else "any_scope"
        body: dict[str, Any] = {"subjects": listed} | ({"scope": scope} if scope else {})
        colds, warms = [], []
        for _ in range(repeat):  # the best of a few runs: this machine's other load comes and goes
            with TestClient(create_app(settings, tokens), headers={"authorization": f"Bearer {TOKEN}"}) as client:
                timed_post(client, {"subjects": listed[:100]})  # pool and code paths warm, memo nearly empty
                cold, results = timed_post(client, body)
                warm, again = timed_post(client, body)
            assert results == again
            colds.append(cold)
            warms.append(warm)
        values = [r["subject"] for r in results]
        queries_s = [asyncio.run(query_only(database_url, values, scope)) for _ in range(repeat)]
        figures[name] = {
            "http_cold": round(min(colds), 3), "http_warm": round(min(warms), 3), "query_only": round(min(queries_s), 3),
            "http_cold_runs": [round(x, 3) for x in colds], "opted_out": sum(1 for r in results if not r["allowed"]),
        }
    timed = min(per_subject_count, count)
    seconds = asyncio.run(per_subject(database_url, values[:timed]))  # normalized, as the API would ask
    figures["per_subject"] = {"subjects": timed, "seconds": round(seconds, 3),
                              "per_subject_100k": round(seconds * 100_000 / timed, 2)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=300_000)
    parser.add_argument("--per-subject", type=int, default=100_000, help="subjects timed one query each")
    parser.add_argument("--database-url", help="use this database (its consent tables are EMPTIED)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure; the best is reported")
    args = parser.parse_args()
    server = None
    url = args.database_url
    if url is None:
        server = PostgresServer(durable=False).start()
        url = server.url
    try:
        migrate(url)
        print(orjson.dumps(run(url, args.subjects, args.people, args.per_subject, args.repeat), option=orjson.OPT_INDENT_2).decode())
    finally:
        if server is not None:
            server.remove()


if __name__ == "__main__":
    main()
