"""Stream entries → events or dead letters: the pure middle of a batch.

Each entry becomes either its events (inbound texts classified by the keyword engine) or a
dead letter with a reason; one bad entry never blocks the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.errors import ParseError
from shared.events import GLOBAL_SCOPE, Event, Kind, Outcome, amend, check_lengths
from shared.keywords import KeywordPolicy, classify, normalize
from shared.providers import REGISTRY, ParseContext
from shared.record import RawRecord

# Bump when a normalizer changes what it produces: rows remember the version that wrote them.
NORMALIZER_VERSION = 1

CONSENT_OUTCOMES = frozenset({Outcome.OPT_OUT, Outcome.OPT_OUT_ALL, Outcome.OPT_IN})


@dataclass(frozen=True, slots=True)
class NormalizeContext:
    parse: ParseContext = field(default_factory=ParseContext)
    keywords: KeywordPolicy = field(default_factory=KeywordPolicy.default)
    leased_keywords: Mapping[str, frozenset[str]] = field(default_factory=dict)  # provider → leased keywords


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry after normalizing: its events, or the reason it is a dead letter."""

    stream_id: str
    fields: Mapping[bytes, bytes]
    record: RawRecord | None
    events: tuple[Event, ...] = ()
    dead_reason: str | None = None

    def as_dead(self, reason: str) -> Entry:
        return dataclasses.replace(self, events=(), dead_reason=reason)

    def as_raw_dead(self, reason: str) -> Entry:
        """A dead letter of the stream entry's raw bytes alone: no parsed record, nothing archived."""
        return dataclasses.replace(self, record=None, events=(), dead_reason=reason)


def strip_leased(body: str, keyword: str) -> str:
    """The text without a leading leased keyword ("foo hello" → "hello"); the payload keeps it all."""
    head, _, rest = body.strip().partition(" ")
    return rest.lstrip() if normalize(head) == [keyword] else body


def classify_inbound(event: Event, ctx: NormalizeContext) -> Event:
    """Attach the keyword outcome; a consent outcome also sets the consent action and scope."""
    leased = ctx.leased_keywords.get(event.provider, frozenset())
    match = classify(event.body, ctx.keywords, leased)
    scope = event.scope or event.counterpart or ""
    body = event.body
    if match.leased_keyword:
        scope = f"{scope}/{match.leased_keyword}" if scope else scope
        body = strip_leased(body or "", match.leased_keyword)
    outcome = match.outcome
    if not scope and outcome is Outcome.OPT_OUT:
        # A reply that names nothing of ours (GatewayAPI's messaging API) cannot be scoped: the person
        # asked to stop, so it stops everything. An unscoped opt-in reopens nothing.
        scope = GLOBAL_SCOPE
    return amend(event, body=body, outcome=outcome, keyword=match.keyword,
                 consent=outcome if outcome in CONSENT_OUTCOMES else None, scope=scope or None)


def normalize_entry(stream_id: str, fields: Mapping[bytes, bytes], ctx: NormalizeContext) -> Entry:
    try:
        record = RawRecord.from_fields(fields, stream_id)
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        return Entry(stream_id, fields, None, dead_reason=f"not a hookstream record: {exc!r}")
    provider = REGISTRY.get(record.provider)
    if provider is None or record.feed not in provider.FEEDS:
        return Entry(stream_id, fields, record, dead_reason=f"unknown provider/feed {record.provider}/{record.feed}")
    try:
        events = provider.parse(record, ctx.parse)
        for event in events:
            check_lengths(event)
    except ParseError as exc:
        return Entry(stream_id, fields, record, dead_reason=f"parse error: {exc}")
    except Exception as exc:  # a normalizer bug must cost one dead letter, not the batch
        return Entry(stream_id, fields, record, dead_reason=f"normalizer failed: {type(exc).__name__}: {exc}")
    if not events:
        return Entry(stream_id, fields, record, dead_reason="no events in the record")
    classified = tuple(classify_inbound(e, ctx) if e.kind is Kind.INBOUND else e for e in events)
    return Entry(stream_id, fields, record, classified)


def normalize_entries(entries: list[tuple[str, Mapping[bytes, bytes]]], ctx: NormalizeContext) -> list[Entry]:
    return [normalize_entry(stream_id, fields, ctx) for stream_id, fields in entries]
