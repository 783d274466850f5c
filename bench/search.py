"""Message search, the delivery timeline and the receipt expiry sweep on a large pre-filled database.

    python -m bench.search [--reports 3000000] [--requests 300]

The pre-fill (its own durable PostgreSQL, migrated, removed at the end): `reports` status reports in
status_history, three per message (queued, sent, then delivered or failed; one message in twenty
left at sent, the receipt that never came), over the last 90 days in the weekly partitions the
upkeep makes, and each message's current row in message_status; a fifth as many recipients as
messages, so a number has about five messages. INSERT … SELECT generate_series in chunks, through
every index, then VACUUM ANALYZE.

Figures, p50/p95/max in ms over `requests` random requests each, every answer a 200:
- the API (`GET /v1/messages/{provider}/{ref}`, `GET /v1/messages?phone=` in any notation, `?ref=`,
  `?provider=&since=` a day, and its second page by cursor), in-process behind Starlette's TestClient;
- the same queries as plain SQL (shared.timeline's), and the baseline of this run: message_status
  read by its primary key (ratio = each query's p50 over the baseline's);
- the expiry sweep (workers/expiry.py): one round of 5,000 due messages per provider, ms per round
  and µs per message expired, then a round with nothing due.
The query plans name the index each query uses. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from bench.common import write_json
from bench.workers import machine
from hookstream.embedded import PostgresServer
from hookstream.migrate import migrate
from shared import timeline
from shared.settings import PROVIDERS, Settings
from workers import expiry
from workers.event_partitions import STATUS_HISTORY

TOKEN = "bench-search-token-0123456789abcdef"
DAYS = 90
CHUNK = 500_000  # reports per INSERT

# Message m: provider m % 4, recipient m % people, sent at the m-th step of the 90 days.
HISTORY_SQL = """
INSERT INTO status_history (event_key, provider, message_ref, recipient, status, status_rank, provider_status,
                            provider_reason, reason, status_at, order_at, received_at, stream_id)
SELECT 'bench:' || i, (ARRAY['cm', 'smsmode', 'mx2', 'gatewayapi'])[1 + (i / 3) %% 4], 'm' || (i / 3),
       '+316' || lpad(((i / 3) %% %(people)s)::text, 8, '0'),
       CASE i %% 3 WHEN 0 THEN 'queued' WHEN 1 THEN 'sent' ELSE CASE WHEN (i / 3) %% 7 = 0 THEN 'failed'
            ELSE 'delivered' END END,
       1 + i %% 3, 'S' || i %% 3, NULL, NULL, t + (i %% 3) * interval '10 s', t + (i %% 3) * interval '10 s',
       t + (i %% 3) * interval '12 s', (extract(epoch FROM t)::bigint * 1000)::text || '-' || i %% 3
FROM (SELECT i, %(start)s::timestamptz + (i / 3) * %(step)s * interval '1 s' AS t
      FROM generate_series(%(low)s::bigint, %(high)s::bigint - 1) AS i) AS s
WHERE i %% 3 < 2 OR (i / 3) %% 20 <> 0
"""
STATUS_SQL = """
INSERT INTO message_status (provider, message_ref, recipient, status, status_rank, provider_status, reason, status_at,
                            order_at, received_at, event_key)
SELECT (ARRAY['cm', 'smsmode', 'mx2', 'gatewayapi'])[1 + m %% 4], 'm' || m, '+316' || lpad((m %% %(people)s)::text, 8, '0'),
       CASE WHEN m %% 20 = 0 THEN 'sent' WHEN m %% 7 = 0 THEN 'failed' ELSE 'delivered' END,
       CASE WHEN m %% 20 = 0 THEN 2 ELSE 3 END, 'S', NULL, t, t, t, 'bench:' || m
FROM (SELECT m, %(start)s::timestamptz + m * %(step)s * interval '1 s' AS t
      FROM generate_series(%(low)s::bigint, %(high)s::bigint - 1) AS m) AS s
