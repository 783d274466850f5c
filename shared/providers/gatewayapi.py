"""GatewayAPI webhooks: the legacy REST callbacks and the Mobile Messaging API envelope.

Feeds (ingress routes):

- "rest": legacy REST webhooks. Delivery statuses and MO SMS arrive on one URL, so the body's
  shape tells them apart, as GatewayAPI's PHP client does: a DLR has `status` and `msisdn` and no
  `receiver`/`message`; an MO has `receiver`/`message`/`senttime`. The optional
  `X-Gwapi-Signature` JWT is verified at the ingress and its claims equal the body, so only the
  body is read here.
- "events": the Mobile Messaging API envelope `{event_id, timestamp, event_type, event}`; its
  `Signature: v1=…` HMAC is verified at the ingress. Status types become STATUS events; the user
  messages become INBOUND (texts) or EVENT (a shared location or file: nothing a keyword can be
  read in); any other type is kept as an EVENT under its own name.

User messages carry the person in `event.sender` and a `content` whose shape depends on the type
(see CONTENT): an object `{message, encoding, header}` for an SMS text, a plain string for an RCS
text, `{latitude, longitude}` for a location and `{category, thumbnail, payload}` for a file. The
published shapes name no number of ours, so `counterpart` is set only when a `recipient` or
`receiver` is sent all the same; without it a STOP's outcome is kept on its event, but it names
no scope (what the person replied to) for a consent change to apply to.

Time: the legacy DLR `time` and MO `senttime` are UNIX seconds (UTC by definition). The new API's
`event.status_at` / `event.sent_at`, falling back to the envelope `timestamp`, are ISO-8601 with
an offset; a value without one is taken as UTC.

Numbers: `msisdn`, `receiver`, `recipient` and `sender` are JSON integers (digits, no `+`);
normalize_phone makes 8+ digits E.164 and leaves short codes (≤ 6 digits, e.g. 451204) as they are.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.errors import ParseError
from shared.events import Event, Kind, Reason, Status
from shared.keys import hashed_key, natural_key
from shared.phones import normalize_phone
from shared.providers.base import ParseContext, json_object, text_or_none
from shared.record import RawRecord
from shared.times import from_epoch, from_iso

NAME = "gatewayapi"
FEEDS = frozenset({"rest", "events"})

# Keys are GatewayAPI's all-caps states (legacy REST and the new API share them); lookups fold case.
STATUS: dict[str, tuple[Status, Reason | None]] = {
    # "Messages start here, but you should not encounter this state."
    "UNKNOWN": (Status.UNKNOWN, None),
    # Held for a future send time, or in GatewayAPI's own queue: not yet handed to a network.
    "SCHEDULED": (Status.QUEUED, None),
    "BUFFERED": (Status.QUEUED, None),
    "ENROUTE": (Status.SENT, None),
    "DELIVERED": (Status.DELIVERED, None),
    # RCS only (new API): a read receipt implies delivery.
    "READ": (Status.DELIVERED, None),
    "EXPIRED": (Status.EXPIRED, Reason.EXPIRED),
    # "Message was canceled": final, but the docs give no cause.
    "DELETED": (Status.FAILED, None),
    # "Most likely an invalid MSISDN" in GatewayAPI's own words.
    "UNDELIVERABLE": (Status.FAILED, Reason.INVALID_NUMBER),
    # Final: the network accepted on the user's behalf; no delivery receipt will follow.
    "ACCEPTED": (Status.SENT, None),
    "REJECTED": (Status.REJECTED, None),
    # Dropped "due to network-specific rules"; not a consent signal (optout.md §5).
    "SKIPPED": (Status.REJECTED, None),
}

# The published example spells it "messaging.status.sms"; the prose and the SDK say "message.".
_STATUS_TYPES = frozenset({"message.status.sms", "messaging.status.sms", "message.status.rcs"})

# User messages: event type → (kind, shape of `content`). A text's body is its content's text; a
# location or a file is a channel event with no body. "text" accepts both documented text shapes
# (the object of an SMS, the string of an RCS text) on either channel: which one a type uses is
# the provider's choice, and reading a STOP must not hang on it.
CONTENT: dict[str, tuple[Kind, str]] = {
    "user-message.text.sms": (Kind.INBOUND, "text"),
    "user-message.text.rcs": (Kind.INBOUND, "text"),
    "user-message.location.rcs": (Kind.EVENT, "object"),
    "user-message.file.rcs": (Kind.EVENT, "object"),
}


def parse(record: RawRecord, ctx: ParseContext) -> list[Event]:
    """One event per webhook: GatewayAPI never batches callbacks."""
    if record.feed not in FEEDS:
        raise ParseError(f"unknown gatewayapi feed {record.feed!r}")
    body = json_object(record)
    if record.feed == "events":
        return [_envelope(body, record.feed, ctx)]
    # One URL for both legacy callbacks: classify by shape (a DLR never has receiver/message).
    if _has(body, "status") and _has(body, "msisdn") and not _has(body, "receiver", "message"):
        return [_rest_status(body, record.feed, ctx)]
    if _has(body, "receiver", "message", "senttime"):
        return [_rest_inbound(body, record.feed, ctx)]
    raise ParseError(
        "rest body is neither a delivery status (status + msisdn) nor an MO SMS (receiver/message/senttime)"
    )


def _rest_status(body: dict[str, Any], feed: str, ctx: ParseContext) -> Event:
    message_id = _required(body.get("id"), "id", ints=True)
    msisdn = _required(body.get("msisdn"), "msisdn", ints=True)
    raw_status = _required(body.get("status"), "status")
    occurred_at = _epoch(body.get("time"), "time")
    status, reason = _status(raw_status)
    # `code` is hex text ("0x1001"); before 2015 it was the integer `error_code`.
    code = text_or_none(body.get("code")) or text_or_none(body.get("error_code"))
    return Event(
        provider=NAME,
        feed=feed,
        kind=Kind.STATUS,
        # No event id: `id` is shared by all recipients, and a transient state may repeat with
        # a new `time` while a retry repeats the body exactly.
        dedupe_key=hashed_key(NAME, Kind.STATUS, message_id, msisdn, raw_status, text_or_none(body.get("time"))),
        payload=body,
        occurred_at=occurred_at,
        message_ref=message_id,
        phone=normalize_phone(msisdn, ctx.default_region),
        phone_raw=msisdn,
        status=status,
        provider_status=raw_status,
        provider_reason=text_or_none(body.get("error")) or code,
        reason=reason,
        user_ref=text_or_none(body.get("userref")),
    )


def _rest_inbound(body: dict[str, Any], feed: str, ctx: ParseContext) -> Event:
    mo_id = _required(body.get("id"), "id", ints=True)
    msisdn = _required(body.get("msisdn"), "msisdn", ints=True)
    receiver = _scalar(body.get("receiver"), "receiver", ints=True)
    return Event(
        provider=NAME,
        feed=feed,
        kind=Kind.INBOUND,
        dedupe_key=natural_key(NAME, Kind.INBOUND, mo_id),
        payload=body,
        occurred_at=_epoch(body.get("senttime"), "senttime"),
        provider_event_id=mo_id,
        phone=normalize_phone(msisdn, ctx.default_region),
        phone_raw=msisdn,
        counterpart=normalize_phone(receiver, ctx.default_region),
        counterpart_raw=receiver,
        # Verbatim, leased keyword included ("foo stop"): the worker strips it before matching.
        body=_text(body.get("message"), "message"),
    )


def _envelope(body: dict[str, Any], feed: str, ctx: ParseContext) -> Event:
    event_id = _required(body.get("event_id"), "event_id")
    event_type = _required(body.get("event_type"), "event_type")
    event = body.get("event")
    known = event_type in _STATUS_TYPES or event_type in CONTENT
    if known and not isinstance(event, dict):
        raise ParseError(f"'event' of a {event_type} envelope is {type(event).__name__}, expected an object")
    event = event if isinstance(event, dict) else {}
    if event_type in _STATUS_TYPES:
        return _envelope_status(body, event, event_id, feed, ctx)
    if event_type in CONTENT:
        return _user_message(body, event, event_id, event_type, feed, ctx)
    # A type not known yet: kept whole under its own name, read leniently.
    sender = _lenient(event.get("sender"))
    return Event(
        provider=NAME, feed=feed, kind=Kind.EVENT, payload=body, dedupe_key=natural_key(NAME, Kind.EVENT, event_id),
        provider_event_id=event_id, occurred_at=_iso(body.get("timestamp"), "timestamp"),
        message_ref=_lenient(event.get("msg_id")), phone=normalize_phone(sender, ctx.default_region),
        phone_raw=sender, event_type=event_type,
    )


def _envelope_status(body: dict[str, Any], event: dict[str, Any], event_id: str, feed: str,
                     ctx: ParseContext) -> Event:
    recipient = _scalar(event.get("recipient"), "event.recipient", ints=True)
    raw_status = _required(event.get("status"), "event.status")
    status, reason = _status(raw_status)
    return Event(
        provider=NAME, feed=feed, kind=Kind.STATUS, payload=body,
        # The envelope's event_id is the natural key of every event type.
        dedupe_key=natural_key(NAME, Kind.STATUS, event_id), provider_event_id=event_id,
        occurred_at=_iso(event.get("status_at"), "event.status_at") or _iso(body.get("timestamp"), "timestamp"),
        message_ref=_required(event.get("msg_id"), "event.msg_id", ints=True),
        phone=normalize_phone(recipient, ctx.default_region),
        phone_raw=recipient,
        status=status,
        provider_status=raw_status,
        provider_reason=_error_text(event.get("error")),
        reason=reason,
        user_ref=text_or_none(event.get("reference")),
    )


def _user_message(body: dict[str, Any], event: dict[str, Any], event_id: str, event_type: str, feed: str,
                  ctx: ParseContext) -> Event:
    """A message from the person in `event.sender`: a text (INBOUND) or a location or file (EVENT)."""
    kind, shape = CONTENT[event_type]
    sender = _required(event.get("sender"), "event.sender", ints=True)
    # Our side is not in the published shapes; take it when GatewayAPI sends it.
    ours = event.get("recipient") if event.get("recipient") is not None else event.get("receiver")
    receiver = _scalar(ours, "event.recipient", ints=True)
    content = event.get("content")
    text = _content_text(content) if shape == "text" else None
    if shape != "text":
        _check_object(content)
    return Event(
        provider=NAME, feed=feed, kind=kind, payload=body,
        dedupe_key=natural_key(NAME, kind, event_id), provider_event_id=event_id,
        occurred_at=_iso(event.get("sent_at"), "event.sent_at") or _iso(body.get("timestamp"), "timestamp"),
        message_ref=_scalar(event.get("msg_id"), "event.msg_id", ints=True),
        phone=normalize_phone(sender, ctx.default_region),
        phone_raw=sender,
        counterpart=normalize_phone(receiver, ctx.default_region),
        counterpart_raw=receiver,
        body=text,
        event_type=event_type if kind is Kind.EVENT else None,
    )


def _content_text(content: object) -> str | None:
    """A text's body, verbatim: the RCS string itself, or the SMS object's `message`."""
    if isinstance(content, dict):
        return _text(content.get("message"), "event.content.message")
    if content is None or isinstance(content, str):
        return content
    raise ParseError(f"'event.content' is {type(content).__name__}, expected a string or an object")


def _check_object(content: object) -> None:
    """A location or file: its content stays in the payload; only its shape is checked."""
    if content is not None and not isinstance(content, dict):
        raise ParseError(f"'event.content' is {type(content).__name__}, expected an object")


def _status(raw: str | None) -> tuple[Status, Reason | None]:
    """The table row for a state in any letter case; an unknown state is `unknown`."""
    return STATUS.get((raw or "").upper(), (Status.UNKNOWN, None))


def _has(body: dict[str, Any], *names: str) -> bool:
    for name in names:  # a loop, not any(…): called for every legacy webhook
        if body.get(name) is not None:
            return True
    return False


def _scalar(value: object, name: str, *, ints: bool = False) -> str | None:
    """A field as stripped text. Ids and MSISDNs (`ints`) are JSON integers by the docs; their
    digit strings are tolerated too. Any other type is a ParseError naming the field."""
    allowed: tuple[type, ...] = (str, int) if ints else (str,)
    if value is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
        wanted = "an integer or a string" if ints else "a string"
        raise ParseError(f"field {name!r} is {type(value).__name__}, expected {wanted}")
    return text_or_none(value)


def _required(value: object, name: str, *, ints: bool = False) -> str:
    """`_scalar` of a field that must be there."""
    text = _scalar(value, name, ints=ints)
    if text is None:
        raise ParseError(f"required field {name!r} is missing or empty")
    return text


def _text(value: object, name: str) -> str | None:
    """A message body, verbatim (not stripped); absent stays None."""
    if value is None or isinstance(value, str):
        return value
    raise ParseError(f"field {name!r} is {type(value).__name__}, expected a string")


def _epoch(value: object, name: str) -> datetime | None:
    if isinstance(value, bool):
        raise ParseError(f"field {name!r} is a boolean, expected UNIX seconds")
    return from_epoch(value)


def _iso(value: object, name: str) -> datetime | None:
    text = _scalar(value, name)
    return from_iso(text)


def _lenient(value: object) -> str | None:
    """A scalar of an event we do not model: text when it is an integer or a string, else None."""
    return text_or_none(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _error_text(error: object) -> str | None:
    """The new API's `{hex_code, details}`: the details when given, else the code."""
    if isinstance(error, dict):
        return text_or_none(error.get("details")) or text_or_none(error.get("hex_code"))
    return text_or_none(error)
