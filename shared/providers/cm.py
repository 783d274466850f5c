"""CM.com: SMS MO replies, Business Messaging incoming messages and events, status reports.

CM signs nothing and gives each product its own URL, so a feed takes only its own shapes: "mo"
takes the SMS MO webhook (Json, Xml or Get; its Xml shares the status reports' MESSAGES/MSG
envelope, told apart by its elements) and the Business Messaging incoming message (told apart
by shape: there `from` is an object), "events" the incoming events, "status" the status reports
(the format an account chooses: JSON `messages.msg`, XML under a `MESSAGES` root with or without
its older `SENT` attribute, or the flat GET query `reference, sent, received, to, statuscode,
errorcode, errordescription`). A body of another feed's shape is a ParseError saying so, not a guess.

Who a `number` names depends on the channel (CHANNELS): an MSISDN on SMS, WhatsApp, RCS and Viber,
the platform's own account id elsewhere (Apple, Messenger, Instagram…), kept as sent so that a
short all-digit id never becomes somebody's phone number. Consent decided by CM is data too:
CONSENT_EVENTS lists the incoming event types that are one.

Identity: only events carry an id (top-level `reference`, older payloads `event.reference`). An MO's
and a status report's `reference` echoes our MT's reference (message_ref and user_ref), so their
keys hash raw content: CM retries an MO every 5 minutes for a month and every retry must collapse.

Time: `timeUtc` (`yyyy-MM-ddTHH:mm:ss`, UTC without offset) for Business Messaging; the status
report's `received` (the moment CM registered the report; format unconfirmed, `2009-06-15T13:45:30`
in a third-party example) is read as ISO-8601 or `yyyy-MM-dd HH:mm:ss`, assumed UTC.
No key depends on them, so a value that is not a date (the template's "[CREATED_S]") gives
occurred_at None. The SMS MO carries no time: None (the worker keeps our receive time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from enum import Enum
from typing import Any
from xml.etree.ElementTree import Element

from shared.errors import ParseError
from shared.events import Event, Kind, Outcome, Reason, Status
from shared.keys import hashed_key, natural_key
from shared.phones import normalize_phone
from shared.providers.base import (
    ParseContext,
    json_object,
    looks_like_xml,
    lower_keys,
    query_params,
    text_or_none,
    xml_root,
)
from shared.record import RawRecord
from shared.times import from_iso

NAME = "cm"
FEEDS = frozenset({"mo", "events", "status"})

# Keys are lower case. The numeric codes 0-3 are those the Salesforce plugin in CM's GitHub
# organization reads (0 Accepted, 1 Rejected, 2 Delivered, 3 Failed; 4 is unconfirmed); the words
# are CM's documented vocabulary (providers.md §1d).
STATUS: dict[str, tuple[Status, Reason | None]] = {
    # 0: accepted by the operator, delivery not yet confirmed
    "0": (Status.SENT, None),
    "1": (Status.REJECTED, None),
    "2": (Status.DELIVERED, None),
    "3": (Status.FAILED, None),
    # 4: read (non-SMS channels); reading implies delivery
    "4": (Status.DELIVERED, None),
    "sent": (Status.SENT, None),
    "accepted": (Status.SENT, None),
    "delivered": (Status.DELIVERED, None),
    # CM itself refused the request and will not send: nothing reached an operator
    "cancelled": (Status.REJECTED, None),
    "rejected": (Status.REJECTED, None),
    "failed": (Status.FAILED, None),
    "read": (Status.DELIVERED, None),
}

# The report's error code, when the status is a failure: CM's status report specification (§4 of
# its "http_SR" document, as transcribed by a third-party integration; CM's current pages do not
# publish it). Codes not listed keep the status row's reason; the raw code stays in the payload.
ERROR_REASONS: dict[str, Reason] = {
    "5": Reason.OTHER,  # undelivered, no detail known
    "7": Reason.OTHER,  # not yet delivered: subscriber credit, being retried
    # expired in the operator's SMSC without another reason
    "8": Reason.EXPIRED,
    "20": Reason.OTHER,  # undeliverable in its current form
    "21": Reason.OTHER,  # expired while retried for subscriber credit
    "22": Reason.OTHER,  # refused for subscriber credit
    # incorrect, invalid, blacklisted or permanently barred MSISDN: not to be used again
    "23": Reason.INVALID_NUMBER,
    "24": Reason.OTHER,  # subscriber temporarily absent
    "25": Reason.OTHER,  # temporary operator network error
    "26": Reason.OTHER,  # temporary phone error (SIM full…)
    "27": Reason.OTHER,  # handset permanently unable to receive this content
    # suspected spam on the operator network
    "28": Reason.BLOCKED,
    # this content is not permitted on the network or short code
    "29": Reason.BLOCKED,
    "30": Reason.OTHER,  # subscriber spend limit reached
    "31": Reason.OTHER,  # subscriber cannot be billed
    # adult content: parental lock, failed or missing age verification
    "33": Reason.BLOCKED,
    "34": Reason.BLOCKED,
    "35": Reason.BLOCKED,
    "36": Reason.BLOCKED,
    # on the national blacklist (NL "SMS dienstenfilter", a block on paid services): blocked, but
    # not an opt-out from this sender, so no consent event
    "37": Reason.BLOCKED,
}
_FAILURES = frozenset({Status.FAILED, Status.REJECTED, Status.EXPIRED})


class Identity(Enum):
    """What a channel's `number` fields hold."""

    PHONE = "phone"  # an MSISDN: normalized to E.164, the raw value kept beside
    ACCOUNT = "account"  # the platform's own user, page or agent id: kept as sent


