"""Mx2 webhook normalizer: the published template and the brief's examples first, then variants.

Each case is `(label, record, expected)`: a list of events, or a ParseError whose reason
contains the given text.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.events import Event, Kind, Outcome, Reason, Status
from shared.keys import hashed_key
from shared.providers import mx2
from shared.providers.base import ParseContext
from shared.record import RawRecord
from tests.providers.util import example, record

CTX = ParseContext(default_region="US")
SUB = "xct7jy"
CGUID = "71349011-E13D-43FC-ADB4-DAE215EA5438"
WHEN = "2024-03-25 20:01:58"
# 20:01:58 EDT (UTC-4, DST began 2024-03-10).
WHEN_UTC = datetime(2024, 3, 26, 0, 1, 58, tzinfo=UTC)


def post(**fields: Any) -> dict[str, Any]:
    """A post shaped like the brief's examples (lower-case `statusmessage`), fields overridden."""
    body: dict[str, Any] = {
        "subscriberId": SUB,
        "cguid": CGUID,
        "status": "sent",
        "statusmessage": "",
        "textMessage": "",
        "messageType": "",
        "datetime": WHEN,
    }
    body.update(fields)
    return body


def rec(body: dict[str, Any] | bytes | str, feed: str = "webhook") -> RawRecord:
    return record("mx2", feed, body if isinstance(body, (bytes, str)) else orjson.dumps(body))


def event(kind: Kind, sent_body: dict[str, Any], /, **fields: Any) -> Event:
    """The expected event: the brief's subject, campaign and time; dedupe key from the documented fields."""
    lowered = {key.lower(): value for key, value in sent_body.items()}
    status_key = str(lowered.get("status", "")).strip().lower()
    text = lowered.get("textmessage")
    defaults: dict[str, Any] = {
        "provider": "mx2",
        "feed": "webhook",
        "kind": kind,
        "dedupe_key": hashed_key("mx2", kind, SUB, CGUID, status_key, lowered.get("datetime"), text),
        "payload": sent_body,
        "occurred_at": WHEN_UTC,
        "message_ref": CGUID,
        "phone": SUB,
        "phone_raw": SUB,
        "provider_status": lowered.get("status"),
    }
    defaults.update(fields)
    return Event(**defaults)


def status_case(label: str, status: str, message: str, normalized: Status, reason: Reason | None) -> tuple:
    body = post(status=status, statusmessage=message)
    return (
        label,
        rec(body),
        [
            event(
                Kind.STATUS,
                body,
                status=normalized,
                reason=reason,
                provider_reason=message or None,
            )
        ],
    )


# The brief's examples, verbatim (the five "Example ... Request Payload" blocks).
BRIEF_SENT = post(status="sent", messageType="Initial")
BRIEF_DELIVERED = post(status="delivered", messageType="Response")
BRIEF_FAILED = post(status="failed", statusmessage="Not routable")
BRIEF_RECEIVED = post(status="received", textMessage="Please call me")
BRIEF_OPTOUT = post(status="optout")

UPPER = {key.upper(): value for key, value in post(status="DELIVERED").items()}
NUMBERS = post(subscriberId=12345, cguid=987, textMessage=42, status="received")
NULLS = post(statusmessage=None, textMessage=None, messageType=None, status="delivered")
BARE = {"subscriberId": SUB, "cguid": CGUID, "status": "delivered"}
CAMEL = post(status="failed")
del CAMEL["statusmessage"]
CAMEL["statusMessage"] = "Undeliverable"

