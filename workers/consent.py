"""The workers' side of consent: their stored events as consent signals, applied by `shared.consent`.

Only the events that say something of consent for a subject and a scope are signals; the rules
and the statements are `shared.consent`'s, the same ones a person's review decision runs through.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import psycopg

from shared import consent
from shared.consent import OUTCOME_STATE, Signal
from shared.events import Event


class Received(Protocol):
    """What a signal needs of the record beside an event: when we received it (a RawRecord has it)."""

    @property
    def received_at(self) -> datetime: ...


Item = tuple[Event, Received]


def signals_of(items: Sequence[Item]) -> list[Signal]:
    """The consent signals among the events, each at its provider time (the receive time when none)."""
    return [
        Signal(event.dedupe_key, event.phone, event.scope, event.consent, event.occurred_at or record.received_at,
               record.received_at, event.keyword, event.provider)
        for event, record in items
        if event.consent in OUTCOME_STATE and event.phone and event.scope
    ]


def apply(cur: psycopg.Cursor[Any], items: Sequence[Item]) -> list[dict[str, Any]]:
    """Apply the consent signals of a batch's events in the caller's transaction."""
    return consent.apply(cur, signals_of(items))