# Channels CM documents (incoming-messages page, its per-channel pages and CM's SDK channel enums),
# keyed by the name in lower case without spaces or punctuation ("Apple Business Chat" →
# "applebusinesschat"). A payload without a channel (SMS MO, status reports) names phone numbers;
# a channel not listed here names ids, so that a new channel's short all-digit id is never
# normalized into somebody's phone number.
CHANNELS: dict[str, Identity] = {
    "sms": Identity.PHONE,
    "whatsapp": Identity.PHONE,
    # the person's MSISDN; our side is an agent id ("00cm.com_agent") that the phone rules keep
    "rcs": Identity.PHONE,
    "viber": Identity.PHONE,
    "voice": Identity.PHONE,
    # Apple ids (an opaque user id, a business GUID). Incoming messages still say
    # "Apple Business Chat"; the SDKs call the channel "iMessage".
    "applebusinesschat": Identity.ACCOUNT,
    "applemessagesforbusiness": Identity.ACCOUNT,
    "imessage": Identity.ACCOUNT,
    "instagram": Identity.ACCOUNT,  # IGSID and Instagram account id
    "facebookmessenger": Identity.ACCOUNT,  # page-scoped user id (PSID) and page id
    "messenger": Identity.ACCOUNT,
    "facebook": Identity.ACCOUNT,
    "googlebusinessmessages": Identity.ACCOUNT,
    "telegram": Identity.ACCOUNT,
    "twitter": Identity.ACCOUNT,
    "line": Identity.ACCOUNT,
    # a phone number or an app installation id, not told apart: kept as sent rather than guessed
    "push": Identity.ACCOUNT,
    "mobilepush": Identity.ACCOUNT,
}

# Incoming event types (lower case) that are the person's own consent decision, taken by CM
# (optout.md §5), with the channel CM documents them on, assumed when a payload names none.
# Each yields one CONSENT event for the sender in the scope of the account it went to.
CONSENT_EVENTS: dict[str, tuple[Outcome, str]] = {
    # Marketing Messages (Facebook Messenger, Instagram): the person subscribed
    "optinsubscribed": (Outcome.OPT_IN, "Facebook Messenger"),
    # ...or pressed "Continue messages" before the subscription's token expired
    "optinextended": (Outcome.OPT_IN, "Facebook Messenger"),
}
# The SMS MO "Xml" format puts replies in the status report's envelope, MESSAGES/MSG, with
# elements of its own (as the Salesforce plugin in CM's GitHub organization receives them): each
# is named here by the SMS MO JSON field it is. `ID` is CM's id of the reply; `SENT`, of unstated
# zone, stays in the payload only.
XML_MO_FIELDS: dict[str, str] = {
    "sender": "from", "receiver": "to", "message": "body", "reference": "reference",
    "customgrouping": "grouping1", "customgrouping2": "grouping2", "customgrouping3": "grouping3",
}
_SMS_MO, _BM_MESSAGE = "an SMS MO", "a Business Messaging incoming message"
_BM_EVENT, _REPORT = "a Business Messaging event", "a status report"
_FEED_SHAPES = {"mo": {_SMS_MO, _BM_MESSAGE}, "events": {_BM_EVENT}, "status": {_REPORT}}
_XML_DEPTH = 8  # a CM document is 4 levels deep; deeper nesting is refused rather than recursed


