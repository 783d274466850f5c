"""Redis stream entry ids read as numbers: one reading for every place that compares or ages them."""

from __future__ import annotations

import re

# Each half of an id (`<ms>-<seq>`) is an unsigned 64-bit integer.
MAX_PART = 2**64 - 1
_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
# XRANGE's open ends, below and above every id.
_ENDS = {"-": (0, 0), "+": (MAX_PART, MAX_PART)}


def id_to_tuple(stream_id: str | bytes) -> tuple[int, int]:
    """`<ms>-<seq>` as (ms, seq), which orders as Redis orders ids. `<ms>` alone has seq 0, and
    XRANGE's `-` and `+` are the lowest and highest ids. Anything else is a ValueError."""
    text = stream_id.decode("ascii", "replace") if isinstance(stream_id, bytes) else stream_id
    if text in _ENDS:
        return _ENDS[text]
    found = _ID.fullmatch(text)
    if found is None or int(found[1]) > MAX_PART or int(found[2] or 0) > MAX_PART:
        raise ValueError(f"{text[:48]!r} is not a stream id (<ms>-<seq>)")
    return int(found[1]), int(found[2] or 0)


def group_lag(reported: int | None, last_delivered: str | bytes, newest: str | bytes | None, length: int) -> int | None:
    """A consumer group's lag as hookstream reports it: 0 when the group has been handed the
    stream's newest entry, whatever Redis says. Redis 7.0 keeps a group's entries-read counter only
    from a replica's full sync, so after a failover onto such a replica XINFO's `lag` stays too high
    by what was read since, for ever (redis/redis#12898). Otherwise Redis's own figure, never more
    than the stream holds (unread entries are never trimmed); None when Redis cannot tell."""
    if newest is None or id_to_tuple(last_delivered) >= id_to_tuple(newest):
        return 0
    return None if reported is None else min(int(reported), length)
