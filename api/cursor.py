"""The API's feed cursor: an opaque string for a feed position (txid, id). Pure.

Opaque so that clients store and return it without reading it; the `c1.` prefix leaves room to
change what is inside without breaking cursors already handed out.
"""

from __future__ import annotations

import base64
import binascii
import re

from shared.feed import Position

PREFIX = "c1."
_INSIDE = re.compile(r"(\d{1,20})\.(\d{1,20})")


class BadCursor(ValueError):
    pass


def encode(position: Position) -> str:
    inside = f"{position.txid}.{position.id}".encode()
    return PREFIX + base64.urlsafe_b64encode(inside).decode().rstrip("=")


def decode(cursor: str) -> Position:
    if not cursor.startswith(PREFIX) or len(cursor) > 64:
        raise BadCursor("not a cursor from this API (pass the `next` of a previous answer)")
    body = cursor[len(PREFIX):]
    try:
        inside = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("not a cursor from this API (pass the `next` of a previous answer)") from None
    match = _INSIDE.fullmatch(inside)
    if match is None or int(match.group(1)) >= 2**64 or int(match.group(2)) >= 2**63:
        raise BadCursor("not a cursor from this API (pass the `next` of a previous answer)")
    return Position(int(match.group(1)), int(match.group(2)))


REVIEW_PREFIX = "r1."


def encode_review(event_row_id: int) -> str:
    """The review queue's cursor: the last event row shown (the queue is in event order)."""
    return REVIEW_PREFIX + base64.urlsafe_b64encode(str(event_row_id).encode()).decode().rstrip("=")


def decode_review(cursor: str) -> int:
    body = cursor[len(REVIEW_PREFIX):] if cursor.startswith(REVIEW_PREFIX) else None
    try:
        inside = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii") if body else ""
    except (binascii.Error, UnicodeDecodeError, ValueError):
        inside = ""
    if not (inside.isascii() and inside.isdigit() and len(inside) <= 18):
        raise BadCursor("not a review cursor from this API (pass the `next` of a previous answer)")
    return int(inside)