def parse(record: RawRecord, ctx: ParseContext) -> list[Event]:
    """The events of one CM request; ParseError for a body that cannot be read or belongs to another feed."""
    if record.feed not in FEEDS:
        raise ParseError(f"unknown cm feed {record.feed!r}")
    data = _decode(record)
    fields = lower_keys(data)  # once: every step below reads the body's fields by lower-case name
    shape = _shape(fields)
    if shape is not None and shape not in _FEED_SHAPES[record.feed]:
        raise ParseError(f"looks like {shape}, arrived on {record.feed}")
    if record.feed == "status":
        return _reports(record, data, fields, ctx)
    if record.feed == "events":
        return [_event(record, data, fields, ctx)]
    if shape == _SMS_MO and ("messages" in fields or "msg" in fields):
        return _numbered([_inbound(record, item, lower_keys(item), ctx, business=False, names=XML_MO_FIELDS)
                          for item in _msg_items(fields, "SMS MO without messages.msg")])
    return [_inbound(record, data, fields, ctx, business=shape == _BM_MESSAGE)]


def _decode(record: RawRecord) -> dict[str, Any]:
    """The request as a plain dict: the "Get" query string, an XML document, or a JSON object."""
    if record.method.upper() == "GET":
        params = query_params(record)
        params.pop("token", None)  # our ingress secret, not CM data: never stored in the payload
        return params
    if looks_like_xml(record):
        root = xml_root(record)
        tree = _xml_dict(root, 0)
        # A status report keeps its root, so MESSAGES/MSG reads like the JSON messages.msg;
        # any other root is an MO whose children are the fields.
        return {_tag(root): tree} if _tag(root) in ("messages", "msg") else tree
    return json_object(record)


def _tag(element: Element) -> str:
    return str(element.tag).rsplit("}", 1)[-1].lower()


def _xml_dict(element: Element, depth: int) -> dict[str, Any]:
    """Attributes and children by lower-case name; a repeated child (several MSG) becomes a list."""
    if depth > _XML_DEPTH:
        raise ParseError("XML is nested too deeply for a CM document")
    tree: dict[str, Any] = {str(name).rsplit("}", 1)[-1].lower(): value for name, value in element.attrib.items()}
    for child in element:
        key, value = _tag(child), _xml_dict(child, depth + 1) if len(child) else child.text
        if key in tree:
            prior = tree[key]
            tree[key] = [*prior, value] if isinstance(prior, list) else [prior, value]
        else:
            tree[key] = value
    return tree


def _shape(fields: Mapping[str, Any]) -> str | None:
    """Which CM product a body came from; None when it fits none (the feed's parser says what is missing)."""
    if "messages" in fields or "msg" in fields:
        return _SMS_MO if _holds_replies(fields) else _REPORT
    if "statuscode" in fields:
        return _REPORT
    if "event" in fields:
        return _BM_EVENT
    if isinstance(fields.get("from"), dict) or isinstance(fields.get("to"), dict) or "message" in fields:
        return _BM_MESSAGE
    if "from" in fields or "body" in fields:
        return _SMS_MO
    return None


def _holds_replies(fields: Mapping[str, Any]) -> bool:
    """MESSAGES/MSG holding SMS MO elements (a sender or a text, no status) rather than reports."""
    try:
        items = _msg_items(fields, "no msg")
    except ParseError:
        return False
    return all(isinstance(item, dict) and "status" not in (keys := lower_keys(item))
               and ("sender" in keys or "message" in keys) for item in items)


def _msg_items(fields: Mapping[str, Any], missing: str) -> list[Any]:
    """The msg entries of a `messages.msg` (or bare `msg`) envelope, one or a list; `missing` is
    the ParseError when there are none."""
    messages = fields.get("messages")
    if messages is not None and not isinstance(messages, dict):
        raise ParseError("'messages' is not an object")
    found = lower_keys(messages).get("msg") if messages is not None else fields.get("msg")
    items = found if isinstance(found, list) else [found]
    if found is None or not items:
        raise ParseError(missing)
    return items


