"""smsmode webhooks: HTTP API v1 query-string callbacks and the REST API's JSON message object.

Shapes (providers.md §2), recognised by content because smsmode lets a customer point either
callback anywhere, and the REST API sends status and MO to one URL:

- v1 delivery report (GET query, or a form POST): `numero`, `date_reception`, `statut`, `smsID`,
  `refClient`, `cost`, `mcc_mnc` → one STATUS event; a `statut` listed in CONSENT (3999, the
  recipient is on smsmode's STOP list) adds a CONSENT event for that recipient in every scope.
- v1 reply (GET query): `numero` (our short code), `message`, `emetteur` (the person),
  `date_reception`, `smsID`, `refClient`, `responseID` → one INBOUND event.
- REST (POST JSON message object): `direction` MO → INBOUND, MT (or a bare `status` object) → STATUS.

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

from datetime import datetime
from typing import Any, Mapping

from shared.errors import ParseError
from shared.events import GLOBAL_SCOPE, Event, Kind, Outcome, Reason, Status
from shared.keys import hashed_key, natural_key
from shared.phones import normalize_phone
from shared.providers.base import ParseContext, json_object, query_params, text_or_none
from shared.record import RawRecord
from shared.times import from_iso, from_local

NAME = "smsmode"
FEEDS = frozenset({"mo", "status"})

ZONE = "Europe/Paris"
DLR_TIME = "%Y-%m-%d %H:%M:%S"
MO_TIME = "%d%m%Y-%H%M%S"

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
    # REST words (literals unconfirmed, matched case-insensitively, "_" read as a space).
    "delivered": (Status.DELIVERED, None),
    # RCS read receipt, outside the documented enumeration; read implies delivered.
    "read": (Status.DELIVERED, None),
    "failed": (Status.FAILED, Reason.OTHER),
    "undeliverable": (Status.FAILED, Reason.OTHER),
    # The support page's "delivered vs. undelivered".
    "undelivered": (Status.FAILED, Reason.OTHER),
    "rejected": (Status.REJECTED, Reason.OTHER),
    "expired": (Status.EXPIRED, Reason.EXPIRED),
    # Same meaning as v1 code 1 "In progress".
    "in progress": (Status.QUEUED, None),
    "scheduled": (Status.QUEUED, None),
    "enroute": (Status.SENT, None),
    "sent": (Status.SENT, None),
}

# Status codes that are also smsmode's own consent decision. 3999 names no sender, so the
# consent event's scope is every scope ("*"); no DLR ever lifts it (optout.md §5).
CONSENT: dict[str, Outcome] = {
    "3999": Outcome.OPT_OUT,
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
        phone_raw = _required(obj, "from")
        return [Event(
            provider=NAME, feed=record.feed, kind=Kind.INBOUND,
            dedupe_key=natural_key(NAME, Kind.INBOUND.value, message_id), payload=obj,
            occurred_at=_iso_time(obj, "sentDate", "acceptedAt"), provider_event_id=message_id,
            phone=normalize_phone(phone_raw, ctx.default_region), phone_raw=phone_raw,
            counterpart=normalize_phone(to, ctx.default_region), counterpart_raw=to,
            body=_body_text(obj.get("body")), user_ref=user_ref,
        )]
    value = text_or_none(status.get("value"))
    key = hashed_key(NAME, Kind.STATUS.value, message_id, value, text_or_none(status.get("deliveryDate")))
    occurred_at = _iso_time(status, "deliveryDate") or _iso_time(obj, "sentDate", "acceptedAt")
    return _status_events(
        record, key, value, payload=obj, occurred_at=occurred_at, message_ref=message_id, user_ref=user_ref,
        phone=normalize_phone(to, ctx.default_region), phone_raw=to,
        counterpart=normalize_phone(sender, ctx.default_region), counterpart_raw=sender,
    )


def _status_events(record: RawRecord, key: str, value: str | None, **fields: Any) -> list[Event]:
    """The STATUS event, plus a CONSENT event when the code is a row of CONSENT."""
    code = _code(value)
    status, reason = STATUS.get(code, (Status.UNKNOWN, None))
    common = {"provider": NAME, "feed": record.feed, "provider_status": value, **fields}
    events = [Event(kind=Kind.STATUS, dedupe_key=key, status=status, reason=reason, **common)]
    consent = CONSENT.get(code)
    if consent is not None and fields.get("phone"):
        events.append(Event(kind=Kind.CONSENT, dedupe_key=f"{key}:consent", consent=consent,
                            scope=GLOBAL_SCOPE, **common))
    return events


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
