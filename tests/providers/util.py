"""Building raw records for normalizer tests, and finding the providers' published examples."""

from __future__ import annotations

import os
from pathlib import Path

from shared.record import RawRecord

RECEIVED_AT_MS = 1_700_000_000_000


def shared_dir() -> Path:
    """The design folder beside the repository (override with HOOKSTREAM_SHARED_DIR)."""
    path = Path(os.environ.get("HOOKSTREAM_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared")
    if not (path / "provider-examples").is_dir():
        raise RuntimeError(f"provider examples not found under {path}; set HOOKSTREAM_SHARED_DIR")
    return path


def example(relative: str) -> bytes:
    """An example file's payload: comment lines starting with '#' or '<!--' are dropped."""
    raw = (shared_dir() / "provider-examples" / relative).read_bytes()
    lines = [line for line in raw.splitlines(keepends=True) if not line.lstrip().startswith((b"#", b"<!--"))]
    return b"".join(lines).strip()


def record(
    provider: str,
    feed: str,
    body: bytes | str = b"",
    *,
    query: bytes | str = b"",
    method: str = "POST",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> RawRecord:
    return RawRecord(
        provider=provider,
        feed=feed,
        method=method,
        query=query.encode() if isinstance(query, str) else query,
        content_type=content_type,
        headers=headers or {},
        client="127.0.0.1",
        received_at_ms=RECEIVED_AT_MS,
        body=body.encode() if isinstance(body, str) else body,
    )