CASES: list[tuple[str, RawRecord, list[Event] | str]] = [
    # Published examples first.
    ("published empty template", rec(example("mx2/webhook-request-template.json")), "'subscriberId'"),
    ("brief: sent", rec(BRIEF_SENT), [event(Kind.STATUS, BRIEF_SENT, status=Status.SENT)]),
    ("brief: delivered", rec(BRIEF_DELIVERED), [event(Kind.STATUS, BRIEF_DELIVERED, status=Status.DELIVERED)]),
    (
        "brief: failed Not routable",
        rec(BRIEF_FAILED),
        [
            event(
                Kind.STATUS,
                BRIEF_FAILED,
                status=Status.REJECTED,
                reason=Reason.INVALID_NUMBER,
                provider_reason="Not routable",
            )
        ],
    ),
    (
        "brief: received",
        rec(BRIEF_RECEIVED),
        [event(Kind.INBOUND, BRIEF_RECEIVED, body="Please call me", scope=CGUID)],
    ),
    (
        "brief: optout",
        rec(BRIEF_OPTOUT),
        [event(Kind.CONSENT, BRIEF_OPTOUT, consent=Outcome.OPT_OUT, scope=CGUID)],
    ),
    (
        "brief: test body (raw bytes)",
        rec(
            b'{"subscriberId": "xct7jy", "cguid": "71349011-E13D-43FC-ADB4-DAE215EA5438", "status": "sent", '
            b'"statusmessage": "", "textMessage": "", "messageType": "Initial", "datetime": "2024-03-25 20:01:58"}'
        ),
        [event(Kind.STATUS, BRIEF_SENT, status=Status.SENT)],
    ),
    # Every row of the tables.
    status_case("failed: blocked as spam", "failed", "Blocked as spam - temporary", Status.FAILED, Reason.BLOCKED),
    status_case("failed: undeliverable", "failed", "Undeliverable", Status.FAILED, Reason.OTHER),
    status_case(
        "failed: invalid destination",
        "failed",
        "Invalid messaging destination number",
        Status.REJECTED,
        Reason.INVALID_NUMBER,
    ),
    status_case(
        "failed: expired", "failed", "Message expired during transmission", Status.EXPIRED, Reason.EXPIRED
    ),
    status_case(
        "failed: other text kept as reason",
        "failed",
        "The destination number is either a landline or a non-routable wireless number.",
        Status.FAILED,
        Reason.OTHER,
    ),
    status_case("failed: no message", "failed", "", Status.FAILED, Reason.OTHER),
    status_case("failed: case and spaces", " FAILED ", "  not ROUTABLE ", Status.REJECTED, Reason.INVALID_NUMBER),
    status_case("delivered: letter case", "Delivered", "", Status.DELIVERED, None),
    status_case("unknown status kept", "bounced", "", Status.UNKNOWN, None),
    status_case("numeric status is unknown", "7", "", Status.UNKNOWN, None),
    (
        "yes: provider-decided opt-in",
        rec(post(status="yes", textMessage="Yes")),
        [
            event(
                Kind.CONSENT,
                post(status="yes", textMessage="Yes"),
                consent=Outcome.OPT_IN,
                scope=CGUID,
                body="Yes",
            )
        ],
    ),
    (
        "click: channel event",
        rec(post(status="click", messageType="Response")),
        [event(Kind.EVENT, post(status="click", messageType="Response"), event_type="click")],
    ),
    (
        "received: text kept verbatim",
        rec(post(status="Received", textMessage="  stop  ")),
        [event(Kind.INBOUND, post(status="Received", textMessage="  stop  "), body="  stop  ", scope=CGUID)],
    ),
    # Variants.
    (
        "camelCase statusMessage",
        rec(CAMEL),
        [event(Kind.STATUS, CAMEL, status=Status.FAILED, reason=Reason.OTHER, provider_reason="Undeliverable")],
    ),
    ("upper-case keys", rec(UPPER), [event(Kind.STATUS, UPPER, status=Status.DELIVERED)]),
    (
        "numbers instead of strings",
        rec(NUMBERS),
        [
            event(
                Kind.INBOUND,
                NUMBERS,
                phone="12345",
                phone_raw="12345",
                message_ref="987",
                scope="987",
                body="42",
                dedupe_key=hashed_key("mx2", "inbound", "12345", "987", "received", WHEN, "42"),
            )
        ],
    ),
    ("nulls in optional fields", rec(NULLS), [event(Kind.STATUS, NULLS, status=Status.DELIVERED)]),
    (
        "only the required fields: no time",
        rec(BARE),
        [event(Kind.STATUS, BARE, status=Status.DELIVERED, occurred_at=None)],
    ),
    (
        "winter time is EST (UTC-5)",
        rec(post(datetime="2024-01-15 12:00:00")),
        [
            event(
                Kind.STATUS,
                post(datetime="2024-01-15 12:00:00"),
                status=Status.SENT,
                occurred_at=datetime(2024, 1, 15, 17, 0, tzinfo=UTC),
            )
        ],
    ),
    (
        "subscriberId kept exactly, not normalized as a phone",
        rec(post(subscriberId="6785551234")),
        [
            event(
                Kind.STATUS,
                post(subscriberId="6785551234"),
                status=Status.SENT,
                phone="6785551234",
                phone_raw="6785551234",
                dedupe_key=hashed_key("mx2", "status", "6785551234", CGUID, "sent", WHEN, ""),
            )
        ],
    ),
    # Garbage and missing ids.
    ("empty body", rec(b""), "not valid JSON"),
    ("not json", rec(b"not json"), "not valid JSON"),
    ("json array", rec(b"[]"), "expected an object"),
    ("json null", rec(b"null"), "expected an object"),
    ("json string", rec(b'"sent"'), "expected an object"),
    ("invalid utf-8", rec(b'{"status": "\xff\xfe"}'), "not valid JSON"),
    ("lone surrogate", rec(b'{"status": "\\ud800"}'), "not valid JSON"),
    ("missing subscriberId", rec({"cguid": CGUID, "status": "sent"}), "'subscriberId'"),
    ("blank subscriberId", rec(post(subscriberId="  ")), "'subscriberId'"),
    ("missing cguid", rec(post(cguid=None)), "'cguid'"),
    ("empty status", rec(post(status="")), "'status'"),
    ("subscriberId is an object", rec(post(subscriberId={"id": 1})), "'subscriberId' is a JSON dict"),
    ("status is a list", rec(post(status=["sent"])), "'status' is a JSON list"),
    ("textMessage is an object", rec(post(textMessage={})), "'textMessage' is a JSON dict"),
    ("datetime in another format", rec(post(datetime="25/03/2024 20:01")), "does not match"),
    ("datetime as a number", rec(post(datetime=20240325)), "does not match"),
    ("datetime beyond year 9999 in UTC", rec(post(datetime="9999-12-31 23:59:59")), "out of range"),
    ("wrong feed", rec(BRIEF_SENT, feed="status"), "not an Mx2 feed"),
]


