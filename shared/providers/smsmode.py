"""smsmode webhooks (stub: being written)."""

from __future__ import annotations

from shared.errors import ParseError
from shared.events import Event
from shared.providers.base import ParseContext
from shared.record import RawRecord

NAME = "smsmode"
FEEDS = frozenset({"mo", "status"})


def parse(record: RawRecord, ctx: ParseContext) -> list[Event]:
    raise ParseError("not implemented yet")
