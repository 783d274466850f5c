"""Does the worker stay fast as Postgres grows? The same pipeline on an empty database, then on the
same database grown to 10 and then 50 million events; on the largest, the API's and the dashboard's
lookups, and a partition dropped while the pipeline commits.

    python -m bench.postgres_growth [--records 100000] [--levels 10000000,50000000] [--rate 2000] [--paced-s 20]

For each state (empty, then each level), with `hookstream dispatch` + `hookstream worker -n 1` as
real processes (bench/workers.py):
- `drain`: a stream of `records` entries drained: entries/s, events/s, CPU µs per entry of each
  process tree, Postgres included; with what Postgres did meanwhile (buffer reads and hits of the
  dedupe key's index, checkpoints, buffers written by backends);
- `paced`: entries appended at `rate`/s for `paced_s` seconds, each stamped with its append time:
  ingest-to-commit p50/p99 = the event row's created_at (its batch transaction's start, a few ms
  before its commit) minus that time.
The pre-fill grows the database from one level to the next (never refilled): INSERT … SELECT
generate_series in chunks of CHUNK rows, two at a time on their own connections (the machine has
two cores), the chunks in flight a partition apart, through every production index (none dropped):
events spread over the last 90 days (the dedupe horizon, so every one of them has its key in
event_keys too) in the weekly partitions the upkeep makes, each with a payload of the size a status
report has. Only for the pre-fill, checkpoints are spaced out (max_wal_size, checkpoint_timeout);
initdb's settings are back, and a CHECKPOINT and VACUUM ANALYZE done, before anything is measured.
Bytes on disk per event: events and event_keys, tables and indexes, over their rows.

On the largest database (bench/growth_lookups.py): p50/p95 of the consent API's routes and the
dashboard's pages, uncached. Then one paced run during which the upkeep drops the oldest partition
(EVENTS.maintain, as the dispatcher runs it), then tries to while a reader holds the table (a report,
pg_dump), then a plain DROP TABLE does what the upkeep did before it bounded its lock wait:
ingest-to-commit p99 per second, and in the seconds after each against the seconds before.
A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis

from bench import growth_lookups
from bench.common import postmaster_pid, write_json
from bench.payloads import records
from bench.workers import machine, remaining, run_pipeline
from hookstream.embedded import PostgresServer, RedisServer
from hookstream.migrate import migrate
from shared.settings import Settings
from workers.dispatch import Dispatcher
from workers.event_partitions import EVENTS

HORIZON_DAYS = 90
CHUNK = 500_000
PARALLEL = 2
BYTES_PER_EVENT = 800  # a little above what the pre-fill measured, for the free-space check
PREFILL_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "30min"}
LOOKUP_MESSAGES = 4_000_000
# A status report's row: the columns a normalizer fills, a payload of ~200 bytes as providers send.
# Rows `first`..`last` of a fill of `count` rows numbered from `low`, spread evenly over the `span_s`
# seconds before `until`, in the order of their numbers.
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
                         %(until)s::timestamptz - make_interval(
                             secs => (1 - (n - %(low)s)::float8 / %(count)s) * %(span_s)s) AS t) AS x
    RETURNING dedupe_key, received_at
)
INSERT INTO event_keys SELECT dedupe_key, received_at FROM made
"""
SIZE_SQL = ("SELECT (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c"
            " ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass),"
            " pg_total_relation_size('event_keys'), (SELECT count(*) FROM events)")
INDEX_SIZES_SQL = (
    "SELECT 'event_keys_pkey', pg_relation_size('event_keys_pkey') UNION ALL"
    " SELECT 'event_keys_received_at', pg_relation_size('event_keys_received_at') UNION ALL"
    " SELECT 'events_indexes', sum(pg_indexes_size(i.inhrelid)) FROM pg_inherits i"
    " WHERE i.inhparent = 'events'::regclass"
)
STATS_SQL = (
    "SELECT (SELECT idx_blks_read FROM pg_statio_user_indexes WHERE indexrelname = 'event_keys_pkey'),"
    " (SELECT idx_blks_hit FROM pg_statio_user_indexes WHERE indexrelname = 'event_keys_pkey'),"
    " checkpoints_timed + checkpoints_req, buffers_checkpoint, buffers_clean, buffers_backend FROM pg_stat_bgwriter"
)
# Per index, during a drain: which of them Postgres had to read from outside shared_buffers.
INDEX_IO_SQL = "SELECT indexrelname, idx_blks_read, idx_blks_hit FROM pg_statio_user_indexes"
# The pipeline's statements during a drain, by total time (pg_stat_statements, loaded for the run).
STATEMENTS_SQL = (
    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90), calls, round(total_exec_time::numeric, 1)::float8,"
    " shared_blks_hit, shared_blks_read, shared_blks_dirtied, shared_blks_written FROM pg_stat_statements"
    " WHERE query NOT ILIKE '%%pg_stat%%' ORDER BY total_exec_time DESC LIMIT 8"
)
STATS = ("event_keys_pkey_blks_read", "event_keys_pkey_blks_hit", "checkpoints", "buffers_checkpoint",
         "buffers_clean", "buffers_backend")


