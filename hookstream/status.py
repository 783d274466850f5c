"""`hookstream status [--json]`: is the pipeline keeping up? One look at Redis, RQ and Postgres.

Every number is read, not estimated, without RQ's registry cleanups (only Worker.all drops a dead
worker's stale registration, as RQ does everywhere). A source that cannot be read is reported in
`errors` (exit code 1) while the others are still shown: during an outage the operator needs the
half that still answers, never a traceback.

`--json` keys — always all present; a value is null when its source could not be read:

    stream                 name of the raw stream
    stream_length          XLEN; 0 when the stream does not exist yet
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
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import psycopg
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.registry import FailedJobRegistry

from shared.settings import Settings
from shared.streamids import id_to_tuple

WINDOW_S = 300
KEYS = ("stream", "stream_length", "stream_oldest_age_s", "group", "group_exists", "lag", "pending",
        "pending_oldest_age_s", "pending_oldest_idle_s", "queue", "queue_depth", "replay_queue",
        "replay_queue_depth", "workers", "failed_jobs", "dead_letters", "events_per_minute", "window_s", "errors")


def empty_report(settings: Settings) -> dict[str, Any]:
    report: dict[str, Any] = dict.fromkeys(KEYS)
    report.update(stream=settings.stream, group=settings.group, queue=settings.queue,
                  replay_queue=settings.replay_queue, window_s=WINDOW_S, errors=[])
    return report


def id_age_s(stream_id: bytes | str, now_ms: int) -> float:
    """Age of an entry from its id: ids are Redis's own clock in ms, so compare with Redis TIME."""
    ms = id_to_tuple(stream_id)[0]
    return round(max(0, now_ms - ms) / 1000, 1)


def read_redis(redis: Redis, settings: Settings, report: dict[str, Any]) -> None:
    seconds, micros = redis.time()
    now_ms = seconds * 1000 + micros // 1000
    length = int(redis.xlen(settings.stream))
    first = redis.xrange(settings.stream, count=1) if length else []
    groups = redis.xinfo_groups(settings.stream) if redis.exists(settings.stream) else []
    group = next((g for g in groups if g["name"].decode() == settings.group), None)
    report.update(stream_length=length, stream_oldest_age_s=id_age_s(first[0][0], now_ms) if first else None,
                  group_exists=group is not None, lag=length, pending=0)
    if group is not None:
        report.update(lag=group.get("lag"), pending=int(group["pending"]))
    if report["pending"]:
        oldest = redis.xpending_range(settings.stream, settings.group, min="-", max="+", count=1)
        if oldest:
            report["pending_oldest_age_s"] = id_age_s(oldest[0]["message_id"], now_ms)
            report["pending_oldest_idle_s"] = round(oldest[0]["time_since_delivered"] / 1000, 1)
    queues = [Queue(name, connection=redis) for name in (settings.queue, settings.replay_queue)]
    report["queue_depth"], report["replay_queue_depth"] = (q.count for q in queues)
    report["workers"] = len({w.name for q in queues for w in Worker.all(queue=q)})
    # zcount above "now" instead of .count: .count runs a cleanup, a write; expired ones are not failures to look at.
    report["failed_jobs"] = sum(int(redis.zcount(FailedJobRegistry(queue=q).key, time.time(), "+inf")) for q in queues)


def read_postgres(conn: psycopg.Connection, report: dict[str, Any]) -> None:
    report["dead_letters"] = conn.execute("SELECT count(*) FROM dead_letters WHERE requeued_at IS NULL").fetchone()[0]
    per_provider = conn.execute(
        "SELECT provider, count(*) FROM events WHERE received_at >= now() - make_interval(secs => %s)"
        " GROUP BY provider ORDER BY provider", (WINDOW_S,)).fetchall()
    report["events_per_minute"] = {p: round(n * 60 / WINDOW_S, 2) for p, n in per_provider}


def collect(settings: Settings) -> dict[str, Any]:
    """The report, each source on its own: one being down never hides the other."""
    report = empty_report(settings)
    redis = Redis.from_url(settings.redis_url_or_default(), socket_timeout=5, socket_connect_timeout=2)
    try:
        read_redis(redis, settings, report)
    except RedisError as exc:
        report["errors"].append(f"redis: {_first_line(exc)}")
    finally:
        redis.close()
    try:
        with psycopg.connect(settings.database_url_or_default(), autocommit=True, connect_timeout=5) as conn:
            read_postgres(conn, report)
    except psycopg.Error as exc:
        report["errors"].append(f"postgres: {_first_line(exc)}")
    return report


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
