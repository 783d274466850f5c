"""Pipeline throughput over stream shards: 1, 2 and 4 shards on a local Redis Cluster of three primaries
(a replica each) against the single stream on one plain Redis, all in the same run.

    python -m bench.shards [--records 20000] [--shards 1,2,4] [--workers 2]

Method: for each case the same records are appended to the stream(s) first (spread over the shards
in coalesced batches, as the ingress spreads them), then `hookstream dispatch` and `hookstream worker
-n W` (real processes) drain them into an emptied Postgres until every entry of every shard is
acknowledged. The baseline is the single-stream deployment (one Redis with AOF everysec, RQ on it);
each cluster case has its nodes on AOF everysec too and RQ on a plain queue Redis, as a cluster
requires. Figures (JSON on stdout): entries/s and events/s over the drain, CPU µs per entry of each
process tree (workers, dispatcher, the stream's Redis servers together, the queue Redis, Postgres),
and the ratios of each case to the single stream. On one machine the shards share its cores: this
measures the per-shard cost (the dispatcher's turns, the cluster client), not the scale-out across
machines, which is what sharding is for. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.common import ROOT, postmaster_pid, tree_cpu_s, write_json
from bench.payloads import records
from hookstream.embedded import PostgresServer, RedisServer
from hookstream.migrate import migrate
from shared import connections
from shared.settings import Settings
from tests.cluster.servers import RedisClusterGroup
from workers.dispatch import Dispatcher

TABLES = "events, event_keys, message_status, consent, consent_changes, dead_letters"
APPEND_BATCH = 500  # records per round trip to one shard, about what the ingress coalesces under load


def fill(settings: Settings, count: int) -> None:
    """The records appended to the shards in turn, a batch at a time."""
    client = connections.cli_redis(settings)
    try:
        shards = connections.stream_shards(settings, client)
        batch: list[Any] = []
        for i, record in enumerate(records(count)):
            batch.append(record.to_fields())
            if len(batch) == APPEND_BATCH or i == count - 1:
                pipe = client.pipeline(transaction=False)
                for fields in batch:
                    pipe.xadd(shards[(i // APPEND_BATCH) % len(shards)].stream, fields)
                pipe.execute()
                batch = []
    finally:
        client.close()


def remaining(client: Any, settings: Settings, dispatcher: Dispatcher) -> int:
    left = 0
    for shard in dispatcher.shards:
        group = next(g for g in client.xinfo_groups(shard.stream) if g["name"].decode() == settings.group)
        left += int(group["lag"] or 0) + int(group["pending"])
    return left


def drain(env: dict[str, str], count: int, workers: int, servers: dict[str, list[int]]) -> dict[str, Any]:
    settings = Settings.from_env(env)
    client = connections.cli_redis(settings)
    queue = connections.queue_client(settings, connections.Role.CLI, client)
    dispatcher = Dispatcher(settings, client, queue_redis=queue)
    dispatcher.ensure_group()
    fill(settings, count)
    cli = [sys.executable, "-m", "hookstream.cli"]
    procs = [subprocess.Popen(cli + ["worker", "-n", str(workers)], env=env, cwd=ROOT),
             subprocess.Popen(cli + ["dispatch"], env=env, cwd=ROOT)]
    trees = {"workers": [procs[0].pid], "dispatch": [procs[1].pid], **servers}
    before = {name: sum(tree_cpu_s(pid) for pid in pids) for name, pids in trees.items()}
    started = time.perf_counter()
    try:
        while remaining(client, settings, dispatcher):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a pipeline process exited early")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu_us = {name: round(1e6 * (sum(tree_cpu_s(pid) for pid in pids) - before[name]) / count, 1)
                  for name, pids in trees.items()}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        if queue is not client:
            queue.close()
        client.close()
    with psycopg.connect(settings.database_url_or_default()) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
    return {"shards": len(dispatcher.shards), "entries": count, "events": events, "seconds": round(elapsed, 3),
            "entries_per_s": round(count / elapsed), "events_per_s": round(events / elapsed),
            "cpu_us_per_entry": cpu_us, "cpu_us_per_entry_total": round(sum(cpu_us.values()), 1)}


def reset(database_url: str, *clients: Any) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    for client in clients:
        client.flushdb()


def run(*, records: int = 20_000, shards: tuple[int, ...] | list[int] = (1, 2, 4), workers: int = 2,
        log: Any = None) -> dict[str, Any]:
    """Every case on servers of this run's own; the results as `main` prints them."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    plain = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-")), appendfsync="everysec").start()
    queue = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-queue-")), appendfsync="everysec").start()
    cluster = RedisClusterGroup(aof=True).start()
    postgres = PostgresServer().start()
    results: dict[str, Any] = {"settings": {"records": records, "workers": workers, "primaries": 3,
                                            "replicas_per_primary": 1, "append_batch": APPEND_BATCH}}
    try:
        migrate(postgres.url)
        base = {**os.environ, "HOOKSTREAM_DATABASE_URL": postgres.url, "HOOKSTREAM_LOG_LEVEL": "WARNING",
                "HOOKSTREAM_WORKER_METRICS_PORT": "0", "HOOKSTREAM_DISPATCH_METRICS_PORT": "0"}
        base.pop("PROMETHEUS_MULTIPROC_DIR", None)
        pg = [postmaster_pid(postgres)]
        with redis.Redis.from_url(plain.url) as plain_client, redis.Redis.from_url(queue.url) as queue_client:
            reset(postgres.url, plain_client)
            say(f"shards: single stream, {records:,} records, {workers} worker processes")
            results["single"] = drain({**base, "HOOKSTREAM_REDIS_URL": plain.url}, records, workers,
                                      {"redis": [plain.proc.pid], "postgres": pg})  # type: ignore[union-attr]
            for count in shards:
                reset(postgres.url, queue_client)
                say(f"shards: {count} shard(s) on the cluster")
                env = {**base, "HOOKSTREAM_REDIS_CLUSTER": "1", "HOOKSTREAM_REDIS_URL": cluster.url,
                       "HOOKSTREAM_QUEUE_REDIS_URL": queue.url, "HOOKSTREAM_STREAM_SHARDS": str(count),
                       "HOOKSTREAM_KEY_PREFIX": f"bench{uuid.uuid4().hex[:6]}"}
                nodes = [n.proc.pid for n in cluster.nodes if n.proc is not None]
                results[f"cluster_{count}"] = drain(env, records, workers,
                                                    {"redis": nodes, "queue_redis": [queue.proc.pid],  # type: ignore[union-attr]
                                                     "postgres": pg})
        single = results["single"]
        results["ratios"] = {f"cluster_{n}_vs_single": {
            "events_per_s": round(results[f"cluster_{n}"]["events_per_s"] / single["events_per_s"], 3),
            "cpu_per_entry": round(results[f"cluster_{n}"]["cpu_us_per_entry_total"]
                                   / single["cpu_us_per_entry_total"], 3)} for n in shards}
    finally:
        cluster.stop()
        plain.stop()
        queue.stop()
        postgres.remove()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/out/shards.json")
    args = parser.parse_args()
    results = run(records=args.records, shards=[int(n) for n in args.shards.split(",")], workers=args.workers)
    write_json(Path(args.out), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
