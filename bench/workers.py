"""Worker throughput: events/s from a pre-filled stream into Postgres, against baselines of the same run.

    python -m bench.workers [--records 100000] [--workers 1,2] [--per-webhook 3000]

Figures (JSON on stdout):
- `pipeline_N`: `hookstream dispatch` + `hookstream worker -n N` as real processes draining the
  stream until every entry is acknowledged (rate over the whole drain and over its middle 90%);
- `raw_insert`: the same normalized rows written by one connection in batches of 500 with one
  INSERT … unnest and no other work: the Postgres ceiling;
- `rq_per_webhook`: one RQ job per webhook through the same job code: the naive design.
A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
from redis import Redis

from bench.common import postmaster_pid, tree_cpu_s, write_json
from bench.payloads import records
from hookstream.embedded import PostgresServer, RedisServer
from hookstream.migrate import migrate
from shared.settings import Settings
from workers.context import normalize_context
from workers.dispatch import Dispatcher
from workers.normalize import normalize_entries
from workers.store import EVENT_COLUMNS, EVENTS_INSERT, _columns, _event_row, unique_events

TABLES = "events, event_keys, message_status, consent, consent_changes, dead_letters"


def fill(redis: Redis, stream: str, count: int) -> None:
    pipe = redis.pipeline(transaction=False)
    for i, record in enumerate(records(count)):
        pipe.xadd(stream, record.to_fields())  # type: ignore[arg-type]
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def reset(redis: Redis, database_url: str) -> None:
    redis.flushdb()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")


def remaining(redis: Redis, settings: Settings) -> int:
    """Entries not yet acknowledged: never read (lag) plus read but pending."""
    for group in redis.xinfo_groups(settings.stream):
        if group["name"].decode() == settings.group:
            return int(group["lag"] or 0) + int(group["pending"])
    return -1


def run_pipeline(env: dict[str, str], settings: Settings, redis: Redis, count: int, workers: int,
                 servers: dict[str, int] | None = None) -> dict[str, Any]:
    """`servers`: pids of the Redis and Postgres servers, to report their CPU per entry too."""
    Dispatcher(settings, redis).ensure_group()
    cli = [sys.executable, "-m", "hookstream.cli"]
    procs = [subprocess.Popen(cli + ["worker", "-n", str(workers)], env=env),
             subprocess.Popen(cli + ["dispatch"], env=env)]
    trees = {"workers": procs[0].pid, "dispatch": procs[1].pid, **(servers or {})}
    cpu_before = {name: tree_cpu_s(pid) for name, pid in trees.items()}
    marks: dict[float, float] = {}
    cpu_at: dict[float, dict[str, float]] = {}
    started = time.perf_counter()
    try:
        while True:
            left = remaining(redis, settings)
            done = count - left
            now = time.perf_counter()
            for fraction in (0.05, 0.95):
                if fraction not in marks and done >= fraction * count:
                    marks[fraction] = now
                    cpu_at[fraction] = {name: tree_cpu_s(pid) for name, pid in trees.items()}
            if left == 0:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a pipeline process exited early")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        # Over the whole drain, the workers' start-up included (about 5 µs per entry at 100,000).
        cpu_us = {name: round(1e6 * (tree_cpu_s(pid) - cpu_before[name]) / count, 1) for name, pid in trees.items()}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    with psycopg.connect(settings.database_url_or_default()) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]  # type: ignore[index]
    steady = len(marks) == 2 and marks[0.95] > marks[0.05]
    middle = (marks[0.95] - marks[0.05]) if steady else elapsed
    # The same middle 90% for the CPU: what each further entry costs once the processes have started.
    steady_cpu_us = ({name: round(1e6 * (cpu_at[0.95][name] - cpu_at[0.05][name]) / (0.9 * count), 1)
                      for name in trees} if steady else cpu_us)
    return {"entries": count, "events": events, "dead_letters": dead, "seconds": round(elapsed, 3),
            "entries_per_s": round(count / elapsed), "events_per_s": round(events / elapsed),
            "steady_entries_per_s": round(0.9 * count / middle), "cpu_us_per_entry": cpu_us,
            "steady_cpu_us_per_entry": steady_cpu_us}


def run_raw_insert(database_url: str, redis: Redis, settings: Settings, count: int) -> dict[str, Any]:
    """Only the INSERT of the already-normalized rows, 500 per statement, into a twin table."""
    raw = [(sid.decode(), fields) for sid, fields in redis.xrange(settings.stream)]
    entries = normalize_entries(raw, normalize_context(settings))
    rows = [_event_row(event, record) for event, record in unique_events(entries)]
    sql = EVENTS_INSERT.replace("INSERT INTO events", "INSERT INTO events_ceiling")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS events_ceiling")
        conn.execute("CREATE TABLE events_ceiling (LIKE events INCLUDING ALL)")
        started = time.perf_counter()
        for i in range(0, len(rows), 500):
            with conn.transaction():
                conn.execute(sql, _columns(rows[i : i + 500], len(EVENT_COLUMNS)))  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE events_ceiling")
    return {"rows": len(rows), "seconds": round(elapsed, 3), "rows_per_s": round(len(rows) / elapsed)}


def run_per_webhook(env: dict[str, str], settings: Settings, redis: Redis, count: int) -> dict[str, Any]:
    """One RQ job per stream entry, through the same job code (the design we did not choose)."""
    dispatcher = Dispatcher(settings, redis)
    dispatcher.ensure_group()
    ids = [sid.decode() for _, entries in redis.xreadgroup(settings.group, "bench", {settings.stream: ">"}, count=count)
           for sid, _ in entries]
    for sid in ids:
        dispatcher.enqueue([sid])
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hookstream.cli", "worker", "--burst"], env=env, check=True)
    elapsed = time.perf_counter() - started
    return {"entries": len(ids), "seconds": round(elapsed, 3), "entries_per_s": round(len(ids) / elapsed)}


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--per-webhook", type=int, default=3000)
    parser.add_argument("--out", default="bench/out/workers.json")
    args = parser.parse_args()

    results = run(records=args.records, workers=[int(w) for w in args.workers.split(",")],
                  per_webhook=args.per_webhook)
    out = Path(args.out)
    write_json(out, results)
    return 0


def run(*, records: int = 100_000, workers: list[int] | tuple[int, ...] = (1, 2), per_webhook: int = 3000) -> dict[str, Any]:
    """The whole benchmark (its own Redis and PostgreSQL); the results as `main` prints them."""
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-")), appendfsync="everysec").start()
    postgres = PostgresServer().start()
    try:
        migrate(postgres.url)
        env = {**os.environ, "HOOKSTREAM_REDIS_URL": redis_server.url, "HOOKSTREAM_DATABASE_URL": postgres.url,
               "HOOKSTREAM_LOG_LEVEL": "WARNING"}
        settings = Settings.from_env(env)
        redis = Redis.from_url(redis_server.url)
        results: dict[str, Any] = {"machine": machine()}
        for count in workers:
            reset(redis, postgres.url)
            fill(redis, settings.stream, records)
            results[f"pipeline_{count}"] = run_pipeline(
                env, settings, redis, records, count,
                servers={"redis": redis_server.proc.pid, "postgres": postmaster_pid(postgres)})  # type: ignore[union-attr]
            print(orjson.dumps({f"pipeline_{count}": results[f"pipeline_{count}"]}).decode(), flush=True)
        reset(redis, postgres.url)
        fill(redis, settings.stream, records)
        results["raw_insert"] = run_raw_insert(postgres.url, redis, settings, records)
        reset(redis, postgres.url)
        fill(redis, settings.stream, per_webhook)
        results["rq_per_webhook"] = run_per_webhook(env, settings, redis, per_webhook)
        one = results.get("pipeline_1")
        if one:
            results["ratios"] = {
                "pipeline_1_vs_raw_insert": round(one["events_per_s"] / results["raw_insert"]["rows_per_s"], 3),
                "pipeline_1_vs_rq_per_webhook": round(one["entries_per_s"] / results["rq_per_webhook"]["entries_per_s"], 1),
            }
    finally:
        redis_server.stop()
        postgres.remove()
    return results


if __name__ == "__main__":
    sys.exit(main())
