"""The dashboard's page and data endpoints with 1,000,000 events in Postgres.

    python -m bench.dashboard [--events 1000000] [--runs 20] [--database-url URL --redis-url URL]

Without URLs it starts a throw-away PostgreSQL and redis-server (as the tests do); with them, it
EMPTIES the hookstream tables and the Redis database there first. It loads, by SQL
(generate_series), in one go:

- `events`: N rows over four providers, in receive order as the pipeline writes them: 70 % status
  reports, 20 % inbound texts (0.5 % of them `possible_opt_out`, a fifth of those decided), 7 %
  channel events, 3 % consent events; 10 % received in the last hour (~28 per second), the rest
  over the 14 days before;
- `message_status`: 0.4 × N messages over 30 days, 20 senders, the usual mix of final statuses;
- `consent_changes` 30,000 over 30 days; `dead_letters` 2,000 (200 in the last hour);
- Redis: 10,000 stream entries, a consumer group with 2,000 of them pending.

Then it serves the dashboard (the same routes `hookstream api` mounts) with uvicorn on a free port,
logs in through the form, and times every page and endpoint over real HTTP, twice: with the
section cache off (every request runs its queries) and with the shipped cache (2 s flow, 5 s
consent, 30 s deliverability, kept warm by a background thread while someone watches), requests
`--gap` seconds apart so that the background refreshes run meanwhile; `first_ms` is the first
request on a fresh process (cold cache). JSON on stdout; a table on stderr. A benchmark reports;
it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import uvicorn
from redis import Redis
from starlette.applications import Starlette

from api.auth import ApiTokens
from api.dashboard.app import CACHE_TTL_S, DATA_PATHS, PARTIAL_PATHS, Dashboard
from hookstream.embedded import PostgresServer, RedisServer, free_port
from hookstream.migrate import migrate
from shared.settings import Settings

TOKEN = "bench-token-0123456789abcdef"
TABLES = "events, message_status, consent, consent_changes, dead_letters, review_decisions"
PATHS = ("/", *PARTIAL_PATHS, *DATA_PATHS, "/dashboard/dead-letters")

EVENTS_SQL = """
INSERT INTO events (dedupe_key, provider, feed, kind, message_ref, phone, phone_raw, counterpart, body, status,
                    provider_status, keyword, keyword_outcome, scope, occurred_at, received_at, stream_id, payload,
                    normalizer_version)
SELECT 'bench:' || i,
       p.provider, CASE WHEN k.kind = 'status' THEN 'status' ELSE 'mo' END, k.kind,
       'msg-' || (i / 3), '+316' || lpad((i %% 200000)::text, 8, '0'), '06' || lpad((i %% 200000)::text, 8, '0'),
       '3669', CASE WHEN k.kind = 'inbound' THEN 'hello ' || i END,
       CASE WHEN k.kind = 'status' THEN (ARRAY['delivered','delivered','delivered','sent','failed'])[1 + i %% 5] END,
       CASE WHEN k.kind = 'status' THEN 'DELIVERED' END,
       CASE WHEN k.kind = 'inbound' AND i %% 1000 = 75 THEN 'stop' END,
       CASE WHEN k.kind = 'inbound' THEN CASE WHEN i %% 1000 = 75 THEN 'possible_opt_out'
                                               WHEN i %% 33 = 0 THEN 'opt_out' ELSE 'none' END END,
       CASE WHEN k.kind IN ('inbound', 'consent') THEN '3669' END,
       r.at - interval '2 seconds', r.at, (extract(epoch FROM r.at) * 1000)::bigint || '-' || (i %% 1000),
       '{}'::jsonb, 1
FROM generate_series(1, %(n)s) AS i
CROSS JOIN LATERAL (SELECT (ARRAY['cm','cm','gatewayapi','smsmode','mx2','cm','gatewayapi','smsmode'])[1 + i %% 8]
                    AS provider) p
CROSS JOIN LATERAL (SELECT CASE WHEN i %% 100 < 70 THEN 'status' WHEN i %% 100 < 90 THEN 'inbound'
                                WHEN i %% 100 < 97 THEN 'event' ELSE 'consent' END AS kind) k