@pytest.mark.parametrize(("label", "raw", "expected"), CASES, ids=[case[0] for case in CASES])
def test_parse(label: str, raw: RawRecord, expected: list[Event] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(ParseError, match=expected.replace("(", r"\(")):
            mx2.parse(raw, CTX)
        return
    assert mx2.parse(raw, CTX) == expected


def key_of(body: dict[str, Any], **changes: Any) -> str:
    [parsed] = mx2.parse(rec({**body, **changes}), CTX)
    return parsed.dedupe_key


def test_dedupe_key_is_stable_and_distinct() -> None:
    base = key_of(BRIEF_RECEIVED)
    # A retry, another receive time, a different spelling of the status or of a key: same row.
    assert key_of(BRIEF_RECEIVED) == base
    later = dataclasses.replace(rec(BRIEF_RECEIVED), received_at_ms=1_800_000_000_000)
    assert mx2.parse(later, CTX)[0].dedupe_key == base
    assert key_of(BRIEF_RECEIVED, status="RECEIVED") == base
    assert key_of(BRIEF_RECEIVED, messageType="Response") == base
    # Each identifying field tells posts apart.
    for field, value in [
        ("subscriberId", "other"),
        ("cguid", "OTHER-GUID"),
        ("datetime", "2024-03-25 20:01:59"),
        ("textMessage", "Please call me later"),
    ]:
        assert key_of(BRIEF_RECEIVED, **{field: value}) != base, field
    assert key_of(BRIEF_SENT) != key_of(BRIEF_DELIVERED)


def test_dst_fall_back_hour_reads_as_daylight_time() -> None:
    # 01:30 on 2024-11-03 happens twice in New York; the first (EDT, UTC-4) is taken.
    [parsed] = mx2.parse(rec(post(datetime="2024-11-03 01:30:00")), CTX)
    assert parsed.occurred_at == datetime(2024, 11, 3, 5, 30, tzinfo=UTC)


MALFORMED: list[bytes] = [
    b"",
    b" ",
    b"{",
    b"{}",
    b"[]",
    b"0",
    b"true",
    b'"x"',
    b"\x00",
    b"\xff",
    b"<xml/>",
    b"subscriberId=x&cguid=y&status=sent",
    b'{"subscriberId": null, "cguid": null, "status": null}',
    b'{"subscriberId": true, "cguid": false, "status": true}',
    b'{"subscriberId": 1.5e308, "cguid": -0, "status": 1e400}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "datetime": true}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "datetime": [1]}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "datetime": "0001-01-01 00:00:00"}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "datetime": "2024-02-30 00:00:00"}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "datetime": "2024-03-10 02:30:00"}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "datetime": "\\u0000"}',
    b'{"subscriberId": "a", "cguid": "b", "status": "failed", "statusMessage": {"x": 1}}',
    b'{"subscriberId": "a", "cguid": "b", "status": "failed", "statusMessage": 404}',
    b'{"subscriberId": "a", "cguid": "b", "status": "click", "textMessage": []}',
    b'{"subscriberId": "a", "cguid": "b", "status": "\\u0000"}',
    b'{"SUBSCRIBERID": "a", "subscriberid": "", "cguid": "b", "status": "sent"}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "extra": {"deep": [1, 2, {"x": null}]}}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "datetime": 99999999999999999999999}',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent"}  trailing',
    b'{"subscriberId": "a", "cguid": "b", "status": "sent", "subscriberId": {}}',
    b"\xef\xbb\xbf{}",
]


def check_never_raises_other(body: bytes) -> None:
    """Only ParseError may escape; whatever parses is well-formed and serializable."""
    try:
        events = mx2.parse(rec(body), CTX)
    except ParseError as exc:
        assert str(exc)
        return
    for parsed in events:
        assert parsed.provider == "mx2" and parsed.phone == parsed.phone_raw and parsed.phone
        assert parsed.message_ref and parsed.dedupe_key.startswith("mx2:")
        assert parsed.occurred_at is None or parsed.occurred_at.tzinfo is not None
        orjson.dumps(parsed.payload)


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_bodies_raise_only_parse_error(body: bytes) -> None:
    check_never_raises_other(body)


FIELD_NAMES = ["subscriberId", "cguid", "status", "statusMessage", "textMessage", "messageType", "datetime"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["sent", "FAILED", "yes", "optout", "click", "received", WHEN, "9999-12-31 23:59:59"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
SPELLINGS = st.sampled_from(FIELD_NAMES).flatmap(lambda name: st.sampled_from([name, name.lower(), name.upper()]))
KEYS = SPELLINGS | st.text(max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_fuzzed_objects_raise_only_parse_error(body: dict[str, Any]) -> None:
    check_never_raises_other(orjson.dumps(body))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_fuzzed_bytes_raise_only_parse_error(body: bytes) -> None:
    check_never_raises_other(body)
