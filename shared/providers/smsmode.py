"""smsmode webhooks: HTTP API v1 query-string callbacks and the REST API's JSON message object.

Shapes (providers.md §2), recognised by content because smsmode lets a customer point either
callback anywhere, and the REST API sends status and MO to one URL:

- v1 delivery report (GET query, or a form POST): `numero`, `date_reception`, `statut`, `smsID`,
  `refClient`, `cost`, `mcc_mnc` → one STATUS event; a `statut` listed in CONSENT (3999, the
  recipient is on smsmode's STOP list) adds a CONSENT event for that recipient in every scope.
- v1 reply (GET query): `numero` (our short code), `message`, `emetteur` (the person),
  `date_reception`, `smsID`, `refClient`, `responseID` → one INBOUND event.
- REST (POST JSON message object, SMS and RCS alike): `direction` MT (or a bare `status` object)
  → STATUS for the person in `recipient.to`, its `status.detail` read through DETAIL (BLACKLISTED
  adds a CONSENT event, as 3999 does); `direction` MO → INBOUND (a text or a tapped suggestion) or
  EVENT (a shared location or file), from the person PERSON_FIELDS finds in `from` or
  `recipient.to`: never a short code or an agent's name.

Time: v1 `date_reception` is naive (DLR `yyyy-MM-dd HH:mm:ss`, reply `ddMMyyyy-HHmmss`); smsmode
does not state its zone, so it is read as Europe/Paris wall time (a French provider; DST-aware, an
ambiguous autumn hour takes its first occurrence). REST times are ISO-8601 (`status.deliveryDate`,
else `sentDate`/`acceptedAt`); one without an offset is taken as UTC.

Dedupe (provider data only): v1 DLR hash(smsID, numero, statut, date_reception) because one smsID
covers a campaign; v1 reply `responseID`, else hash(emetteur, numero, message, date_reception,
smsID); REST MO `messageId`; REST status hash(messageId, status.value, status.deliveryDate). A
CONSENT event takes its STATUS event's key plus ":consent".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.errors import ParseError
from shared.events import GLOBAL_SCOPE, Event, Kind, Outcome, Reason, Status
from shared.keys import hashed_key, natural_key
from shared.phones import SHORT_CODE_MAX_DIGITS, normalize_phone
from shared.providers.base import ParseContext, json_object, query_params, text_or_none
from shared.record import RawRecord
from shared.times import from_iso, from_local

NAME = "smsmode"
FEEDS = frozenset({"mo", "status"})

ZONE = "Europe/Paris"
DLR_TIME = "%Y-%m-%d %H:%M:%S"
MO_TIME = "%d%m%Y-%H%M%S"
# What may separate the digits of a number as written ("+33 6 12-34.56").
_SEPARATORS = str.maketrans("", "", " -.()/")

# v1 `statut` codes (the full annex list, providers.md §2c) and REST `status.value` words (§2d),
# keyed lower case; the two vocabularies do not overlap. Anything else is unknown.
STATUS: dict[str, tuple[Status, Reason | None]] = {
    "0": (Status.SENT, None),  # Sent
    "1": (Status.QUEUED, None),  # In progress
    "2": (Status.FAILED, Reason.OTHER),  # Internal error
    "10": (Status.QUEUED, None),  # Programmed
    "11": (Status.DELIVERED, None),  # Received by the handset
    # Campaign-level "partially delivered": some recipients only, so not a per-recipient delivery.
    "12": (Status.SENT, None),
    # "Issued operator", explicitly temporary: a later 11 is expected.
    "13": (Status.SENT, None),
    "14": (Status.DELIVERED, None),  # Issued / Délivré
    "15": (Status.DELIVERED, None),  # Partially received (campaign)
    "16": (Status.DELIVERED, None),  # Listened (voice)
    "21": (Status.FAILED, Reason.OTHER),  # Not deliverable
    "22": (Status.REJECTED, Reason.OTHER),  # Rejected
    # Our account ran out of credit: rejected before sending, nothing about the recipient.
    "33": (Status.REJECTED, Reason.OTHER),
    # "Routing error (unknown recipient's network)": the number routes nowhere.
    "34": (Status.FAILED, Reason.INVALID_NUMBER),
    "35": (Status.FAILED, Reason.OTHER),  # Reception error
    "36": (Status.REJECTED, Reason.OTHER),  # Message error
    "37": (Status.EXPIRED, Reason.EXPIRED),  # Expired message
    "38": (Status.REJECTED, Reason.OTHER),  # Message too long
    # A template ("Modèle"), not a delivery state.
    "40": (Status.UNKNOWN, None),
    "50": (Status.FAILED, Reason.OTHER),  # Not delivered
    "100": (Status.DELIVERED, None),  # Read
    # "Not read" still means it reached the phone.
    "101": (Status.DELIVERED, None),
    "999": (Status.UNKNOWN, None),  # Undefined
    # 35xx temporary errors: smsmode may still retry; the raw code is kept in provider_status.
    "3501": (Status.FAILED, Reason.OTHER),  # Temporary operator error
    "3502": (Status.FAILED, Reason.OTHER),  # Temporary absence error
    "3503": (Status.FAILED, Reason.OTHER),  # Temporary phone error
    "3504": (Status.FAILED, Reason.OTHER),  # Temporary portability error
    "3521": (Status.FAILED, Reason.OTHER),  # Permanent operator error
    "3522": (Status.FAILED, Reason.OTHER),  # Permanent absence error
    "3523": (Status.FAILED, Reason.OTHER),  # Permanent phone error
    # Stopped by an operator anti-spam filter: refused, not lost.
    "3524": (Status.REJECTED, Reason.BLOCKED),
    # Refused for its content.
    "3525": (Status.REJECTED, Reason.OTHER),
    "3526": (Status.FAILED, Reason.OTHER),  # Permanent portability error
    "3527": (Status.FAILED, Reason.OTHER),  # Permanent roaming error
    "3560": (Status.FAILED, Reason.INVALID_NUMBER),  # Non-routable
    "3599": (Status.FAILED, Reason.OTHER),  # Other error
    "3998": (Status.REJECTED, Reason.INVALID_NUMBER),  # Invalid recipient
    # Blacklisted recipient: on smsmode's STOP list, so never sent (see CONSENT).
    "3999": (Status.REJECTED, Reason.OPTED_OUT),
    # REST `status.value` words, matched case-insensitively with "_" read as a space. smsmode's
    # SDK lists SCHEDULED, ENROUTE, DELIVERED, READ, UNDELIVERABLE and UNDELIVERED; the others
    # are older spellings kept so that no known word falls to unknown.
    "delivered": (Status.DELIVERED, None),
    # RCS read receipt: read implies delivered.
    "read": (Status.DELIVERED, None),
    "failed": (Status.FAILED, Reason.OTHER),
    # The SDK's "UNDELIVERABLE" follows, for one, a send without enough credit; the detail says why.
    "undeliverable": (Status.FAILED, Reason.OTHER),
    # The SDK: a message not delivered within its validity ends as UNDELIVERED (DETAIL's EXPIRED
    # row then makes it expired).
    "undelivered": (Status.FAILED, Reason.OTHER),
    "rejected": (Status.REJECTED, Reason.OTHER),
    "expired": (Status.EXPIRED, Reason.EXPIRED),
    # Same meaning as v1 code 1 "In progress".
    "in progress": (Status.QUEUED, None),
    "scheduled": (Status.QUEUED, None),
    "enroute": (Status.SENT, None),
    "sent": (Status.SENT, None),
}

# REST `status.detail`: why a message ended as it did (every value smsmode's SDK lists), keyed like
# STATUS. A row's status, when it has one, replaces the value's: the detail names a cause the value
# alone does not (a blacklisted number was never sent, whatever the value says). None keeps the
# value's status, or its reason.
DETAIL: dict[str, tuple[Status | None, Reason | None]] = {
    # Progress, not a cause: the value decides.
    "in progress": (None, None),
    "delivered to network": (None, None),
    # Our account's limits: refused before sending, nothing about the recipient (as v1 code 33).
    "insufficient credit": (Status.REJECTED, Reason.OTHER),
    "daily limit exceeded": (Status.REJECTED, Reason.OTHER),
    "organisation monthly limit exceeded": (Status.REJECTED, Reason.OTHER),
    # No route to the destination: smsmode's coverage, not proof that the number is wrong.
    "route not available": (None, Reason.OTHER),
    # An operator's anti-spam filter (as v1 code 3524).
    "spam": (Status.REJECTED, Reason.BLOCKED),
    # Refused before sending (as v1 code 3998).
    "invalid phone number": (Status.REJECTED, Reason.INVALID_NUMBER),
    # On smsmode's STOP list, so never sent (as v1 code 3999, and a row of CONSENT like it).
    "blacklisted": (Status.REJECTED, Reason.OPTED_OUT),
    # The handset or its network cannot take the channel (an RCS message to a phone without RCS).
    "phone not suitable": (None, Reason.OTHER),
    "network not suitable": (None, Reason.OTHER),
    # Refused for its content (as v1 codes 36 and 3525).
    "media invalid": (Status.REJECTED, Reason.OTHER),
    "expired": (Status.EXPIRED, Reason.EXPIRED),
    # A scheduled message we cancelled: final, and nothing about the recipient.
    "cancelled": (None, Reason.OTHER),
    "internal error": (None, Reason.OTHER),
}

# Status codes and details that are also smsmode's own consent decision, keyed like STATUS and
# DETAIL. Neither names a sender, so the consent event's scope is every scope ("*"); no report
# ever lifts it (optout.md §5).
CONSENT: dict[str, Outcome] = {
    "3999": Outcome.OPT_OUT,
    "blacklisted": Outcome.OPT_OUT,
}

# Who the person is in a REST reply (direction MO), by channel: `from` and `recipient.to`, in the
# order to try. The one that is a phone number is the person and the other is our side (a short
# code, or an RCS agent's name); the order decides only when both are. RCS: the SDK types `from`
# as the agent and `recipient.to` as the person, and real callbacks are so, though the API
# reference's example has them the other way round. SMS: the documented reply has the person in
# `from` and the short code in `recipient.to`.
PERSON_FIELDS: dict[str, tuple[str, str]] = {
    "RCS": ("recipient.to", "from"),
    "SMS": ("from", "recipient.to"),
}

# What a REST reply's `body.type` is. A text (an SMS has no type) is read for keywords; a tapped
# suggestion is too, by its label, which is what the person chose: a chip labelled STOP is a STOP.
# A shared location or file has no text: a channel event.
MO_KIND: dict[str, Kind] = {
    "": Kind.INBOUND,
    "TEXT": Kind.INBOUND,
    "BASIC": Kind.INBOUND,
    "SUGGESTION": Kind.INBOUND,
    "LOCATION": Kind.EVENT,
    "FILE": Kind.EVENT,
}

# Fields only one v1 callback carries, to recognise a record sent to the other feed's URL.
REPLY_ONLY = frozenset({"emetteur", "message", "responseID"})
DLR_ONLY = frozenset({"statut", "cost", "mcc_mnc"})


def parse(record: RawRecord, ctx: ParseContext) -> list[Event]:
    """Events of one callback; the shape decides what it is, the feed only breaks ties."""
    body = record.body.lstrip()
    if body and ("json" in record.mime_type or body[:1] in (b"{", b"[")):
        return _rest(record, json_object(record), ctx)
    params = query_params(record)
    if not params:
        raise ParseError("no callback parameters in the query string or form body")
    is_reply, is_dlr = bool(REPLY_ONLY & params.keys()), bool(DLR_ONLY & params.keys())
    if is_reply == is_dlr:
        is_reply = record.feed == "mo"
    return [_reply(record, params, ctx)] if is_reply else _dlr(record, params, ctx)


def _dlr(record: RawRecord, p: Mapping[str, str], ctx: ParseContext) -> list[Event]:
    sms_id, numero = _required(p, "smsID"), _required(p, "numero")
    statut = text_or_none(p.get("statut"))
    key = hashed_key(NAME, Kind.STATUS.value, sms_id, numero, statut, p.get("date_reception"))
    occurred_at = _local_time(p.get("date_reception"), DLR_TIME, MO_TIME)
    return _status_events(
        record, key, statut, payload=p, occurred_at=occurred_at, message_ref=sms_id,
        user_ref=text_or_none(p.get("refClient")),
        phone=normalize_phone(numero, ctx.default_region), phone_raw=numero,
    )


def _reply(record: RawRecord, p: Mapping[str, str], ctx: ParseContext) -> Event:
    emetteur = _required(p, "emetteur")
    response_id = text_or_none(p.get("responseID"))
    if response_id is not None:
        key = natural_key(NAME, Kind.INBOUND.value, response_id)
    else:  # no id: the same reply, retried, hashes alike
        key = hashed_key(NAME, Kind.INBOUND.value, emetteur, p.get("numero"), p.get("message"),
                         p.get("date_reception"), p.get("smsID"))
    numero = text_or_none(p.get("numero"))
    return Event(
        provider=NAME, feed=record.feed, kind=Kind.INBOUND, dedupe_key=key, payload=p,
        occurred_at=_local_time(p.get("date_reception"), MO_TIME, DLR_TIME), provider_event_id=response_id,
        message_ref=text_or_none(p.get("smsID")), phone=normalize_phone(emetteur, ctx.default_region),
        phone_raw=emetteur, counterpart=normalize_phone(numero, ctx.default_region), counterpart_raw=numero,
        body=p.get("message"), user_ref=text_or_none(p.get("refClient")),
    )


def _rest(record: RawRecord, obj: dict[str, Any], ctx: ParseContext) -> list[Event]:
    message_id = _required(obj, "messageId")
    direction = (text_or_none(obj.get("direction")) or "").upper()
    status = _status_object(obj.get("status"))
    if direction not in ("MO", "MT", ""):
        raise ParseError(f"field 'direction' is {direction!r}, expected MT or MO")
    if direction == "" and not status:
        raise ParseError("neither 'direction' nor 'status': cannot tell a reply from a status report")
    sender, to = text_or_none(obj.get("from")), _nested_text(obj, "recipient", "to")
    user_ref = text_or_none(obj.get("refClient"))
    if direction == "MO":
        return [_rest_reply(record, obj, message_id, sender, to, ctx)]
    # A report of a message we sent: `recipient.to` is the person on every channel.
    value = text_or_none(status.get("value"))
    key = hashed_key(NAME, Kind.STATUS.value, message_id, value, text_or_none(status.get("deliveryDate")))
    occurred_at = _iso_time(status, "deliveryDate") or _iso_time(obj, "sentDate", "acceptedAt")
    return _status_events(
        record, key, value, text_or_none(status.get("detail")), payload=obj, occurred_at=occurred_at,
        message_ref=message_id, user_ref=user_ref,
        phone=normalize_phone(to, ctx.default_region), phone_raw=to,
        counterpart=normalize_phone(sender, ctx.default_region), counterpart_raw=sender,
    )


def _rest_reply(record: RawRecord, obj: dict[str, Any], message_id: str, sender: str | None, to: str | None,
                ctx: ParseContext) -> Event:
    """A REST reply: a text (INBOUND) or a shared location or file (EVENT), from the person that
    PERSON_FIELDS finds; `originMessageId` names the message it answers."""
    fields = {"from": sender, "recipient.to": to}
    order = PERSON_FIELDS.get(_channel(obj), PERSON_FIELDS["SMS"])
    person = next((name for name in order if _is_number(fields[name])), None)
    if person is None:
        present = [name for name in order if fields[name]]
        raise ParseError(f"no phone number in a reply: {' or '.join(repr(n) for n in order)} "
                         f"(present: {', '.join(present) or 'neither'})")
    phone_raw, ours = fields[person], fields[order[1] if person == order[0] else order[0]]
    body = obj.get("body")
    body_type = (text_or_none(body.get("type")) or "").upper() if isinstance(body, dict) else ""
    kind = MO_KIND.get(body_type, Kind.INBOUND)
    return Event(
        provider=NAME, feed=record.feed, kind=kind,
        dedupe_key=natural_key(NAME, kind.value, message_id), payload=obj,
        occurred_at=_iso_time(obj, "sentDate", "acceptedAt"), provider_event_id=message_id,
        message_ref=text_or_none(obj.get("originMessageId")),
        phone=normalize_phone(phone_raw, ctx.default_region), phone_raw=phone_raw,
        counterpart=normalize_phone(ours, ctx.default_region), counterpart_raw=ours,
        body=_body_text(body) if kind is Kind.INBOUND else None, user_ref=text_or_none(obj.get("refClient")),
        event_type=body_type if kind is Kind.EVENT else None,
    )


def _status_events(record: RawRecord, key: str, value: str | None, detail: str | None = None,
                   **fields: Any) -> list[Event]:
    """The STATUS event, plus a CONSENT event when its code or detail is a row of CONSENT."""
    code, cause = _code(value), _code(detail)
    status, reason = STATUS.get(code, (Status.UNKNOWN, None))
    by_detail, why = DETAIL.get(cause, (None, None))
    status, reason = by_detail or status, why or reason
    common = {"provider": NAME, "feed": record.feed, "provider_status": value, "provider_reason": detail, **fields}
    events = [Event(kind=Kind.STATUS, dedupe_key=key, status=status, reason=reason, **common)]
    consent = CONSENT.get(code) or CONSENT.get(cause)
    if consent is not None and fields.get("phone"):
        events.append(Event(kind=Kind.CONSENT, dedupe_key=f"{key}:consent", consent=consent,
                            scope=GLOBAL_SCOPE, **common))
    return events


def _channel(obj: Mapping[str, Any]) -> str:
    """`channel.type` (SMS, RCS), else the message's own `type`; upper case, "" when neither."""
    channel = obj.get("channel")
    kind = channel.get("type") if isinstance(channel, dict) else None
    return (text_or_none(kind) or text_or_none(obj.get("type")) or "").upper()


