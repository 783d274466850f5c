"""End to end: ack-to-commit lag at a steady rate through ingress → stream → dispatch → workers → Postgres.

    python -m bench.e2e [--rate 1000] [--duration 60] [--workers 2] [--quick]

Real processes: `hookstream ingress`, `hookstream dispatch`, `hookstream worker -n 2`, a
redis-server with `appendfsync always` and a durable PostgreSQL. An open-loop generator
(bench/loadgen.py, its own process) sends distinct webhooks of every provider at a fixed rate;
a short warm-up at the same rate, with other ids, comes first and is not counted.

The lag of a webhook is its commit time minus its receive time:
- receive time: `events.received_at`, stamped by the ingress before its XADD (millisecond);
- commit time: PostgreSQL's own commit timestamp of the transaction that wrote the row,
  `pg_xact_commit_timestamp(xmin)`, with `track_commit_timestamp = on` set on the benchmark's
  throw-away cluster (a server setting; nothing is added to the product). Both clocks are this
  machine's. Every measured row was inserted once (distinct ids), so `xmin` is its insert.
The worker's own histogram `hookstream_worker_commit_lag_seconds` (read from its /metrics
before and after, so only the measured window counts) is reported beside it as a cross-check;
its buckets are coarse, so its percentiles are interpolated within a bucket.
A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from redis import Redis

from bench.common import (
    ROOT,
    bench_env,
    emit,
    hookstream,
    latency_summary_ms,
    load_average,
    postmaster_pid,
    stderr_log,
    tree_cpu_s,
    wait_http,
)
from bench.workers import machine, remaining
from hookstream.embedded import PostgresServer, RedisServer, free_port
from hookstream.migrate import migrate
from hookstream.run import stop_children
from shared.settings import Settings
from workers.dispatch import Dispatcher

LAG_METRIC = "hookstream_worker_commit_lag_seconds"


def postgres_with_commit_timestamps() -> PostgresServer:
    postgres = PostgresServer().start()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    postgres.stop()
    return postgres.start()


def lag_histogram(port: int) -> dict[float, float]:
    """Cumulative bucket counts of the worker's commit-lag histogram (upper bound → count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    buckets: dict[float, float] = {}
    for match in re.finditer(rf'^{LAG_METRIC}_bucket{{.*?le="([^"]+)".*?}} (\S+)$', text, re.M):
        bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
        buckets[bound] = buckets.get(bound, 0.0) + float(match.group(2))
    return buckets