CROSS JOIN LATERAL (SELECT CASE WHEN i > %(n)s * 0.9
                                THEN now() - interval '1 hour' + (i - %(n)s * 0.9) / (%(n)s * 0.1) * interval '1 hour'
                                ELSE now() - interval '1 hour' - interval '14 days'
                                     + i / (%(n)s * 0.9) * interval '14 days'
                           END - random() * interval '2 seconds' AS at) r
"""
STATUS_SQL = """
INSERT INTO message_status (provider, message_ref, recipient, status, status_rank, status_at, order_at, received_at,
                            counterpart, event_key)
SELECT (ARRAY['cm','gatewayapi','smsmode','mx2'])[1 + i %% 4], 'msg-' || i, '+316' || lpad((i %% 200000)::text, 8, '0'),
       s.status, CASE WHEN s.status IN ('queued') THEN 0 WHEN s.status = 'sent' THEN 1 ELSE 2 END,
       t.at, t.at, t.at, 'sender-' || (i %% 20), 'bench:s:' || i
FROM generate_series(1, %(n)s) AS i
CROSS JOIN LATERAL (SELECT CASE WHEN i %% 100 < 85 THEN 'delivered' WHEN i %% 100 < 90 THEN 'failed'
                                WHEN i %% 100 < 93 THEN 'expired' WHEN i %% 100 < 95 THEN 'rejected'
                                WHEN i %% 100 < 99 THEN 'sent' ELSE 'queued' END AS status) s
CROSS JOIN LATERAL (SELECT now() - interval '30 days' + i::float8 / %(n)s * interval '30 days'
                           - random() * interval '1 hour' AS at) t
"""
CHANGES_SQL = """
INSERT INTO consent_changes (event_key, subject, scope, old_state, new_state, outcome, keyword, provider, occurred_at,
                             received_at)
SELECT 'bench:c:' || i, '+316' || lpad(i::text, 8, '0'), '3669', NULL,
       CASE WHEN i %% 3 = 0 THEN 'opted_in' ELSE 'opted_out' END, CASE WHEN i %% 3 = 0 THEN 'opt_in' ELSE 'opt_out' END,
       'stop', 'cm', t.at, t.at
FROM generate_series(1, 30000) AS i
CROSS JOIN LATERAL (SELECT now() - interval '30 days' + i / 30000.0 * interval '30 days' AS at) t
"""
DEAD_SQL = """
INSERT INTO dead_letters (stream_id, provider, feed, method, reason, body, query, headers, content_type, client,
                          received_at, first_seen, last_seen)
SELECT 'dl-' || i, 'mx2', 'webhook', 'POST', 'body is not valid JSON: ' || (i %% 7), '\\x7b7b'::bytea, ''::bytea,
       '{}'::jsonb, 'application/json', '127.0.0.1', t.at, t.at, t.at
FROM generate_series(1, 2000) AS i
CROSS JOIN LATERAL (SELECT CASE WHEN i > 1800 THEN now() - (2001 - i) / 200.0 * interval '1 hour'
                                ELSE now() - interval '14 days' + i / 1800.0 * interval '14 days' END AS at) t
