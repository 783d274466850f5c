"""`hookstream status [--json]`: is the pipeline keeping up? One look at Redis, RQ and Postgres.

The report is read by `shared.reports.status`, the same one the dashboard's flow section shows.
Every number is read, not estimated, without RQ's registry cleanups (only Worker.all drops a dead
worker's stale registration, as RQ does everywhere). A source that cannot be read is reported in
`errors` (exit code 1) while the others are still shown: during an outage the operator needs the
half that still answers, never a traceback.

`--json` keys — always all present; a value is null when its source could not be read:

    stream                 name of the raw stream (with several shards: their names, comma-separated)
    stream_length          XLEN; 0 when the stream does not exist yet (the figures down to
                           pending_oldest_idle_s are the shards' totals: sums, or the oldest age)
    stream_oldest_age_s    seconds since the oldest entry still in the stream was appended; null if empty
    group                  name of the consumer group
    group_exists           whether the group exists (the dispatcher creates it at id 0)
    lag                    entries the group has not read yet (XINFO GROUPS `lag`); XLEN when the
                           group does not exist yet (it will start at id 0); null when Redis cannot tell
    pending                entries read but not acknowledged (XPENDING)
    pending_oldest_age_s   seconds since the oldest pending entry was appended; null if none
    pending_oldest_idle_s  seconds since that entry was last handed to a consumer; null if none
    queue, queue_depth     the live RQ queue and its jobs waiting (a job is a batch of entries)
    replay_queue, replay_queue_depth   the same for the replay queue
    workers                RQ workers registered on the live queue or the replay queue
    failed_jobs            unexpired jobs in both queues' FailedJobRegistry
    dead_letters           dead_letters rows not requeued
    events_per_minute      {provider: events per minute over the last window_s, by events.received_at}
    window_s               300
    errors                 ["redis: …", "postgres: …"]; empty when everything was read
    shards                 one object per shard of the raw stream (one without sharding): shard (its
                           index, the metrics' `shard` label), stream, stream_length,
                           stream_oldest_age_s, group_exists, lag, pending, pending_oldest_age_s,
                           pending_oldest_idle_s, as above; null when Redis could not be read
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import psycopg
from redis.exceptions import RedisClusterException, RedisError

from shared import connections, reports
from shared.settings import Settings


def collect(settings: Settings) -> dict[str, Any]:
    """The report (`shared.reports.status`) on connections of this command's own."""
    try:
        redis = connections.cli_redis(settings)
    except (RedisError, RedisClusterException) as exc:  # a cluster's client reads its map when made
        report = reports.empty_report(settings)
        report["errors"].append(f"redis: {reports.first_line(exc)}")
        return report
    queue_redis = connections.queue_client(settings, connections.Role.CLI, redis)
    try:
        try:
            conn = connections.connect(settings.database_url_or_default(), connections.Role.CLI)
        except psycopg.Error as exc:
            return reports.status(settings, redis, None, reports.first_line(exc), queue_redis=queue_redis)
        with conn:
            return reports.status(settings, redis, conn, queue_redis=queue_redis)
    finally:
        redis.close()
        if queue_redis is not redis:
            queue_redis.close()


def _n(value: Any, unit: str = "") -> str:
    return "?" if value is None else f"{value}{unit}"


def format_table(report: dict[str, Any]) -> str:
    """Label/value lines, values aligned in one column; `?` where a source could not be read."""
    unread = report["stream_length"] is None  # Redis did not answer: "?" rather than "-" (none)
    age = report["pending_oldest_age_s"]
    pending_age = "?" if unread else "-" if age is None else f"{age} s (idle {report['pending_oldest_idle_s']} s)"
    oldest = report["stream_oldest_age_s"]
    oldest_age = "?" if unread else "-" if oldest is None else f"{oldest} s"
    lines: list[tuple[str, str]] = [
        ("stream", report["stream"]),
        ("  length", _n(report["stream_length"])),
        ("  oldest entry age", oldest_age),
        ("consumer group", report["group"] + ("" if report["group_exists"] is not False else " (not created yet)")),
        ("  lag (not read yet)", _n(report["lag"])),
        ("  pending (not acked)", _n(report["pending"])),
        ("  oldest pending age", pending_age),
        ("queue depth", ""),
        (f"  {report['queue']}", _n(report["queue_depth"])),
        (f"  {report['replay_queue']}", _n(report["replay_queue_depth"])),
        ("workers", _n(report["workers"])),
        ("failed jobs", _n(report["failed_jobs"])),
        ("dead letters (not requeued)", _n(report["dead_letters"])),
        (f"events/min (last {report['window_s'] // 60} min)", "?" if report["events_per_minute"] is None else
         ("0" if not report["events_per_minute"] else "")),
    ]
    lines += [(f"  {p}", str(v)) for p, v in (report["events_per_minute"] or {}).items()]
    shards = report.get("shards") or []
    if len(shards) > 1:
        lines.append(("shards (length / lag / pending)", ""))
        lines += [(f"  {shard['shard']}: {shard['stream']}",
                   f"{_n(shard['stream_length'])} / {_n(shard['lag'])} / {_n(shard['pending'])}") for shard in shards]
    width = max(len(label) for label, _ in lines) + 2
    errors = ["errors", *(f"  {e}" for e in report["errors"])] if report["errors"] else []
    return "\n".join([f"{label.ljust(width)}{value}".rstrip() for label, value in lines] + errors)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    report = collect(settings)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 1 if report["errors"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("status", help="stream, group, queues, workers, failures, dead letters, event rate")
    p.add_argument("--json", action="store_true", help="machine-readable output (keys in hookstream.status docs)")
    p.set_defaults(handler=cmd_status)
