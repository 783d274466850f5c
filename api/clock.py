"""The revocation clock's waiting side: how long the oldest opt-out signal has waited unapplied.

Two queues hold signals that are not consent changes yet:

- `stream`: raw entries the workers have not committed (pending or not yet delivered). Any of
  them may be a STOP, and nothing tells which before it is normalized, so the oldest entry's age
  is an upper bound for the oldest unapplied STOP;
- `review`: `possible_opt_out` replies waiting for a person (the consent_review view).

Served as `hookstream_consent_unapplied_opt_out_age_seconds{queue=...}` on the API's /metrics;
deploy/prometheus/alerts.yaml (group `consent`) alerts on both. The other half of the clock,
receive → commit of each opt-out, is the workers' `hookstream_consent_revocation_seconds`.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Gauge
from redis import Redis

REVIEW_SQL = "SELECT extract(epoch FROM now() - min(received_at))::float8 FROM consent_review"


class ClockMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.unapplied = Gauge("hookstream_consent_unapplied_opt_out_age_seconds", "Age of the oldest opt-out"
                               " signal not yet applied: the oldest unprocessed raw entry (stream) and the oldest"
                               " possible opt-out waiting for review (review); 0 when none.", ["queue"],
                               registry=self.registry)


def _ms(stream_id: bytes | str) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.split("-")[0])


def oldest_unprocessed_s(redis: Redis, stream: str, group: str, now_s: float | None = None) -> float:
    """Age of the oldest entry the group has not acknowledged (its id's time is its receive time)."""
    now_ms = (now_s if now_s is not None else time.time()) * 1000
    if not redis.exists(stream):
        return 0.0
    groups = {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]): g
              for g in redis.xinfo_groups(stream)}
    oldest: list[int] = []
    info = groups.get(group)
    if info is None:
        first = redis.xrange(stream, "-", "+", count=1)
    else:
        pending = redis.xpending(stream, group)
        if pending.get("pending"):
            oldest.append(_ms(pending["min"]))
        last = info["last-delivered-id"]
        first = redis.xrange(stream, "(" + (last.decode() if isinstance(last, bytes) else last), "+", count=1)
    if first:
        oldest.append(_ms(first[0][0]))
    return max(now_ms - min(oldest), 0.0) / 1000 if oldest else 0.0


async def oldest_review_s(conn: psycopg.AsyncConnection[Any]) -> float:
    cur = await conn.execute(REVIEW_SQL)
    row = await cur.fetchone()
    return max(float(row[0]), 0.0) if row and row[0] is not None else 0.0
