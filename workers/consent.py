"""The workers' side of consent: their stored events as consent signals, applied by `shared.consent`.

Only the events that say something of consent for a subject and a scope are signals; the rules
and the statements are `shared.consent`'s, the same ones a person's review decision runs through.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import psycopg
from prometheus_client import Histogram

from shared import consent
from shared.consent import KEYWORD, OPTED_OUT, OUTCOME_STATE, PROVIDER_SIGNAL, REACH_SCOPE, Signal, archive_key
from shared.events import Event


class Received(Protocol):
    """What a signal needs of the record beside an event: when we received it (a RawRecord has it)."""

    @property
    def received_at(self) -> datetime: ...

    @property
    def stream_id(self) -> str | None: ...


Item = tuple[Event, Received]


def signals_of(items: Sequence[Item]) -> list[Signal]:
    """The consent signals among the events, each at its provider time (the receive time when none),
    with its evidence: the stream entry and archive row it came in, the provider's message id, the text.
    An inbound text decided by the keyword policy is a `keyword` change; a provider's own verdict
    (Mx2 optout/yes, smsmode 3999) is a `provider_signal`."""
    return [
        Signal(event.dedupe_key, event.phone, event.scope, event.consent, event.occurred_at or record.received_at,
               record.received_at, event.keyword, event.provider,
               source=KEYWORD if event.outcome in OUTCOME_STATE else PROVIDER_SIGNAL, stream_id=record.stream_id,
               archive_key=archive_key(record.received_at, record.stream_id) if record.stream_id else None,
               provider_message_id=event.provider_event_id, inbound_text=event.body)
        for event, record in items
        if event.consent in OUTCOME_STATE and event.phone and event.scope
    ]


def apply(cur: psycopg.Cursor[Any], items: Sequence[Item], reach: str = REACH_SCOPE) -> list[dict[str, Any]]:
    """Apply the consent signals of a batch's events in the caller's transaction."""
    return consent.apply(cur, signals_of(items), reach=reach)


def observe_revocations(histogram: Histogram, changes: Sequence[dict[str, Any]], committed_at: float) -> None:
    """The revocation clock: each opt-out change, from its signal's receive time to `committed_at`."""
    for change in changes:
        if change["new_state"] == OPTED_OUT:
            histogram.labels(change["source"]).observe(max(committed_at - change["received_at"].timestamp(), 0.0))
