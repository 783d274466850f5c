"""Mx2 Group webhooks: one JSON POST per event, on one URL, classified by its `status`.

Mx2 sends `{subscriberId, cguid, status, statusMessage, textMessage, messageType, datetime}`,
all documented as strings; its own examples spell `statusmessage` in lower case, so keys are
read case-insensitively and values are read leniently (null, "" and numbers are accepted).

- No phone number is sent. The person is the `subscriberId` exactly as received (one per
  campaign and cell phone); it fills `phone` and `phone_raw` and is never normalized.
  `message_ref` and the consent `scope` are the campaign `cguid`; there is no counterpart.
- `occurred_at` is `datetime` ("YYYY-MM-DD HH:MM:SS"). Mx2 does not state its zone: we assume
  America/New_York (a US company whose examples use the 678 area code), DST-aware, so
  "2024-03-25 20:01:58" is 2024-03-26 00:01:58 UTC. An empty value gives None; a value in
  another format is a ParseError rather than a guess.
- Mx2 has no event id: the dedupe key hashes (subscriberId, cguid, status, datetime,
  textMessage), the fields that tell two posts apart while a retry repeats them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.errors import ParseError
from shared.events import Event, Kind, Outcome, Reason, Status
from shared.keys import hashed_key
from shared.providers.base import ParseContext, json_object, lower_keys
from shared.record import RawRecord
from shared.times import from_local

NAME = "mx2"
FEEDS = frozenset({"webhook"})

ZONE = "America/New_York"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
REQUIRED = ("subscriberId", "cguid", "status")

# Delivery reports, by `status` (lowercased, trimmed). Anything else not in SIGNALS is unknown.
STATUS: dict[str, tuple[Status, Reason | None]] = {
    "sent": (Status.SENT, None),
    "delivered": (Status.DELIVERED, None),
    # Refined by FAILURES from statusMessage; an empty or unlisted message stays failed/other.
    "failed": (Status.FAILED, Reason.OTHER),
}

# The five documented statusMessage values of status=failed (lowercased, trimmed).
FAILURES: dict[str, tuple[Status, Reason | None]] = {
    # Temporary ("try again later"), so failed rather than rejected.
    "blocked as spam - temporary": (Status.FAILED, Reason.BLOCKED),
    # A landline or a phone that does not take texts: the number itself is wrong for SMS.
    "not routable": (Status.REJECTED, Reason.INVALID_NUMBER),
    # "May be available in the future": not the number's fault.
    "undeliverable": (Status.FAILED, Reason.OTHER),
    "invalid messaging destination number": (Status.REJECTED, Reason.INVALID_NUMBER),
    "message expired during transmission": (Status.EXPIRED, Reason.EXPIRED),
}

# Statuses that are not delivery reports: what the subscriber did.
SIGNALS: dict[str, tuple[Kind, Outcome | None]] = {
    # A reply: the worker runs the keyword engine on textMessage.
    "received": (Kind.INBOUND, None),
    # Mx2 processed the opt-out itself (optout.md §5).
    "optout": (Kind.CONSENT, Outcome.OPT_OUT),
    # The answer "Yes" to the Initial message, decided by Mx2: an opt-in, not a text to classify.
    "yes": (Kind.CONSENT, Outcome.OPT_IN),
    "click": (Kind.EVENT, None),
}


def _text(data: Mapping[str, Any], name: str) -> str | None:
    """A field as text, as received (not trimmed); numbers become their digits, null stays None."""
    value = data.get(name.lower())
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    raise ParseError(f"field {name!r} is a JSON {type(value).__name__}, expected a string")


def parse(record: RawRecord, ctx: ParseContext) -> list[Event]:
    """One event per post; ParseError when the body is not an Mx2 post.

    `ctx.default_region` is not used: Mx2 sends no phone number to normalize.
    """
    if record.feed not in FEEDS:
        raise ParseError(f"feed {record.feed!r} is not an Mx2 feed (expected 'webhook')")
    payload = json_object(record)
    data = lower_keys(payload)
    fields = {name: _text(data, name) for name in (*REQUIRED, "statusMessage", "textMessage", "datetime")}
    for name in REQUIRED:
        if not (fields[name] or "").strip():
            raise ParseError(f"required field {name!r} is missing or empty")
    subscriber, cguid, status = fields["subscriberId"], fields["cguid"], fields["status"] or ""
    message, text, when = fields["statusMessage"], fields["textMessage"], fields["datetime"]
    key = status.strip().lower()

    kind, consent = SIGNALS.get(key, (Kind.STATUS, None))
    normalized: Status | None = None
    reason: Reason | None = None
    if kind is Kind.STATUS:
        normalized, reason = STATUS.get(key, (Status.UNKNOWN, None))
        if key == "failed":
            normalized, reason = FAILURES.get((message or "").strip().lower(), (normalized, reason))
    return [
        Event(
            provider=NAME,
            feed=record.feed,
            kind=kind,
            dedupe_key=hashed_key(NAME, kind, subscriber, cguid, key, when, text),
            payload=payload,
            occurred_at=from_local(when, TIME_FORMAT, ZONE),
            message_ref=cguid,
            phone=subscriber,
            phone_raw=subscriber,
            body=None if kind is Kind.STATUS else text or None,
            status=normalized,
            provider_status=status,
            provider_reason=message or None,
            reason=reason,
            event_type=key if kind is Kind.EVENT else None,
            consent=consent,
            scope=None if kind in (Kind.STATUS, Kind.EVENT) else cguid,
        )
    ]