def interleaved(chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The first half's chunks alternating with the second half's: two in flight are weeks apart."""
    half = (len(chunks) + 1) // 2
    out: list[tuple[int, int]] = []
    for a, b in zip(chunks[:half], [*chunks[half:], None], strict=False):
        out += [a] if b is None else [a, b]
    return out


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def grow(postgres: PostgresServer, have: int, target: int, log: Any) -> dict[str, Any]:
    """Add events `have`+1..`target` (their keys included) over the horizon, through every index."""
    assert postgres.data_dir is not None
    needed, free = (target - have) * BYTES_PER_EVENT + (8 << 30), free_bytes(postgres.data_dir)
    if needed > free:
        raise RuntimeError(f"{target - have:,} more events need about {needed >> 30} GB; {free >> 30} GB free")
    started = time.perf_counter()
    until = datetime.now(UTC)
    fill = {"low": have + 1, "count": target - have, "until": until, "span_s": HORIZON_DAYS * 86400}
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        EVENTS.create_range(conn, until - timedelta(days=HORIZON_DAYS), until)
        for name, value in PREFILL_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
    chunks = interleaved([(first, min(first + CHUNK - 1, target)) for first in range(have + 1, target + 1, CHUNK)])
    done = [0]
    lock = threading.Lock()

    def insert(chunk: tuple[int, int]) -> None:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(PREFILL_SQL, {**fill, "first": chunk[0], "last": chunk[1]})
        with lock:
            done[0] += chunk[1] - chunk[0] + 1
            log(f"prefill: {have + done[0]:,} of {target:,} events, {time.perf_counter() - started:.0f}s")

    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(insert, chunks))
    filled = time.perf_counter() - started
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        for name in PREFILL_SETTINGS:
            conn.execute(f"ALTER SYSTEM RESET {name}")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE event_keys")
        conn.execute("CHECKPOINT")
    log(f"prefill: {target:,} events, {filled:.0f}s inserting, {time.perf_counter() - started:.0f}s in all")
    return {"events": target - have, "insert_seconds": round(filled, 1),
            "seconds": round(time.perf_counter() - started, 1), "parallel": PARALLEL, "chunk": CHUNK}


def index_sizes(database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        sizes = {name: int(size or 0) for name, size in conn.execute(INDEX_SIZES_SQL)}
        shared = conn.execute("SELECT pg_size_bytes(current_setting('shared_buffers'))").fetchone()
    return {**sizes, "shared_buffers": int(shared[0]) if shared else 0}


def stats(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(STATS_SQL).fetchone()
    return {name: int(value or 0) for name, value in zip(STATS, row or (), strict=True)}


def index_io(database_url: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {name: (int(read or 0), int(hit or 0)) for name, read, hit in conn.execute(INDEX_IO_SQL)}


def index_io_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """The indexes read from outside shared_buffers meanwhile, most read first."""
    rows = sorted(((name, read - before.get(name, (0, 0))[0], hit - before.get(name, (0, 0))[1])
                   for name, (read, hit) in after.items()), key=lambda row: -row[1])
    return [{"index": name, "blks_read": read, "blks_hit": hit} for name, read, hit in rows if read or hit][:8]


def load_statements(postgres: PostgresServer) -> None:
    """pg_stat_statements for the run: a restart with the library preloaded."""
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    postgres.stop()
    postgres.start()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def statements(database_url: str, reset: bool = False) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        if reset:
            conn.execute("SELECT pg_stat_statements_reset()")
            return []
        names = ("statement", "calls", "total_ms", "blks_hit", "blks_read", "blks_dirtied", "blks_written")
        return [dict(zip(names, row, strict=True)) for row in conn.execute(STATEMENTS_SQL)]


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


Action = tuple[float, str, Callable[[], Any]]  # (seconds into the paced window, name, what to do)


def paced(env: dict[str, str], settings: Settings, redis: Redis, rate: float, seconds: float,
          first: int, actions: Sequence[Action] = ()) -> dict[str, Any]:
    """Append at `rate` for `seconds`, each record stamped at its append; p50/p99 of ingest-to-commit.
    `actions` run on threads of their own at their time into the window; with them, the p99 of each
    second of appends is reported too, and each action's start, end and result."""
    total = int(rate * seconds)
    made = list(records(total, first=first, start_ms=0))
    done: list[dict[str, Any]] = []
    threads: list[threading.Timer] = []

    def act(name: str, action: Callable[[], Any], at: float) -> None:
        started = time.time()
        result = action()
        done.append({"action": name, "at_s": at, "started_s": round(started - sent_from, 2),
                     "seconds": round(time.time() - started, 3), "result": result})

    with pipeline(env, 1):
        time.sleep(2)  # the processes' start-up is not ingest latency
        sent_from = time.time()
        for at, name, action in actions:
            timer = threading.Timer(at, act, (name, action, at))
            timer.start()
            threads.append(timer)
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
        for timer in threads:
            timer.join()
        deadline = time.time() + 120
        while remaining(redis, settings) > 0 and time.time() < deadline:
            time.sleep(0.05)
    window = (sent_from, sent_until + 0.1)
    with psycopg.connect(settings.database_url_or_default()) as conn:
        p50, p99, n = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP (ORDER BY lag),"
            " count(*) FROM (SELECT extract(epoch FROM created_at - received_at) * 1000 AS lag FROM events"
            " WHERE received_at >= to_timestamp(%s) AND received_at <= to_timestamp(%s)) l",
            window).fetchone()  # type: ignore[misc]
        per_second = [] if not actions else [
            {"second": int(sec), "events": int(count), "p99_ms": round(float(q), 1), "max_ms": round(float(top), 1)}
            for sec, count, q, top in conn.execute(
                "SELECT floor(extract(epoch FROM received_at) - %s) AS sec, count(*),"
                " percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag) FROM (SELECT received_at,"
                " extract(epoch FROM created_at - received_at) * 1000 AS lag FROM events"
                " WHERE received_at >= to_timestamp(%s) AND received_at <= to_timestamp(%s)) l GROUP BY 1 ORDER BY 1",
                (sent_from, *window))]
    out = {"entries": total, "rate_sent": round(total / elapsed), "events": int(n),
           "ingest_to_commit_ms": {"p50": round(float(p50 or 0), 1), "p99": round(float(p99 or 0), 1)}}
    if actions:
        out |= {"actions": sorted(done, key=lambda a: a["at_s"]), "per_second": per_second}
    return out


