"""What the operator sees of the pipeline, read from Redis and Postgres: its status, deliverability per
provider, sender and day, and the dead letters.

Readers only: the queries and the plain data they return, on connections the caller opens and closes.
The `hookstream status`, `stats` and `dead-letters` commands print this data for a terminal, the
dashboard shows it on a page: both read the same numbers through the same functions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row
from redis import Redis
from redis.exceptions import RedisClusterException, RedisError
from rq import Queue, Worker
from rq.registry import FailedJobRegistry

from shared import connections
from shared.settings import Settings
from shared.shards import Shard
from shared.streamids import group_lag, id_to_tuple

Row = dict[str, Any]
Conn = psycopg.Connection[Any]


def first_line(exc: BaseException) -> str:
    """An error as one line for a report's `errors` (a driver's message can run over several)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- Status: is the pipeline keeping up? -----------------------------------------------------------
# Every number is read, not estimated, without RQ's registry cleanups (only Worker.all drops a dead
# worker's stale registration, as RQ does everywhere). The keys are those of `hookstream status --json`.

WINDOW_S = 300
KEYS = ("stream", "stream_length", "stream_oldest_age_s", "group", "group_exists", "lag", "pending",
        "pending_oldest_age_s", "pending_oldest_idle_s", "queue", "queue_depth", "replay_queue",
        "replay_queue_depth", "workers", "failed_jobs", "dead_letters", "events_per_minute", "window_s", "errors",
        "shards")
# Each of `shards`: the stream figures of one shard; the report's own are their totals (sums, or the
# oldest of the ages).
SHARD_KEYS = ("shard", "stream", "stream_length", "stream_oldest_age_s", "group_exists", "lag", "pending",
              "pending_oldest_age_s", "pending_oldest_idle_s")


def empty_report(settings: Settings) -> dict[str, Any]:
    report: dict[str, Any] = dict.fromkeys(KEYS)
    report.update(stream=settings.stream, group=settings.group, queue=settings.queue,
                  replay_queue=settings.replay_queue, window_s=WINDOW_S, errors=[])
    return report


def id_age_s(stream_id: bytes | str, now_ms: int) -> float:
    """Age of an entry from its id: ids are Redis's own clock in ms, so compare with Redis TIME."""
    ms = id_to_tuple(stream_id)[0]
    return round(max(0, now_ms - ms) / 1000, 1)


def read_redis(redis: Redis, settings: Settings, report: dict[str, Any], queue_redis: Redis | None = None,
               shards: Sequence[Shard] | None = None) -> None:
    """The streams' figures from `redis`, shard by shard and in total; RQ's from `queue_redis` (by
    default the same client). `shards`: by default as connections.stream_shards finds them."""
    seconds, micros = redis.time()
    now_ms = seconds * 1000 + micros // 1000
    shards = shards if shards is not None else connections.stream_shards(settings, redis)
    per_shard = [read_shard(redis, settings, shard, now_ms) for shard in shards]
    report["shards"] = per_shard
    report.update(totals(per_shard))
    if len(per_shard) > 1:
        report["stream"] = ", ".join(figures["stream"] for figures in per_shard)
    read_queues(redis if queue_redis is None else queue_redis, settings, report)


def read_shard(redis: Redis, settings: Settings, shard: Shard, now_ms: int) -> dict[str, Any]:
    figures: dict[str, Any] = dict.fromkeys(SHARD_KEYS)
    length = int(redis.xlen(shard.stream))
    first = redis.xrange(shard.stream, count=1) if length else []
    groups = redis.xinfo_groups(shard.stream) if redis.exists(shard.stream) else []
    group = next((g for g in groups if g["name"].decode() == settings.group), None)
    figures.update(shard=shard.index, stream=shard.stream, stream_length=length,
                   stream_oldest_age_s=id_age_s(first[0][0], now_ms) if first else None,
                   group_exists=group is not None, lag=length, pending=0)
    if group is not None:
        newest = redis.xrevrange(shard.stream, count=1) if length else []
        figures.update(lag=group_lag(group.get("lag"), group["last-delivered-id"], newest[0][0] if newest else None,
                                     length), pending=int(group["pending"]))
    if figures["pending"]:
        oldest = redis.xpending_range(shard.stream, settings.group, min="-", max="+", count=1)
        if oldest:
            figures["pending_oldest_age_s"] = id_age_s(oldest[0]["message_id"], now_ms)
            figures["pending_oldest_idle_s"] = round(oldest[0]["time_since_delivered"] / 1000, 1)
    return figures


