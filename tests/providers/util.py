"""Building raw records for normalizer tests, and reading the providers' published examples.

The examples are copies kept in tests/fixtures/ (their sources: tests/fixtures/README.md).
"""

from __future__ import annotations

from pathlib import Path

from shared.record import RawRecord

RECEIVED_AT_MS = 1_700_000_000_000

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(relative: str) -> bytes:
    """A file under tests/fixtures/, byte for byte."""
    return (FIXTURES / relative).read_bytes()


def example(relative: str) -> bytes:
    """An example file's payload: comment lines starting with '#' or '<!--' are dropped."""
    raw = fixture(relative)
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