def _is_number(value: str | None) -> bool:
    """A phone number, not a short code (up to 6 digits) nor a name (an RCS agent, a sender id)."""
    if value is None:
        return False
    digits = value.translate(_SEPARATORS).removeprefix("+")
    return digits.isascii() and digits.isdigit() and len(digits) > SHORT_CODE_MAX_DIGITS


def _status_object(value: object) -> dict[str, Any]:
    """REST `status` as an object; a bare value (`"status": "DELIVERED"`) is tolerated."""
    if isinstance(value, dict):
        return value
    return {} if value is None else {"value": value}


def _code(value: str | None) -> str:
    """Table key: numeric codes without leading zeros, words in lower case."""
    text = (value or "").strip().lower().replace("_", " ")
    if text.isascii() and text.isdigit():
        return text.lstrip("0") or "0"
    return text


def _required(mapping: Mapping[str, Any], name: str) -> str:
    value = text_or_none(mapping.get(name))
    if value is None:
        raise ParseError(f"required field {name!r} is missing or empty")
    return value


def _nested_text(obj: Mapping[str, Any], outer: str, inner: str) -> str | None:
    value = obj.get(outer)
    return text_or_none(value.get(inner)) if isinstance(value, dict) else None


def _body_text(value: object) -> str | None:
    """REST `body.text` verbatim (a bare string tolerated); numbers become their digits."""
    if isinstance(value, dict):
        value = value.get("text")
    if isinstance(value, str):
        return value
    return text_or_none(value)


def _local_time(text: str | None, *formats: str) -> datetime | None:
    """The first format that reads `text` as Paris time; each callback's own format comes first."""
    errors = []
    for fmt in formats:
        try:
            return from_local(text, fmt, ZONE)
        except ParseError as exc:
            errors.append(str(exc))
    raise ParseError(f"field 'date_reception': {errors[0]}")


def _iso_time(obj: Mapping[str, Any], *names: str) -> datetime | None:
    """The first of `names` that is set, read as ISO-8601."""
    for name in names:
        if obj.get(name) not in (None, ""):
            return from_iso(obj.get(name))
    return None