def events_count(settings: Settings) -> int:
    with psycopg.connect(settings.database_url_or_default()) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]


def drain_once(env: dict[str, str], settings: Settings, redis: Redis, postgres: PostgresServer, redis_pid: int,
               count: int, first: int, traced: bool) -> dict[str, Any]:
    redis.flushdb()
    Dispatcher(settings, redis).ensure_group()
    fill_stream(redis, settings.stream, count, first)
    before = events_count(settings)
    stats_before, io_before = stats(postgres.url), index_io(postgres.url)
    if traced:
        statements(postgres.url, reset=True)
    drain = run_pipeline(env, settings, redis, count, 1,
                         servers={"redis": redis_pid, "postgres": postmaster_pid(postgres)})
    after = stats(postgres.url)
    drain["postgres_stats"] = {name: after[name] - stats_before[name] for name in STATS}
    drain["index_io"] = index_io_delta(io_before, index_io(postgres.url))
    if traced:
        drain["statements"] = statements(postgres.url)
    drain["events"] -= before  # run_pipeline counts the table's rows; the pre-fill is not this run's
    drain["events_per_s"] = round(drain["events"] / drain["seconds"])
    return drain


def measure(env: dict[str, str], settings: Settings, redis: Redis, postgres: PostgresServer, redis_pid: int,
            count: int, rate: float, paced_s: float, first: int, log: Any, drains: int = 1,
            traced: bool = False) -> dict[str, Any]:
    """`drains` drains of `count` fresh records each (the first is `drain`, all are in `drains`, their
    mean events/s in `events_per_s`), then the paced run."""
    runs = [drain_once(env, settings, redis, postgres, redis_pid, count, first + i * count, traced)
            for i in range(drains)]
    drain = runs[0]
    for run_ in runs:
        log(f"drain: {run_['events_per_s']:,} events/s, postgres {run_['cpu_us_per_entry'].get('postgres')} µs/entry,"
            f" {run_['postgres_stats']}, most read indexes {run_['index_io'][:3]}")
    redis.flushdb()
    Dispatcher(settings, redis).ensure_group()
    pace = paced(env, settings, redis, rate, paced_s, first + drains * count)
    log(f"paced: {pace['rate_sent']:,}/s, ingest-to-commit p99 {pace['ingest_to_commit_ms']['p99']} ms")
    return {"drain": drain, "drains": runs, "events_per_s": round(sum(r["events_per_s"] for r in runs) / len(runs)),
            "postgres_cpu_us_per_entry": round(sum(r["cpu_us_per_entry"]["postgres"] for r in runs) / len(runs), 1),
            "paced": pace, "disk": disk(postgres.url), "index_sizes": index_sizes(postgres.url)}


