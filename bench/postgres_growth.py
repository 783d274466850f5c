"""Does the worker stay fast as Postgres grows? The same pipeline on an empty database, then on one
pre-filled with millions of events.

    python -m bench.postgres_growth [--records 100000] [--prefill 10000000] [--rate 2000] [--paced-s 20]

For each state (empty, pre-filled), with `hookstream dispatch` + `hookstream worker -n 1` as real
processes (bench/workers.py):
- `drain`: a stream of `records` entries drained: entries/s, events/s, CPU µs per entry of each
  process tree, Postgres included;
- `paced`: entries appended at `rate`/s for `paced_s` seconds, each stamped with its append time:
  ingest-to-commit p50/p99 = the event row's created_at (its batch transaction's start, a few ms
  before its commit) minus that time.
The pre-fill is INSERT … SELECT generate_series, in chunks: events spread over the last 90 days (the
dedupe horizon, so every one of them has its key in event_keys too), each with a payload of the size
a status report has. Bytes on disk per event: events and event_keys, tables and indexes, over their
rows; measured on the pipeline's own rows and on the pre-fill. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis

from bench.common import postmaster_pid, write_json
from bench.payloads import records
from bench.workers import machine, remaining, run_pipeline
from hookstream.embedded import PostgresServer, RedisServer
from hookstream.migrate import migrate
from shared.settings import Settings
from workers.dispatch import Dispatcher

HORIZON_DAYS = 90
CHUNK = 1_000_000
# A status report's row: the columns a normalizer fills, a payload of ~200 bytes as providers send.
PREFILL_SQL = """
WITH made AS (
    INSERT INTO events (dedupe_key, provider, feed, kind, provider_event_id, message_ref, phone, phone_raw,
                        counterpart, status, provider_status, occurred_at, received_at, stream_id, payload,
                        normalizer_version)
    SELECT 'fill:status:h:' || md5(n::text), (ARRAY['cm', 'gatewayapi', 'smsmode', 'mx2'])[1 + n %% 4], 'status',
           'status', 'id-' || n, 'mt-' || n / 3, p, substr(p, 2), '3669', 'delivered', '2', t, t, n || '-0',
           jsonb_build_object('reference', 'mt-' || n / 3, 'to', p, 'received', t::text,
                              'status', jsonb_build_object('code', '2', 'errorCode', '', 'errorDescription', ''),
                              'customGrouping', 'campaign-' || n %% 1000),
           1
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n,
         LATERAL (SELECT '+316' || lpad(((n * 7919) %% 10000000)::text, 8, '0') AS p,
                         now() - make_interval(secs => (%(total)s - n) * %(span_s)s / %(total)s::float8) AS t) AS x
    RETURNING dedupe_key, received_at
)
INSERT INTO event_keys SELECT dedupe_key, received_at FROM made
"""
SIZE_SQL = ("SELECT (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c"
            " ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass),"
            " pg_total_relation_size('event_keys'), (SELECT count(*) FROM events)")


def prefill(database_url: str, total: int, log: Any) -> dict[str, Any]:
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for first in range(1, total + 1, CHUNK):
            last = min(first + CHUNK - 1, total)
            conn.execute(PREFILL_SQL, {"first": first, "last": last, "total": total, "span_s": HORIZON_DAYS * 86400})
            log(f"prefill: {last:,} of {total:,} events, {time.perf_counter() - started:.0f}s")
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE event_keys")
        conn.execute("CHECKPOINT")
    return {"events": total, "seconds": round(time.perf_counter() - started, 1)}


def disk(database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        events, keys, count = conn.execute(SIZE_SQL).fetchone()  # type: ignore[misc]
    return {"events_bytes": int(events or 0), "event_keys_bytes": int(keys or 0), "rows": int(count),
            "bytes_per_event": round((int(events or 0) + int(keys or 0)) / max(int(count), 1))}


def fill_stream(redis: Redis, stream: str, count: int, first: int) -> None:
    """`count` records of ids never used before (`first` on), stamped one ms apart up to now."""
    now_ms = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=False)
    for i, record in enumerate(records(count, first=first, start_ms=now_ms - count)):
        pipe.xadd(stream, record.to_fields())
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


@contextlib.contextmanager
def pipeline(env: dict[str, str], workers: int) -> Iterator[None]:
    cli = [sys.executable, "-m", "hookstream.cli"]
    procs = [subprocess.Popen(cli + ["worker", "-n", str(workers)], env=env),
             subprocess.Popen(cli + ["dispatch"], env=env)]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def paced(env: dict[str, str], settings: Settings, redis: Redis, rate: float, seconds: float,
          first: int) -> dict[str, Any]:
    """Append at `rate` for `seconds`, each record stamped at its append; p50/p99 of ingest-to-commit."""
    total = int(rate * seconds)
    made = list(records(total, first=first, start_ms=0))
    with pipeline(env, 1):
        time.sleep(2)  # the processes' start-up is not ingest latency
        sent_from = time.time()
        tick, i = 0.01, 0
        while i < total:
            due = min(total, int((time.time() - sent_from) * rate) + 1)
            pipe = redis.pipeline(transaction=False)
            for record in made[i:due]:
                stamped = dataclasses.replace(record, received_at_ms=int(time.time() * 1000))
                pipe.xadd(settings.stream, stamped.to_fields())
            pipe.execute()
            i = due
            time.sleep(tick)
        sent_until = time.time()
        elapsed = sent_until - sent_from
        deadline = time.time() + 120
        while remaining(redis, settings) > 0 and time.time() < deadline:
            time.sleep(0.05)
    with psycopg.connect(settings.database_url_or_default()) as conn:
        p50, p99, n = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP (ORDER BY lag),"
            " count(*) FROM (SELECT extract(epoch FROM created_at - received_at) * 1000 AS lag FROM events"
            " WHERE received_at >= to_timestamp(%s) AND received_at <= to_timestamp(%s)) l",
            (sent_from, sent_until + 0.1)).fetchone()  # type: ignore[misc]
    return {"entries": total, "rate_sent": round(total / elapsed), "events": int(n),
            "ingest_to_commit_ms": {"p50": round(float(p50 or 0), 1), "p99": round(float(p99 or 0), 1)}}


def events_count(settings: Settings) -> int:
    with psycopg.connect(settings.database_url_or_default()) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]


def measure(env: dict[str, str], settings: Settings, redis: Redis, postgres: PostgresServer, redis_pid: int,
            count: int, rate: float, paced_s: float, first: int, log: Any) -> dict[str, Any]:
    redis.flushdb()
    Dispatcher(settings, redis).ensure_group()
    fill_stream(redis, settings.stream, count, first)
    before = events_count(settings)
    drain = run_pipeline(env, settings, redis, count, 1,
                         servers={"redis": redis_pid, "postgres": postmaster_pid(postgres)})
    drain["events"] -= before  # run_pipeline counts the table's rows; the pre-fill is not this run's
    drain["events_per_s"] = round(drain["events"] / drain["seconds"])
    log(f"drain: {drain['events_per_s']:,} events/s, postgres {drain['cpu_us_per_entry'].get('postgres')} µs/entry")
    redis.flushdb()
    Dispatcher(settings, redis).ensure_group()
    pace = paced(env, settings, redis, rate, paced_s, first + count)
    log(f"paced: {pace['rate_sent']:,}/s, ingest-to-commit p99 {pace['ingest_to_commit_ms']['p99']} ms")
    return {"drain": drain, "paced": pace}


def run(*, records_n: int = 100_000, prefill_n: int = 10_000_000, rate: float = 2000.0, paced_s: float = 20.0,
        log: Any = print) -> dict[str, Any]:
    """The whole benchmark (its own Redis and a durable PostgreSQL)."""
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-")), appendfsync="everysec").start()
    postgres = PostgresServer().start()
    try:
        migrate(postgres.url)
        env = {**os.environ, "HOOKSTREAM_REDIS_URL": redis_server.url, "HOOKSTREAM_DATABASE_URL": postgres.url,
               "HOOKSTREAM_LOG_LEVEL": "WARNING"}
        settings = Settings.from_env(env)
        redis = Redis.from_url(redis_server.url)
        pid = redis_server.proc.pid  # type: ignore[union-attr]
        results: dict[str, Any] = {"machine": machine(), "settings": {
            "records": records_n, "prefill": prefill_n, "rate": rate, "paced_s": paced_s, "worker_processes": 1,
            "postgres": "embedded PostgreSQL 15, initdb defaults (shared_buffers 128MB), fsync on"}}
        log("empty database")
        results["empty"] = measure(env, settings, redis, postgres, pid, records_n, rate, paced_s, 0, log)
        results["empty"]["disk"] = disk(postgres.url)
        log(f"prefilling {prefill_n:,} events")
        results["prefill"] = prefill(postgres.url, prefill_n, log)
        results["prefill"]["disk"] = disk(postgres.url)
        log("pre-filled database")
        results["prefilled"] = measure(env, settings, redis, postgres, pid, records_n, rate, paced_s,
                                       10 * records_n, log)
        e, p = results["empty"], results["prefilled"]
        results["ratios"] = {
            "events_per_s_prefilled_vs_empty": round(p["drain"]["events_per_s"] / e["drain"]["events_per_s"], 3),
            "p99_prefilled_vs_empty": round(p["paced"]["ingest_to_commit_ms"]["p99"]
                                            / max(e["paced"]["ingest_to_commit_ms"]["p99"], 1e-3), 3),
            "postgres_cpu_us_prefilled_vs_empty": round(
                p["drain"]["cpu_us_per_entry"]["postgres"] / max(e["drain"]["cpu_us_per_entry"]["postgres"], 1e-3), 3),
        }
    finally:
        redis_server.stop()
        postgres.remove()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--prefill", type=int, default=10_000_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--paced-s", type=float, default=20.0)
    parser.add_argument("--out", default="bench/out/postgres_growth.json")
    args = parser.parse_args()
    results = run(records_n=args.records, prefill_n=args.prefill, rate=args.rate, paced_s=args.paced_s,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(args.out)
    write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