"""
DECIDED_SQL = """
INSERT INTO review_decisions (event_key, decision, decided_by)
SELECT dedupe_key, 'dismiss', 'bench' FROM events WHERE keyword_outcome = 'possible_opt_out' AND id %% 5 = 0
"""


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load(database_url: str, events: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
        for name, sql, params in (("events", EVENTS_SQL, {"n": events}),
                                  ("message_status", STATUS_SQL, {"n": int(events * 0.4)}),
                                  ("consent_changes", CHANGES_SQL, {}), ("dead_letters", DEAD_SQL, {}),
                                  ("review_decisions", DECIDED_SQL, {})):
            started = time.perf_counter()
            conn.execute(sql, params)  # type: ignore[arg-type]
            timings[name] = round(time.perf_counter() - started, 1)
            log(f"loaded {name} in {timings[name]} s")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        timings["vacuum_analyze"] = round(time.perf_counter() - started, 1)
    return timings


def load_redis(redis: Redis, settings: Settings) -> None:
    redis.flushdb()
    pipe = redis.pipeline(transaction=False)
    for i in range(10_000):
        pipe.xadd(settings.stream, {"v": "1", "provider": "cm", "feed": "mo", "body": f"bench {i}"})
    pipe.execute()
    redis.xgroup_create(settings.stream, settings.group, id="0")
    redis.xreadgroup(settings.group, "bench-consumer", {settings.stream: ">"}, count=2000)


class Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread: leave the main thread's signals alone
        pass


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    port = free_port()
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                   loop="uvloop", http="httptools", proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_paths(base: str, runs: int, gap_s: float = 0.0) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as client:
        login = client.post("/login", data={"token": TOKEN})
        assert login.status_code == 303, login.text
        for path in PATHS:
            seconds: list[float] = []
            for _ in range(runs):
                time.sleep(gap_s)
                started = time.perf_counter()
                response = client.get(path)
                seconds.append(time.perf_counter() - started)
                assert response.status_code == 200, (path, response.status_code, response.text[:200])
            ms = [s * 1000 for s in seconds]
            results[path] = {"first_ms": round(ms[0], 1), "p50_ms": round(statistics.median(ms), 1),
                             "p95_ms": round(percentile(ms, 0.95), 1), "max_ms": round(max(ms), 1),
                             "bytes": len(response.content)}
    return results


def run(events: int = 1_000_000, runs: int = 20, database_url: str | None = None,
        redis_url: str | None = None, gap_s: float = 0.1) -> dict[str, Any]:
    with ExitStack() as stack:
        if database_url is None:
            postgres = PostgresServer(durable=False).start()
            stack.callback(postgres.remove)
            database_url = postgres.url
        if redis_url is None:
            folder = Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-"))
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
            server = RedisServer(folder).start()
            stack.callback(server.stop)
            redis_url = server.url
        migrate(database_url)
        settings = Settings(redis_url=redis_url, database_url=database_url)
        loaded = load(database_url, events)
        redis = Redis.from_url(redis_url)
        stack.callback(redis.close)
        load_redis(redis, settings)
        tokens = ApiTokens.parse(f"bench:{TOKEN}")
        results: dict[str, Any] = {"events": events, "runs": runs, "gap_s": gap_s, "load_s": loaded,
                                   "machine": {"python": platform.python_version(), "cpus": _cpus()}}
        for mode, ttl in (("uncached", dict.fromkeys(CACHE_TTL_S, 0.0)), ("cached", dict(CACHE_TTL_S))):
            dash = Dashboard(settings, tokens, cache_ttl_s=ttl)
            stack.callback(dash.close)
            app = Starlette(routes=dash.routes())
            with serve(app) as base:
                results[mode] = time_paths(base, runs, gap_s if mode == "cached" else 0.0)
        with psycopg.connect(database_url) as conn:
            results["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        return results


def _cpus() -> int:
    return os.cpu_count() or 0


def table(results: dict[str, Any]) -> str:
    lines = [f"{results['events']:,} events, {results['runs']} requests per path (ms over HTTP)",
             f"{'path':36} {'uncached p50':>12} {'p95':>7} {'max':>7} {'cached p50':>11} {'p95':>7} {'max':>7}"
             f" {'first':>7}"]
    for path in PATHS:
        u, c = results["uncached"][path], results["cached"][path]
        lines.append(f"{path:36} {u['p50_ms']:>12} {u['p95_ms']:>7} {u['max_ms']:>7} {c['p50_ms']:>11}"
                     f" {c['p95_ms']:>7} {c['max_ms']:>7} {c['first_ms']:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between cached requests (default 0.1)")
    parser.add_argument("--database-url", help="a PostgreSQL to use: its hookstream tables are EMPTIED first")
    parser.add_argument("--redis-url", help="a Redis to use: its database is FLUSHED first")
    args = parser.parse_args(argv)
    results = run(args.events, args.runs, args.database_url, args.redis_url, args.gap)
    log(table(results))
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
