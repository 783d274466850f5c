"""Provider times to timezone-aware UTC. Each provider module names its own time-zone assumption."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from shared.errors import ParseError

# Fixed-width directives a provider format is made of: (datetime argument's position, width, least,
# most). Within these ranges strptime's own pattern takes exactly `width` digits.
_DIRECTIVES = {"Y": (0, 4, 1, 9999), "m": (1, 2, 1, 12), "d": (2, 2, 1, 31), "H": (3, 2, 0, 23),
               "M": (4, 2, 0, 59), "S": (5, 2, 0, 59)}


@dataclass(frozen=True, slots=True)
class _Layout:
    pattern: re.Pattern[str]  # each directive's digits as a group, literals as themselves
    fields: tuple[tuple[int, int, int], ...]  # (datetime argument's position, least, most) per group


@lru_cache(maxsize=32)
def _layout(fmt: str) -> _Layout | None:
    """`fmt` as one fixed layout when it is a date, maybe a time, and literal characters; else None."""
    pattern: list[str] = []
    fields: list[tuple[int, int, int]] = []
    for literal, directive in re.findall(r"([^%]+)|%(.?)", fmt):
        if literal:
            pattern.append(re.escape(literal))
        elif directive in _DIRECTIVES:
            position, width, least, most = _DIRECTIVES[directive]
            pattern.append(f"([0-9]{{{width}}})")
            fields.append((position, least, most))
        else:
            return None
    positions = {position for position, _, _ in fields}
    if len(positions) != len(fields) or not {0, 1, 2} <= positions:  # strptime's 1900-01-01: not here
        return None
    return _Layout(re.compile("".join(pattern)), tuple(fields))


def _read_fixed(text: str, fmt: str) -> datetime | None:
    """What `datetime.strptime(text, fmt)` returns, for the one exact layout of ASCII digits it
    reads without a choice (`2025-03-25 09:52:17`); None for any other text: ask strptime then.

    strptime takes ~10 µs: a pattern of alternatives (one digit or two, any space) and its
    general bookkeeping. This is the same answer for the layout providers send, ~5× faster.
    """
    layout = _layout(fmt)
    found = layout.pattern.fullmatch(text) if layout is not None else None
    if found is None:
        return None
    values = [0] * 6
    for (position, least, most), digits in zip(layout.fields, found.groups()):  # type: ignore[union-attr]
        values[position] = value = int(digits)
        if not least <= value <= most:
            return None
    try:
        return datetime(*values)
    except ValueError:  # 30 February: strptime says why
        return None


def from_local(text: str | None, fmt: str, zone: str) -> datetime | None:
    """A naive provider time read in `zone` (DST-aware), returned in UTC; empty → None."""
    if text is None or not str(text).strip():
        return None
    stripped = str(text).strip()
    try:
        naive = _read_fixed(stripped, fmt) or datetime.strptime(stripped, fmt)
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
