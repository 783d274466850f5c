"""One sample a minute of the pipeline's flow for the dashboard's charts over the last hours
(shared/flow_history.py): lag and pending of the raw stream's shards, the requests appended so far
(XINFO STREAM entries-added), and from Postgres the events received in the last full minute with
their receive→commit latency (events.created_at is its batch transaction's start, a few ms before
the commit). Written by the dispatcher's upkeep into a Redis stream capped at a day.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from redis import Redis
from redis.exceptions import RedisError

from shared import connections, flow_history, reports
from shared.settings import Settings
from shared.shards import Shard, layout

log = logging.getLogger("hookstream.flow_history")

# The last full minute by receive time, served by events_received_at.
MINUTE_SQL = (
    "SELECT count(*), avg(extract(epoch FROM created_at - received_at)) * 1000,"
    " max(extract(epoch FROM created_at - received_at)) * 1000 FROM events"
    " WHERE received_at >= date_trunc('minute', now()) - interval '1 minute'"
    " AND received_at < date_trunc('minute', now())"
)


def postgres_minute(database_url: str) -> dict[str, Any]:
    try:
        with connections.connect(database_url, connections.Role.DISPATCHER) as conn:
            row = conn.execute(MINUTE_SQL).fetchone()
    except psycopg.Error as exc:
        log.warning("flow history: postgres unavailable (%s)", type(exc).__name__)
        return {}
    if row is None:
        return {}
    count, avg_ms, max_ms = row
    return {"events": int(count), "latency_avg_ms": round(float(avg_ms), 1) if avg_ms is not None else None,
            "latency_max_ms": round(float(max_ms), 1) if max_ms is not None else None}


def sample(redis: Redis, settings: Settings, shards: Sequence[Shard] | None = None) -> None:
    """Append one sample; trouble is logged, never raised (the next minute tries again)."""
    shards = shards or layout(settings.key_prefix, 1)
    figures: dict[str, Any] = {"at": datetime.now(UTC).isoformat()}
    try:
        seconds, micros = redis.time()
        per_shard = [reports.read_shard(redis, settings, shard, seconds * 1000 + micros // 1000) for shard in shards]
        figures.update(lag=reports.totals(per_shard)["lag"], pending=reports.totals(per_shard)["pending"])
        added = [int(redis.xinfo_stream(shard.stream).get("entries-added", 0)) if redis.exists(shard.stream) else 0
                 for shard in shards]
        figures["added"] = sum(added)
    except RedisError as exc:
        log.warning("flow history: redis unavailable (%s)", type(exc).__name__)
        return
    figures.update(postgres_minute(settings.database_url_or_default()))
    try:
        redis.xadd(flow_history.key(settings.key_prefix), flow_history.encode(figures),
                   maxlen=flow_history.KEEP, approximate=True)
    except RedisError as exc:
        log.warning("flow history: not written (%s)", type(exc).__name__)
