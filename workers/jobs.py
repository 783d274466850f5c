"""The RQ job functions: small, importable, JSON-serializable arguments (stream ids, never bodies)."""

from __future__ import annotations

from typing import Any

from workers import context
from workers.batch import run_batch


def process_batch(ids: list[str]) -> dict[str, Any]:
    return run_batch(context.current(), ids)


def dead_letter_batch(ids: list[str], reason: str) -> dict[str, Any]:
    """Entries that failed too many deliveries: stored as dead letters with the raw record."""
    return run_batch(context.current(), ids, dead_reason=reason)