"""


def prefill(url: str, reports: int, log: Callable[[str], None]) -> dict[str, Any]:
    messages = reports // 3
    people = max(1, messages // 5)
    now = datetime.now(UTC)
    start = now - timedelta(days=DAYS)
    params = {"people": people, "start": start, "step": DAYS * 86400 / max(messages, 1)}
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        STATUS_HISTORY.create_range(conn, start, now)
        for low in range(0, messages * 3, CHUNK):
            conn.execute(HISTORY_SQL, {**params, "low": low, "high": min(low + CHUNK, messages * 3)})
            log(f"status_history: {min(low + CHUNK, messages * 3):,} of {messages * 3:,}")
        for low in range(0, messages, CHUNK):
            conn.execute(STATUS_SQL, {**params, "low": low, "high": min(low + CHUNK, messages)})
        conn.execute("VACUUM ANALYZE status_history")
        conn.execute("VACUUM ANALYZE message_status")
        counts = conn.execute("SELECT (SELECT count(*) FROM status_history), (SELECT count(*) FROM message_status),"
                              " pg_total_relation_size('message_status')").fetchone()
        history_bytes = conn.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i"
                                     " JOIN pg_class c ON c.oid = i.inhrelid"
                                     " WHERE i.inhparent = 'status_history'::regclass").fetchone()
    assert counts is not None and history_bytes is not None
    return {"seconds": round(time.perf_counter() - started), "status_history_rows": counts[0],
            "message_status_rows": counts[1], "people": people, "message_status_bytes": counts[2],
            "status_history_bytes": int(history_bytes[0])}


def figures(ms: list[float]) -> dict[str, Any]:
    ordered = sorted(ms)
    return {"requests": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2), "max_ms": round(ordered[-1], 2)}


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    result = call()
    elapsed = (time.perf_counter() - started) * 1000
    if hasattr(result, "status_code"):
        assert result.status_code == 200, (result.status_code, result.text[:300])
    return elapsed


def notation(rng: random.Random, number: str) -> str:
    """A number as support pastes it: E.164, 00 or with spaces."""
    digits = number[1:]
    return rng.choice([number, f"00{digits}", f"+{digits[:2]} {digits[2:3]} {digits[3:7]} {digits[7:]}"])


def measure(url: str, messages: int, people: int, requests: int) -> dict[str, Any]:
    rng = random.Random(21)

    def message() -> tuple[str, str]:
        m = rng.randrange(messages)
        return PROVIDERS[m % 4], f"m{m}"  # the pre-fill's provider order

    def phone() -> str:
        return f"+316{rng.randrange(people):08d}"

    out: dict[str, Any] = {"sql": {}, "api": {}, "plans": {}}
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    with psycopg.connect(url, autocommit=True) as conn:
        def run(sql: str, params: Any) -> Callable[[], Any]:
            return lambda: conn.execute(sql, params).fetchall()

        cases: dict[str, Callable[[], tuple[str, Any]]] = {
            "baseline: message_status by primary key": lambda: (
                "SELECT * FROM message_status WHERE provider = %s AND message_ref = %s AND recipient = %s",
                (*message(), phone())),
            "timeline": lambda: (timeline.TIMELINE_SQL, message()),
            "search by phone": lambda: timeline.search_sql(timeline.Search(phone=phone())),
            "search by message id": lambda: timeline.search_sql(timeline.Search(message_ref=message()[1])),
            "search by provider, last day": lambda: timeline.search_sql(timeline.Search(
                provider=rng.choice(PROVIDERS), since=datetime.fromisoformat(since))),
        }
        for name, case in cases.items():
            for _ in range(10):
                sql, params = case()
                conn.execute(sql, params).fetchall()
            out["sql"][name] = figures([timed(run(*case())) for _ in range(requests)])
            sql, params = case()
            plan = conn.execute("EXPLAIN " + sql, params).fetchall()
            # Each partition has its own copy of an index: named by the parent's name without the week.
            out["plans"][name] = sorted({re.sub(r"_\d{8}", "", found) for row in plan
                                         for found in re.findall(r"using (\S+)", row[0])})
    base = out["sql"]["baseline: message_status by primary key"]["p50_ms"]
    out["sql_ratio_to_baseline_p50"] = {name: round(f["p50_ms"] / max(base, 1e-3), 1) for name, f in out["sql"].items()}

    settings = Settings(database_url=url)
    app = create_app(settings, ApiTokens.parse(f"bench:{TOKEN}"))
    with TestClient(app, headers={"authorization": f"Bearer {TOKEN}"}) as api:
        def show() -> Any:
            provider, ref = message()
            return api.get(f"/v1/messages/{provider}/{ref}")

        def by_phone() -> Any:
            return api.get("/v1/messages", params={"phone": notation(rng, phone())})

        def by_ref() -> Any:
            return api.get("/v1/messages", params={"ref": message()[1]})

        following: list[tuple[str, str]] = []

        def by_provider() -> Any:
            provider = rng.choice(PROVIDERS)
            response = api.get("/v1/messages", params={"provider": provider, "since": since})
            following[:] = [(provider, response.json()["next"])]
            return response

        def next_page() -> Any:
            provider, cursor = following[0]
            return api.get("/v1/messages", params={"provider": provider, "since": since, "cursor": cursor})

        for name, call in {"GET /v1/messages/{provider}/{ref}": show, "GET /v1/messages?phone=": by_phone,
                           "GET /v1/messages?ref=": by_ref, "GET /v1/messages?provider=&since=1d": by_provider}.items():
            for _ in range(10):
                call()
            out["api"][name] = figures([timed(call) for _ in range(requests)])
        pages = []
        for _ in range(requests):
            by_provider()
            pages.append(timed(next_page))
        out["api"]["GET /v1/messages?provider=&since=1d&cursor= (page 2)"] = figures(pages)
    return out


def sweep(url: str) -> dict[str, Any]:
    """One bounded round per provider with 72 h, then a round with nothing due."""
    expiry_s = dict.fromkeys(PROVIDERS, 72 * 3600)
    with psycopg.connect(url, autocommit=True) as conn:
        due = conn.execute("SELECT count(*) FROM message_status WHERE status IN ('queued', 'sent')"
                           " AND order_at < now() - interval '72 hours'").fetchone()
        started = time.perf_counter()
        done = expiry.sweep(conn, expiry_s)
        busy_ms = (time.perf_counter() - started) * 1000
        expired = sum(done.values())
        while sum(expiry.sweep(conn, expiry_s).values()):
            pass
        started = time.perf_counter()
        expiry.sweep(conn, expiry_s)
        idle_ms = (time.perf_counter() - started) * 1000
    return {"due_before": due[0] if due else None, "round_expired": expired, "round_ms": round(busy_ms, 1),
            "us_per_message": round(1000 * busy_ms / max(expired, 1), 1), "idle_round_ms": round(idle_ms, 2),
            "batch_per_provider": expiry.BATCH}


def run(*, reports: int = 3_000_000, requests: int = 300, log: Callable[[str], None] = print) -> dict[str, Any]:
    postgres = PostgresServer().start()
    try:
        migrate(postgres.url)
        log(f"pre-filling {reports:,} status reports")
        filled = prefill(postgres.url, reports, log)
        log(f"pre-filled in {filled['seconds']} s; measuring")
        results: dict[str, Any] = {"machine": machine(), "settings": {"reports": reports, "requests": requests,
                                                                      "postgres": "embedded PostgreSQL 15, initdb"
                                                                                  " defaults, fsync on"},
                                   "prefill": filled}
        results.update(measure(postgres.url, reports // 3, filled["people"], requests))
        results["expiry_sweep"] = sweep(postgres.url)
        return results
    finally:
        postgres.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=3_000_000, help="status reports pre-filled (3 per message)")
    parser.add_argument("--requests", type=int, default=300, help="requests per figure")
    parser.add_argument("--out", default="bench/out/search.json")
    args = parser.parse_args()
    write_json(Path(args.out), run(reports=args.reports, requests=args.requests,
                                   log=lambda line: print(line, file=sys.stderr, flush=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
