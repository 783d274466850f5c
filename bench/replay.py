"""Replay: events/s re-processing stream entries with `workers.replay.replay`, against the live pipeline.

    python -m bench.replay [--records 100000] [--workers 2] [--quick]

Same run, same servers (redis-server with the shipped `appendfsync always`, durable PostgreSQL):
1. baseline: the stream is filled with `--records` mixed records (bench/payloads.py) and drained by
   the live pipeline, `hookstream dispatch` + `hookstream worker -n N` (bench/workers.py's
   `run_pipeline`): events/s of the live path;
2. replay: with `hookstream worker -n N` (and the dispatcher) running, this process calls
   `workers.replay.replay` over the whole stream (`Selection()`): pages of ids go to the replay
   queue, the workers read, normalize and upsert them again (rows already exist, as in a real
   replay after a normalizer fix). Events/s from the summary it returns. Three cases:
   `unchanged` (what replay computes equals the stored rows: the upsert's WHERE … IS DISTINCT FROM
   skips them, nothing is rewritten), run right after the load, the first to read what it wrote;
   `unchanged_again`, the same once more (a replay of rows written earlier, as a real replay is);
   and `rewrite` (every stored row made stale first by decrementing its `normalizer_version`, as
   after a normalizer fix: every row is rewritten).
A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from redis import Redis
from rq import Worker

from bench.common import bench_env, emit, hookstream, load_average, ratio, stderr_log
from bench.workers import fill, machine, reset, run_pipeline
from hookstream.embedded import PostgresServer, RedisServer
from hookstream.migrate import migrate
from hookstream.run import stop_children
from shared.settings import Settings
from workers.context import WorkerContext
from workers.replay import Selection, replay

TARGET_EVENTS_PER_S = 20_000


def wait_workers(redis: Redis, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if Worker.count(connection=redis) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{count} RQ workers did not register within {timeout_s}s")


def run(*, records: int = 100_000, workers: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-")), appendfsync="always").start()
    postgres = PostgresServer().start()
    procs = []
    try:
        migrate(postgres.url)
        env = bench_env(redis_server.url, postgres.url)
        settings = Settings.from_env(env)
        redis = Redis.from_url(redis_server.url)
        reset(redis, postgres.url)
        fill(redis, settings.stream, records)
        live = run_pipeline(env, settings, redis, records, workers)
        # Its whole-drain rate includes the processes' start-up; the middle 90% is the steady rate.
        live["steady_events_per_s"] = round(live["steady_entries_per_s"] * live["events"] / max(live["entries"], 1))
        log(f"replay baseline, live pipeline -n {workers}: {live['events_per_s']:,} events/s")

        procs = [hookstream(["worker", "-n", str(workers)], env), hookstream(["dispatch"], env)]
        wait_workers(redis, workers)
        runs: dict[str, Any] = {}
        for case in ("unchanged", "unchanged_again", "rewrite"):
            if case == "rewrite":
                # What a corrected normalizer does: every stored row differs from what replay computes.
                with psycopg.connect(postgres.url, autocommit=True) as conn:
                    conn.execute("UPDATE events SET normalizer_version = normalizer_version - 1")
                    conn.execute("VACUUM ANALYZE events")
            ctx = WorkerContext.open(settings, registry=CollectorRegistry())
            try:
                summary = replay(ctx, Selection(), out=io.StringIO())
            finally:
                ctx.close()
            summary["events_per_s"] = round(summary["events"] / max(summary["seconds"], 1e-6))
            runs[case] = summary
            log(f"replay ({case}) of {summary['entries']:,} entries: {summary['events_per_s']:,} events/s, "
                f"{summary['updated']:,} rows updated")
        return {
            "machine": machine(), "load_average_at_start": load_average(),
            "settings": {"records": records, "workers": workers, "appendfsync": "always",
                         "page": settings.batch_size, "in_flight_pages": settings.max_inflight_batches},
            "live_pipeline": live, "replay": runs,
            "ratios": {f"{case}_vs_live_events_per_s": ratio(r["events_per_s"], live["steady_events_per_s"])
                       for case, r in runs.items()}
            | {f"{case}_vs_target": ratio(r["events_per_s"], TARGET_EVENTS_PER_S) for case, r in runs.items()},
            "target_events_per_s": TARGET_EVENTS_PER_S,
        }
    finally:
        stop_children(procs)
        redis_server.stop()
        shutil.rmtree(redis_server.data_dir, ignore_errors=True)
        postgres.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20,000 records")
    parser.add_argument("--out", default="bench/out/replay.json")
    args = parser.parse_args()
    if args.quick:
        args.records = 20_000
    result = run(records=args.records, workers=args.workers, log=stderr_log)
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