def retention_dropping_oldest(database_url: str) -> int:
    """The retention (seconds) under which the upkeep drops the oldest weekly partition and no other."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        oldest = min(start for name in EVENTS.existing(conn) if (start := EVENTS.start_in(name)) is not None)
    return (datetime.now(UTC).date() - (oldest + timedelta(days=EVENTS.days))).days * 86400


def oldest_partition(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return min((name for name in EVENTS.existing(conn) if EVENTS.start_in(name)),
                   key=lambda name: EVENTS.start_in(name) or datetime.max.date())


def upkeep_drop(database_url: str) -> dict[str, Any]:
    """The dispatcher's partition upkeep, with a retention that has the oldest week expire."""
    retention_s = retention_dropping_oldest(database_url)
    name = oldest_partition(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        created, dropped = EVENTS.maintain(conn, retention_s)
    return {"partition": name, "dropped": dropped}


def plain_drop(database_url: str) -> dict[str, Any]:
    """What the upkeep did before: DROP TABLE, waiting for the table's lock for as long as it takes."""
    name = oldest_partition(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(f"DROP TABLE {name}")
        conn.commit()
    return {"partition": name, "dropped": 1}


def reader(database_url: str, hold_s: float) -> Callable[[], Any]:
    """A transaction that has read events and holds its lock for `hold_s` (a long report, pg_dump)."""
    def read() -> dict[str, Any]:
        with psycopg.connect(database_url) as conn:
            conn.execute("SELECT 1 FROM events LIMIT 1")
            conn.execute("SELECT pg_sleep(%s)", (hold_s,))
            conn.commit()
        return {"held_s": hold_s}
    return read


def drop_under_load(env: dict[str, str], settings: Settings, redis: Redis, rate: float, first: int,
                    log: Any) -> dict[str, Any]:
    url = settings.database_url_or_default()
    redis.flushdb()
    Dispatcher(settings, redis).ensure_group()
    actions: list[Action] = [
        (8.0, "upkeep drops the oldest partition", lambda: upkeep_drop(url)),
        (16.0, "a reader holds events for 4 s", reader(url, 4.0)),
        (16.5, "upkeep drop while the reader holds events", lambda: upkeep_drop(url)),
        (26.0, "a reader holds events for 4 s", reader(url, 4.0)),
        (26.5, "plain DROP TABLE while the reader holds events", lambda: plain_drop(url)),
    ]
    pace = paced(env, settings, redis, rate, 36.0, first, actions)
    seconds = {row["second"]: row for row in pace["per_second"]}

    def p99(low: int, high: int) -> float:
        return max((seconds[s]["p99_ms"] for s in range(low, high) if s in seconds), default=0.0)

    pace["windows"] = {"before (s 1-7)": p99(1, 8), "upkeep drop (s 8-11)": p99(8, 12),
                       "upkeep drop behind a reader (s 16-19)": p99(16, 20),
                       "plain DROP behind a reader (s 26-31)": p99(26, 32)}
    log(f"drop under load: worst per-second p99 {pace['windows']}; {pace['actions']}")
    return pace


def ratio(a: float, b: float) -> float:
    return round(a / max(b, 1e-3), 3)


def run(*, records_n: int = 100_000, levels: Sequence[int] = (10_000_000, 50_000_000), rate: float = 2000.0,
        paced_s: float = 20.0, lookups: bool = True, drop: bool = True, prefill_n: int | None = None,
        messages: int = LOOKUP_MESSAGES, drains: int = 1, traced: bool = False, log: Any = print) -> dict[str, Any]:
    """The whole benchmark (its own Redis and a durable PostgreSQL, removed at the end). `prefill_n`:
    one level only (as `make bench` asks). `prefill`, `prefilled` and `ratios` are the largest level's."""
    levels = [prefill_n] if prefill_n else list(levels)
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-")), appendfsync="everysec").start()
    postgres = PostgresServer().start()
    try:
        migrate(postgres.url)
        if traced:
            load_statements(postgres)
        env = {**os.environ, "HOOKSTREAM_REDIS_URL": redis_server.url, "HOOKSTREAM_DATABASE_URL": postgres.url,
               "HOOKSTREAM_LOG_LEVEL": "WARNING"}
        settings = Settings.from_env(env)
        redis = Redis.from_url(redis_server.url)
        pid = redis_server.proc.pid  # type: ignore[union-attr]
        results: dict[str, Any] = {"machine": machine(), "settings": {
            "records": records_n, "levels": list(levels), "rate": rate, "paced_s": paced_s, "worker_processes": 1,
            "postgres": "embedded PostgreSQL 15, initdb defaults (shared_buffers 128MB), fsync on"}}
        log("empty database")
        results["empty"] = measure(env, settings, redis, postgres, pid, records_n, rate, paced_s, 0, log, drains, traced)
        results["levels"], results["ratios_by_level"] = {}, {}
        have, first = 0, 10 * drains * records_n
        empty = results["empty"]
        for level in levels:
            log(f"growing to {level:,} events")
            grown = grow(postgres, have, level, log)
            have = level
            log(f"{level:,} events")
            state = measure(env, settings, redis, postgres, pid, records_n, rate, paced_s, first, log, drains, traced)
            first += 10 * drains * records_n
            results["levels"][str(level)] = {"prefill": grown, **state}
            results["ratios_by_level"][str(level)] = {
                "events_per_s_prefilled_vs_empty": ratio(state["events_per_s"], empty["events_per_s"]),
                "p99_prefilled_vs_empty": ratio(state["paced"]["ingest_to_commit_ms"]["p99"],
                                                empty["paced"]["ingest_to_commit_ms"]["p99"]),
                "postgres_cpu_us_prefilled_vs_empty": ratio(state["postgres_cpu_us_per_entry"],
                                                            empty["postgres_cpu_us_per_entry"]),
            }
            log(f"ratios at {level:,}: {results['ratios_by_level'][str(level)]}")
            results["prefill"] = {"events": level, "disk": state["disk"]}
            results["prefilled"], results["ratios"] = state, results["ratios_by_level"][str(level)]
        if lookups:
            growth_lookups.seed(postgres.url, redis, settings, messages, log)
            results["lookups"] = growth_lookups.measure(settings)
            results["lookups_over_200ms_p95"] = growth_lookups.over(results["lookups"])
            log(f"lookups: {results['lookups']}")
        if drop:
            results["drop_under_load"] = drop_under_load(env, settings, redis, rate, first, log)
    finally:
        redis_server.stop()
        postgres.remove()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--levels", default="10000000,50000000", help="events stored, grown one after the other")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--paced-s", type=float, default=20.0)
    parser.add_argument("--messages", type=int, default=LOOKUP_MESSAGES, help="message_status rows for the lookups")
    parser.add_argument("--drains", type=int, default=1, help="drains per state (their mean makes the ratio)")
    parser.add_argument("--statements", action="store_true", help="pg_stat_statements: each drain's top statements")
    parser.add_argument("--no-lookups", action="store_true")
    parser.add_argument("--no-drop", action="store_true")
    parser.add_argument("--out", default="bench/out/postgres_growth.json")
    args = parser.parse_args()
    results = run(records_n=args.records, levels=[int(v) for v in args.levels.split(",") if v],
                  rate=args.rate, paced_s=args.paced_s, lookups=not args.no_lookups, drop=not args.no_drop,
                  messages=args.messages, drains=args.drains, traced=args.statements,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    write_json(Path(args.out), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