def histogram_percentiles(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """p50/p99 (ms) of the observations made between two snapshots, linear within a bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    out: dict[str, Any] = {"count": int(total), "buckets_s": [b for b in bounds if b != float("inf")]}
    if not total:
        return out
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        target, lower, below = q * total, 0.0, 0.0
        for bound, count in zip(bounds, counts):
            if count >= target:
                upper = bound if bound != float("inf") else lower
                share = (target - below) / max(count - below, 1e-9)
                out[name] = round(1000 * (lower + share * (upper - lower)), 1)
                break
            lower, below = bound, count
    return out


def loadgen(port: int, rate: float, duration: float, skip: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.loadgen", "--port", str(port), "--set", "mixed", "--rate",
                           f"{rate:g}", "--duration", f"{duration:g}", "--distinct", str(int(rate * duration)),
                           "--skip", str(skip), "--connections", "128"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-800:]}")
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


def wait_drained(redis: Redis, settings: Settings, timeout_s: float) -> float | None:
    """Seconds until every stream entry was acknowledged (None: not within `timeout_s`)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if remaining(redis, settings) == 0:
            return round(time.perf_counter() - started, 2)
        time.sleep(0.05)
    return None


def run(*, rate: float = 1000.0, duration: float = 60.0, warmup: float = 5.0, workers: int = 2,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-")), appendfsync="always").start()
    postgres = postgres_with_commit_timestamps()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate(postgres.url)
        env = bench_env(redis_server.url, postgres.url)
        settings = Settings.from_env(env)
        redis = Redis.from_url(redis_server.url)
        Dispatcher(settings, redis).ensure_group()
        port = free_port()
        procs = [hookstream(["ingress", "--host", "127.0.0.1", "--port", str(port)], env),
                 hookstream(["dispatch"], env), hookstream(["worker", "-n", str(workers)], env)]
        wait_http(port, proc=procs[0])
        wait_http(settings.worker_metrics_port, "/metrics", proc=procs[2])

        count = int(rate * duration)
        loadgen(port, rate, warmup, skip=count)  # warm-up: other ids, not counted
        wait_drained(redis, settings, 60)
        hist_before = lag_histogram(settings.worker_metrics_port)
        start = datetime.now(UTC)
        cpu_before = {name: tree_cpu_s(p.pid) for name, p in zip(("ingress", "dispatch", "workers"), procs)}
        cpu_before["redis"] = tree_cpu_s(redis_server.proc.pid)  # type: ignore[union-attr]
        cpu_before["postgres"] = tree_cpu_s(postmaster_pid(postgres))
        t0 = time.perf_counter()
        http = loadgen(port, rate, duration, skip=0)
        sent_for = time.perf_counter() - t0
        drain_s = wait_drained(redis, settings, 120)
        elapsed = time.perf_counter() - t0
        cpu = {name: round((tree_cpu_s(p.pid) - cpu_before[name]) / elapsed, 2)
               for name, p in zip(("ingress", "dispatch", "workers"), procs)}
        cpu["redis"] = round((tree_cpu_s(redis_server.proc.pid) - cpu_before["redis"]) / elapsed, 2)  # type: ignore[union-attr]
        cpu["postgres"] = round((tree_cpu_s(postmaster_pid(postgres)) - cpu_before["postgres"]) / elapsed, 2)
        time.sleep(0.3)  # the worker observes its histogram right after the commit
        hist_after = lag_histogram(settings.worker_metrics_port)

        with psycopg.connect(postgres.url) as conn:
            rows = conn.execute(
                "SELECT stream_id, min(received_at), max(pg_xact_commit_timestamp(xmin)) FROM events"
                " WHERE received_at >= %s GROUP BY stream_id", (start,)).fetchall()
            dead = conn.execute("SELECT count(*) FROM dead_letters WHERE received_at >= %s", (start,)).fetchone()[0]  # type: ignore[index]
            events = conn.execute("SELECT count(*) FROM events WHERE received_at >= %s", (start,)).fetchone()[0]  # type: ignore[index]
        lags = [(committed - received).total_seconds() for _, received, committed in rows if committed is not None]
        first = min((received for _, received, _ in rows), default=start)
        timeline = _timeline(rows, first)
        ok = http["statuses"].get("200", 0)
        result = {
            "machine": machine(), "load_average_at_start": load_average(),
            "settings": {"rate": rate, "duration_s": duration, "warmup_s": warmup, "workers": workers,
                         "appendfsync": "always", "batch_size": settings.batch_size,
                         "batch_wait_ms": settings.batch_wait_ms},
            "http": {"sent": http["sent"], "ok": ok, "statuses": http["statuses"], "achieved_rate": http["achieved_rate"],
                     "latency": http["latency"], "send_lag_ms": http["send_lag_ms"]},
            "committed_entries": len(rows), "events": events, "dead_letters": dead,
            "lag_ms": latency_summary_ms(lags),
            "lag_method": "pg_xact_commit_timestamp(xmin) - events.received_at, per stream entry",
            "worker_histogram": histogram_percentiles(hist_before, hist_after),
            "drain_after_load_s": drain_s, "load_seconds": round(sent_for, 2),
            "cpu_cores": cpu, "lag_timeline": timeline,
        }
        result["sustained"] = bool(ok >= 0.99 * count and http["achieved_rate"] >= 0.98 * rate and drain_s is not None
                                   and drain_s < 5 and len(rows) >= 0.99 * ok)
        log(f"e2e {rate:g} req/s for {duration:g}s: lag p50 {result['lag_ms'].get('p50_ms')} ms, "
            f"p99 {result['lag_ms'].get('p99_ms')} ms (worker histogram p99 ≈ {result['worker_histogram'].get('p99_ms')} ms),"
            f" HTTP p99 {http['latency']['p99_ms']} ms, sustained: {result['sustained']}")
        return result
    finally:
        stop_children(procs)
        redis_server.stop()
        shutil.rmtree(redis_server.data_dir, ignore_errors=True)
        postgres.remove()


def _timeline(rows: list[tuple[Any, Any, Any]], first: datetime, step_s: int = 5) -> list[dict[str, Any]]:
    """Lag p50/p99 of the entries received in each `step_s` window: steady, or growing?"""
    windows: dict[int, list[float]] = {}
    for _, received, committed in rows:
        if committed is not None:
            windows.setdefault(int((received - first).total_seconds() // step_s), []).append(
                (committed - received).total_seconds())
    out = []
    for index in sorted(windows):
        summary = latency_summary_ms(windows[index])
        out.append({"t_s": index * step_s, "count": summary["count"], "p50_ms": summary["p50_ms"],
                    "p99_ms": summary["p99_ms"]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="15 s instead of 60 s")
    parser.add_argument("--out", default="bench/out/e2e.json")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 15.0, 3.0
    result = run(rate=args.rate, duration=args.duration, warmup=args.warmup, workers=args.workers,
                 log=stderr_log)
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