def _numbered(events: list[Event]) -> list[Event]:
    """Keys stay content-only, so an item resent in another request still collapses; only an exact
    repeat inside one request gets a `#n` suffix."""
    seen: dict[str, int] = {}
    numbered = []
    for event in events:
        seen[event.dedupe_key] = count = seen.get(event.dedupe_key, 0) + 1
        numbered.append(event if count == 1 else replace(event, dedupe_key=f"{event.dedupe_key}#{count}"))
    return numbered


def _scalar(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if isinstance(value, (dict, list)):
        raise ParseError(f"field {name!r} is a JSON {type(value).__name__}, expected text")
    return text_or_none(value)


def _body(value: object) -> str | None:
    """The text verbatim (spaces kept); a number is tolerated as its digits."""
    if isinstance(value, (dict, list)):
        raise ParseError("message text is an object or a list, expected text")
    return value if isinstance(value, str) or value is None else text_or_none(value)


def _number(fields: Mapping[str, Any], name: str) -> str | None:
    """Business Messaging `from`/`to`: an object with `number` (a bare string is tolerated)."""
    value = fields.get(name)
    return _scalar(lower_keys(value), "number") if isinstance(value, dict) else _scalar(fields, name)


def _groupings(fields: Mapping[str, Any]) -> str:
    """The three groupings as one key part, from a JSON array, XML children or grouping1..3 parameters."""
    value = fields.get("groupings")
    if value is None:
        value = [fields.get(f"grouping{index}") for index in (1, 2, 3)]
    if isinstance(value, dict):  # XML: <GROUPINGS><GROUPING>…</GROUPING>…</GROUPINGS>
        value = list(value.values())
    flat: list[object] = []
    for item in value if isinstance(value, list) else [value]:
        flat.extend(item if isinstance(item, list) else [item])
    parts = [_scalar({"grouping": item}, "grouping") or "" for item in flat]
    return "\x1e".join(parts).rstrip("\x1e")  # absent and ["", "", ""] hash alike


def _utc(value: str | None) -> datetime | None:
    """A CM time as UTC, or None for a value that is not a date (a template placeholder)."""
    try:
        return from_iso(value)
    except ParseError:
        return None


def _identity(channel: str | None) -> Identity:
    """What the numbers of a payload on `channel` hold (see CHANNELS); no channel: phone numbers."""
    if channel is None:
        return Identity.PHONE
    return CHANNELS.get("".join(ch for ch in channel.lower() if ch.isalnum()), Identity.ACCOUNT)


def _who(raw: str | None, channel: str | None, ctx: ParseContext) -> str | None:
    if raw is None or _identity(channel) is Identity.ACCOUNT:
        return raw
    return normalize_phone(raw, ctx.default_region)


def _inbound(record: RawRecord, data: dict[str, Any], lowered: Mapping[str, Any], ctx: ParseContext, business: bool,
             names: Mapping[str, str] | None = None) -> Event:
    """An SMS MO (`from`/`to` strings, `body`; other element `names` mapped onto those) or a
    Business Messaging message (`from.number`, `message.text`). `lowered`: `data`'s fields by
    lower-case name."""
    fields = lowered if names is None else {names.get(key, key): value for key, value in lowered.items()}
    sender, recipient, channel = _number(fields, "from"), _number(fields, "to"), _scalar(fields, "channel")
    if sender is None:
        raise ParseError("incoming message without 'from.number'" if business else "SMS MO without 'from'")
    message = fields.get("message") if business else None
    if message is not None and not isinstance(message, dict):
        raise ParseError("'message' is not an object")
    body = _body(lower_keys(message or {}).get("text") if business else fields.get("body"))
    reference, time_utc = _scalar(fields, "reference"), _scalar(fields, "timeutc")
    parts = [sender, recipient, body, reference, _groupings(fields)] + ([time_utc, channel] if business else [])
    return Event(
        provider=NAME, feed=record.feed, kind=Kind.INBOUND, dedupe_key=hashed_key(NAME, Kind.INBOUND, *parts),
        payload=data, occurred_at=_utc(time_utc), provider_event_id=_scalar(fields, "id") if names else None,
        message_ref=reference, user_ref=reference, body=body, phone=_who(sender, channel, ctx), phone_raw=sender,
        counterpart=_who(recipient, channel, ctx), counterpart_raw=recipient,
    )


def _event(record: RawRecord, data: dict[str, Any], fields: Mapping[str, Any], ctx: ParseContext) -> Event:
    event = fields.get("event")
    if not isinstance(event, dict):
        raise ParseError("'event' is missing or not an object")
    inner = lower_keys(event)
    event_type = _scalar(inner, "type")
    if event_type is None:
        raise ParseError("event without 'event.type'")
    sender, recipient, channel = _number(fields, "from"), _number(fields, "to"), _scalar(fields, "channel")
    time_utc, top_id, inner_id = _scalar(fields, "timeutc"), _scalar(fields, "reference"), _scalar(inner, "reference")
    if top_id is not None:
        key = natural_key(NAME, Kind.EVENT, top_id)
    elif inner_id is not None:  # older payloads: qualified by type in case it names a message, not the event
        key = natural_key(NAME, Kind.EVENT, f"{event_type}:{inner_id}")
    else:  # (type, event.reference, from, to, timeUtc), with event.reference absent
        key = hashed_key(NAME, Kind.EVENT, event_type, None, sender, recipient, time_utc)
    consent, documented_on = CONSENT_EVENTS.get(event_type.lower(), (None, None))
    channel = channel or documented_on
    # A consent decision's scope is the account it was sent to, kept as it came.
    return Event(
        provider=NAME, feed=record.feed, kind=Kind.EVENT if consent is None else Kind.CONSENT, dedupe_key=key,
        payload=data, occurred_at=_utc(time_utc), provider_event_id=top_id or inner_id,
        message_ref=_scalar(fields, "messagecontext"), phone=_who(sender, channel, ctx), phone_raw=sender,
        counterpart=_who(recipient, channel, ctx), counterpart_raw=recipient, event_type=event_type,
        consent=consent, scope=None if consent is None else recipient,
    )


def _reports(record: RawRecord, data: dict[str, Any], fields: Mapping[str, Any], ctx: ParseContext) -> list[Event]:
    """One STATUS event per msg, its payload that msg (see `_numbered` for the keys); `fields`:
    `data`'s by lower-case name."""
    if "messages" not in fields and "msg" not in fields and ("statuscode" in fields or "status" in fields):
        return [_report(record, data, _flat_report(fields), ctx)]  # the GET form: one report, flat
    items = _msg_items(fields, "status report without messages.msg (or a flat statuscode)")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ParseError(f"status report msg #{index} is not an object")
    return _numbered([_report(record, item, lower_keys(item), ctx) for item in items])


def _flat_report(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The GET form's parameters as the msg the JSON and XML forms carry, so all three key alike."""
    code = fields["statuscode"] if "statuscode" in fields else fields.get("status")
    status = {"code": code, "errorcode": fields.get("errorcode"), "errordescription": fields.get("errordescription")}
    return {"received": fields.get("received"), "to": fields.get("to"), "reference": fields.get("reference"),
            "status": status}


def _report(record: RawRecord, payload: dict[str, Any], msg: Mapping[str, Any], ctx: ParseContext) -> Event:
    recipient, reference = _scalar(msg, "to"), _scalar(msg, "reference")
    if recipient is None and reference is None:
        raise ParseError("status report msg has neither 'to' nor 'reference'")
    status = msg.get("status")
    detail = lower_keys(status) if isinstance(status, dict) else {"code": status}
    code, received = _scalar(detail, "code"), _scalar(msg, "received")
    normalized, reason = STATUS.get((code or "").lower(), (Status.UNKNOWN, None))
    if normalized in _FAILURES:
        reason = ERROR_REASONS.get(_scalar(detail, "errorcode") or "", reason)
    return Event(
        provider=NAME, feed=record.feed, kind=Kind.STATUS,
        dedupe_key=hashed_key(NAME, Kind.STATUS, reference, recipient, code, received),
        payload=payload, occurred_at=_utc(received), message_ref=reference, user_ref=reference,
        phone=_who(recipient, None, ctx), phone_raw=recipient, status=normalized, provider_status=code,
        provider_reason=_scalar(detail, "errordescription"), reason=reason,
    )
