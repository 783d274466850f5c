"""Provider times to timezone-aware UTC. Each provider module names its own time-zone assumption."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from shared.errors import ParseError


def from_local(text: str | None, fmt: str, zone: str) -> datetime | None:
    """A naive provider time read in `zone` (DST-aware), returned in UTC; empty → None."""
    if text is None or not str(text).strip():
        return None
    try:
        naive = datetime.strptime(str(text).strip(), fmt)
    except ValueError as exc:
        raise ParseError(f"time {text!r} does not match {fmt!r}") from exc
    try:
        return naive.replace(tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)
    except OverflowError as exc:  # year 1 or 9999 shifted to UTC leaves datetime's range
        raise ParseError(f"time {text!r} is out of range") from exc


def from_epoch(value: object) -> datetime | None:
    """UNIX seconds (int or numeric string) → UTC; empty → None."""
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=timezone.utc)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise ParseError(f"epoch time {value!r} is not a number of seconds") from exc


def from_iso(text: object) -> datetime | None:
    """ISO-8601; a value without an offset is taken as UTC. Empty → None."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise ParseError(f"time {text!r} is not a string")
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ParseError(f"time {text!r} is not ISO-8601") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError as exc:
        raise ParseError(f"time {text!r} is out of range") from exc


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """A command-line time: ISO-8601 (UTC when no offset) or an age such as `90m`, `2h`, `7d` (ago)."""
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in _UNITS:
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])
    moment = from_iso(text)
    if moment is None:
        raise ParseError("an empty time")
    return moment