def totals(per_shard: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' figures as one: counts summed (None if one shard's is unknown), the oldest age."""
    def total(key: str) -> int | None:
        values = [figures[key] for figures in per_shard]
        return None if any(v is None for v in values) else sum(values)

    def oldest(key: str) -> float | None:
        return max((figures[key] for figures in per_shard if figures[key] is not None), default=None)

    return {"stream_length": total("stream_length"), "lag": total("lag"), "pending": total("pending"),
            "group_exists": all(figures["group_exists"] for figures in per_shard),
            **{key: oldest(key) for key in ("stream_oldest_age_s", "pending_oldest_age_s", "pending_oldest_idle_s")}}


def read_queues(redis: Redis, settings: Settings, report: dict[str, Any]) -> None:
    queues = [Queue(name, connection=redis) for name in (settings.queue, settings.replay_queue)]
    report["queue_depth"], report["replay_queue_depth"] = (q.count for q in queues)
    report["workers"] = len({w.name for q in queues for w in Worker.all(queue=q)})
    # zcount above "now" instead of .count: .count runs a cleanup, a write; expired ones are not failures to look at.
    report["failed_jobs"] = sum(int(redis.zcount(FailedJobRegistry(queue=q).key, time.time(), "+inf")) for q in queues)


def read_postgres(conn: Conn, report: dict[str, Any]) -> None:
    report["dead_letters"] = dead_letter_count(conn)
    with conn.cursor(row_factory=tuple_row) as cur:
        per_provider = cur.execute(
            "SELECT provider, count(*) FROM events WHERE received_at >= now() - make_interval(secs => %s)"
            " GROUP BY provider ORDER BY provider", (WINDOW_S,)).fetchall()
    report["events_per_minute"] = {p: round(n * 60 / WINDOW_S, 2) for p, n in per_provider}


def status(settings: Settings, redis: Redis, conn: Conn | None, pg_error: str | None = None, *,
           queue_redis: Redis | None = None, shards: Sequence[Shard] | None = None) -> dict[str, Any]:
    """The status report, each source on its own: one being down never hides the other, its failure
    is a line in `errors`. `conn` None: Postgres could not be reached (`pg_error` says why).
    `queue_redis`: where RQ's queues live, when not on the stream's Redis."""
    report = empty_report(settings)
    try:
        read_redis(redis, settings, report, queue_redis, shards)
    except (RedisError, RedisClusterException) as exc:
        report["errors"].append(f"redis: {first_line(exc)}")
    if conn is None:
        report["errors"].append(f"postgres: {pg_error or 'unavailable'}")
        return report
    try:
        read_postgres(conn, report)
    except psycopg.Error as exc:
        report["errors"].append(f"postgres: {first_line(exc)}")
    return report


# -- Deliverability: the view deliverability_daily (migration 003) -----------------------------------
# It counts messages by their CURRENT status (message_status: one row per message and recipient), not
# status reports: a message reported sent then delivered counts once, as delivered. Days are UTC dates,
# the window is today and the `days - 1` before it by the database's clock.

COUNTS = ("delivered", "failed", "expired", "rejected", "sent", "queued", "unknown", "total")
FINAL = ("delivered", "failed", "expired", "rejected")
DELIVERABILITY_SQL = """
SELECT provider, sender, day, delivered, failed, expired, rejected, sent, queued, unknown, total
FROM deliverability_daily
WHERE day >= (now() AT TIME ZONE 'UTC')::date - (%(days)s::int - 1)
  AND (%(provider)s::text IS NULL OR provider = %(provider)s)
ORDER BY provider, day DESC, sender
"""


def deliverability(conn: Conn, days: int, provider: str | None = None) -> list[Row]:
    """Rows per provider, sender and day: provider, then newest day first, then sender."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(DELIVERABILITY_SQL, {"days": days, "provider": provider}).fetchall()


def delivery_rate(row: Row) -> float | None:
    """delivered / (delivered + failed + expired + rejected): messages still in flight (sent, queued) do
    not lower it; None when nothing is final yet."""
    final = sum(int(row[k]) for k in FINAL)
    return round(int(row["delivered"]) / final, 4) if final else None


def with_totals(rows: list[Row]) -> list[Row]:
    """The rows (provider, then newest day first) with a total row after each provider's; day None marks
    it. A total's rate is recomputed from the summed counts, never an average of daily rates."""
    out: list[Row] = []
    for index, row in enumerate(rows):
        out.append({**row, **{k: int(row[k]) for k in COUNTS}, "delivery_rate": delivery_rate(row)})
        if index + 1 == len(rows) or rows[index + 1]["provider"] != row["provider"]:
            mine = [r for r in rows if r["provider"] == row["provider"]]
            total: Row = {"provider": row["provider"], "sender": None, "day": None,
                          **{k: sum(int(r[k]) for r in mine) for k in COUNTS}}
            out.append({**total, "delivery_rate": delivery_rate(total)})
    return out


# -- Dead letters ----------------------------------------------------------------------------------
# `where` is a condition on dead_letters' columns with %s placeholders for `params` (the commands build
# it from their filters); by default the rows not requeued, the ones someone still has to look at.

NOT_REQUEUED = "requeued_at IS NULL"
LISTED_COLUMNS = ("id, stream_id, provider, feed, method, reason, attempts, received_at, first_seen, last_seen,"
                  " requeued_at")


def dead_letter_count(conn: Conn, where: str = NOT_REQUEUED, params: Sequence[Any] = ()) -> int:
    with conn.cursor(row_factory=tuple_row) as cur:
        found = cur.execute(f"SELECT count(*) FROM dead_letters WHERE {where}", params).fetchone()
    return int(found[0]) if found else 0


def dead_letter_list(conn: Conn, limit: int, where: str = NOT_REQUEUED, params: Sequence[Any] = ()) -> list[Row]:
    """The matching dead letters, newest first, without their raw records (see `dead_letter`)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT {LISTED_COLUMNS} FROM dead_letters WHERE {where}"
                           " ORDER BY last_seen DESC, id DESC LIMIT %s", [*params, limit]).fetchall()


def dead_letter(conn: Conn, letter_id: int) -> Row | None:
    """One dead letter with every column: the raw record's query, headers and body included."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM dead_letters WHERE id = %s", (letter_id,)).fetchone()
