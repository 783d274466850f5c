"""Bulk consent check: 100,000 subjects in one call, beside the same lookups one query per subject;
importing 100,000 consent records; exporting a subject with 10,000 events.

    python -m bench.consent [--subjects 100000] [--people 300000] [--per-subject 100000] [--database-url URL]
                            [--parts check,import,export] [--imports 100000] [--export-events 10000]

Without --database-url it starts a throw-away PostgreSQL (as the tests do); with one, it EMPTIES
consent and consent_changes there first. Figures (JSON on stdout, seconds):
- `http_cold`: POST /v1/consent/check through the app (JSON in, normalizing every subject, the one
  query, JSON out), on a fresh app: every number parsed with phonenumbers;
- `http_warm`: the same list again (a sender re-checking its list: normalized subjects remembered);
- `http_cold_cpu`, `http_warm_cpu`: the CPU seconds this process spent in those calls (the app runs
  in it, Postgres does not): less moved by other load on the machine than the wall times;
- `query_only`: the one set-based statement alone, subjects already normalized;
- `per_subject`: the same answers with one query per subject on one pooled connection (the
  naive design), and `per_subject_100k` scaled to the whole list when fewer were timed.
Each with a scope and without, the best of --repeat runs.
- `import`: POST /v1/consent/records, 10,000 records a request (the most one takes), through the app:
  JSON, every subject normalized, the records stored, the rules applied, each change a link of its
  subject's hash chain (the insert trigger). Baseline in the same run: the same rows written by one
  INSERT into a table of consent_records' shape without rules or chain (`raw_insert_s`), and the ratio.
  Half the records are for people already in `consent`, a tenth of them opt-outs.
- `export`: GET /v1/subjects/{subject}/export of a subject with --export-events events (and 100
  consent changes), as JSON and as CSV, beside its events read alone by one SELECT (`events_query_s`).
A benchmark reports; it asserts nothing.
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

from api import queries, records
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
    elapsed, _, results = timed_post_cpu(client, body)
    return elapsed, results


def timed_post_cpu(client: TestClient, body: dict[str, Any]) -> tuple[float, float, list[dict[str, Any]]]:
    """Wall seconds, this process's CPU seconds (the app runs in it; Postgres does not), the results."""
    started, cpu = time.perf_counter(), time.process_time()
    response = client.post("/v1/consent/check", content=orjson.dumps(body))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert response.status_code == 200, response.text[:300]
    return elapsed, cpu, response.json()["results"]


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


