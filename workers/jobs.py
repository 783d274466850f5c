"""The RQ job functions: small, importable, JSON-serializable arguments (stream ids, never bodies)."""

from __future__ import annotations

from typing import Any

from workers import context
from workers.batch import read_archive, read_entries, replay_entries, run_batch


def process_batch(ids: list[str]) -> dict[str, Any]:
    return run_batch(context.current(), ids)


def dead_letter_batch(ids: list[str], reason: str) -> dict[str, Any]:
    """Entries that failed too many deliveries: stored as dead letters with the raw record."""
    return run_batch(context.current(), ids, dead_reason=reason)


def replay_stream_batch(ids: list[str]) -> dict[str, Any]:
    ctx = context.current()
    return replay_entries(ctx, read_entries(ctx.redis, ctx.settings.stream, ids))


def replay_archive_batch(keys: list[list[str]]) -> dict[str, Any]:
    """`keys`: [received_at ISO-8601, stream id] pairs of raw_archive rows."""
    ctx = context.current()
    return replay_entries(ctx, read_archive(ctx.pool, [(k[0], k[1]) for k in keys]))