def import_records(database_url: str, total: int, people: int) -> dict[str, Any]:
    """`total` records in requests of 10,000, then the same rows by one plain INSERT (the baseline)."""
    rng = random.Random(2)
    batch = records.MAX_RECORDS
    made = [{"id": f"bench-{i}", "subject": f"+316{rng.randrange(1, 2 * people):08d}", "scope": "3669",
             "state": "opted_out" if rng.random() < 0.1 else "opted_in",
             "occurred_at": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z", "source": "web_form",
             "evidence": {"version": "form-3", "ip": "203.0.113.9", "url": "https://example.com/join"}}
            for i in range(total)]
    settings = Settings(database_url=database_url)
    tokens = ApiTokens.parse(f"bench:{TOKEN}")
    seconds: list[float] = []
    changes = 0
    with TestClient(create_app(settings, tokens), headers={"authorization": f"Bearer {TOKEN}"}) as client:
        for start in range(0, total, batch):
            body = orjson.dumps({"records": made[start:start + batch]})
            started = time.perf_counter()
            response = client.post("/v1/consent/records", content=body)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text[:300]
            changes += response.json()["changes"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE raw_records (LIKE consent_records INCLUDING ALL)")
        started = time.perf_counter()
        for start in range(0, total, batch):
            part = made[start:start + batch]
            with conn.transaction():
                conn.execute(
                    "INSERT INTO raw_records (id, digest, import_id, subject, scope, state, occurred_at, source,"
                    " evidence, imported_by) SELECT id, '', 'raw', s, sc, st, t, src, e, 'bench' FROM unnest("
                    "%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::jsonb[])"
                    " AS u(id, s, sc, st, t, src, e)",
                    ([r["id"] for r in part], [r["subject"] for r in part], [r["scope"] for r in part],
                     [r["state"] for r in part], [r["occurred_at"] for r in part], [r["source"] for r in part],
                     [orjson.dumps(r["evidence"]).decode() for r in part]))
        raw = time.perf_counter() - started
        chains = conn.execute("SELECT count(DISTINCT subject) FROM consent_changes").fetchone()[0]  # type: ignore[index]
    total_s = sum(seconds)
    return {"records": total, "requests": len(seconds), "seconds": round(total_s, 3),
            "records_per_s": round(total / total_s), "request_s_max": round(max(seconds), 3),
            "changes": changes, "chains": chains, "raw_insert_s": round(raw, 3),
            "ratio_to_raw_insert": round(total_s / raw, 1)}


def export_subject(database_url: str, events: int, repeat: int) -> dict[str, Any]:
    """One subject with `events` events and 100 consent changes, exported as JSON and as CSV."""
    subject = "+31699999999"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (dedupe_key, provider, feed, kind, message_ref, phone, phone_raw, counterpart, body,"
            " status, provider_status, occurred_at, received_at, stream_id, payload, normalizer_version)"
            " SELECT 'bench:export:' || i, 'cm', 'status', 'status', 'ref-' || i, %s, %s, '3669', NULL, 'delivered',"
            " '2', now() - i * interval '1 minute', now() - i * interval '1 minute', i || '-0',"
            " jsonb_build_object('to', %s::text, 'reference', 'ref-' || i, 'status', 2), 1"
            " FROM generate_series(1, %s) AS i", (subject, subject, subject, events))
        conn.execute(
            "INSERT INTO consent_changes (event_key, subject, scope, old_state, new_state, outcome, keyword, provider,"
            " occurred_at, received_at, inbound_text) SELECT 'bench:change:' || i, %s, '3669', NULL,"
            " CASE WHEN i %% 2 = 0 THEN 'opted_out' ELSE 'opted_in' END, 'opt_out', 'stop', 'cm',"
            " now() - i * interval '1 hour', now() - i * interval '1 hour', 'STOP' FROM generate_series(1, 100) AS i",
            (subject,))
        conn.execute("ANALYZE events")
        started = time.perf_counter()
        conn.execute("SELECT * FROM events WHERE phone = %s ORDER BY received_at, id", (subject,)).fetchall()
        query_s = time.perf_counter() - started
    settings = Settings(database_url=database_url)
    tokens = ApiTokens.parse(f"bench:{TOKEN}")
    figures: dict[str, Any] = {"events": events, "changes": 100, "events_query_s": round(query_s, 3)}
    with TestClient(create_app(settings, tokens), headers={"authorization": f"Bearer {TOKEN}"}) as client:
        for kind in ("json", "csv"):
            runs = []
            for _ in range(repeat):
                started = time.perf_counter()
                response = client.get(f"/v1/subjects/{subject}/export", params={"format": kind})
                runs.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text[:300]
            figures[kind] = {"seconds": round(min(runs), 3), "bytes": len(response.content),
                             "ratio_to_events_query": round(min(runs) / query_s, 1)}
    return figures


PARTS = ("check", "import", "export")


def run(database_url: str, count: int, people: int, per_subject_count: int, repeat: int = 3,
        parts: tuple[str, ...] = PARTS, imports: int = 100_000, export_events: int = 10_000) -> dict[str, Any]:
    seed(database_url, people)
    figures: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    if "check" in parts:
        figures |= bulk_check(database_url, count, people, per_subject_count, repeat)
    if "import" in parts:
        figures["import"] = import_records(database_url, imports, people)
    if "export" in parts:
        figures["export"] = export_subject(database_url, export_events, repeat)
    return figures


def bulk_check(database_url: str, count: int, people: int, per_subject_count: int, repeat: int) -> dict[str, Any]:
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
        colds, warms, cold_cpus, warm_cpus = [], [], [], []
        for _ in range(repeat):  # the best of a few runs: this machine's other load comes and goes
            with TestClient(create_app(settings, tokens), headers={"authorization": f"Bearer {TOKEN}"}) as client:
                timed_post(client, {"subjects": listed[:100]})  # pool and code paths warm, memo nearly empty
                cold, cold_cpu, results = timed_post_cpu(client, body)
                warm, warm_cpu, again = timed_post_cpu(client, body)
            assert results == again
            colds.append(cold)
            warms.append(warm)
            cold_cpus.append(cold_cpu)
            warm_cpus.append(warm_cpu)
        values = [r["subject"] for r in results]
        queries_s = [asyncio.run(query_only(database_url, values, scope)) for _ in range(repeat)]
        figures[name] = {
            "http_cold": round(min(colds), 3), "http_warm": round(min(warms), 3), "query_only": round(min(queries_s), 3),
            "http_cold_cpu": round(min(cold_cpus), 3), "http_warm_cpu": round(min(warm_cpus), 3),
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
    parser.add_argument("--parts", default=",".join(PARTS), help="which figures: check, import, export")
    parser.add_argument("--imports", type=int, default=100_000, help="consent records imported")
    parser.add_argument("--export-events", type=int, default=10_000, help="events of the exported subject")
    args = parser.parse_args()
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    server = None
    url = args.database_url
    if url is None:
        server = PostgresServer(durable=False).start()
        url = server.url
    try:
        migrate(url)
        figures = run(url, args.subjects, args.people, args.per_subject, args.repeat, parts, args.imports,
                      args.export_events)
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    finally:
        if server is not None:
            server.remove()


if __name__ == "__main__":
    main()
