"""GatewayAPI normalizer: published examples first, then every status, feed, variant and garbage.

Each case is `(label, record, expected)`: `expected` is either the fields the one resulting event
must have, or `Rejected(fragment)` for a record that must become a ParseError naming the reason.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.events import Event, Kind, Reason, Status
from shared.keys import hashed_key, natural_key
from shared.providers import gatewayapi
from shared.providers.base import ParseContext
from shared.record import RawRecord
from tests.providers.util import example, fixture, record

CTX = ParseContext(default_region="DK")
P = gatewayapi.NAME


@dataclass(frozen=True)
class Rejected:
    """The record must raise ParseError with this fragment in its reason."""

    fragment: str


def utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def jwt_claims(relative: str) -> bytes:
    """The claims of a published X-Gwapi-Signature JWT: the body GatewayAPI sent beside it."""
    segment = example(relative).decode().split(".")[1]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def rest(body: dict[str, Any] | bytes | str) -> RawRecord:
    return record(P, "rest", body if isinstance(body, (bytes, str)) else json.dumps(body))


def events(body: dict[str, Any] | bytes | str) -> RawRecord:
    return record(P, "events", body if isinstance(body, (bytes, str)) else json.dumps(body))


def dlr_key(*parts: object) -> str:
    return hashed_key(P, "status", *parts)


DLR = {"id": 1000001, "msisdn": 4587654321, "time": 1450000000, "status": "DELIVERED"}
MO = {"id": 7, "msisdn": 4587654321, "receiver": 451204, "message": "foo stop", "senttime": 1450000000}
EVENT_ID = "09c829a2-a77b-422d-8562-2f88e784dfb5"
STAMP = "2025-04-01T11:50:12.003029+00:00"
STAMP_UTC = datetime(2025, 4, 1, 11, 50, 12, 3029, tzinfo=UTC)
SMS_STATUS = {
    "msg_id": "01JNN696A9E0WS89FPYGT15NBX",
    "recipient": 4587654321,
    "reference": "order-42",
    "status": "DELIVERED",
    "status_at": "2025-04-01T13:50:11+02:00",
    "error": None,
}
SMS_TEXT = {
    "msg_id": "01JNN6ABCDEF0WS89FPYGT15NB",
    "sender": 4587654321,
    "sent_at": "2025-04-01T11:50:10+00:00",
    "content": {"message": " foo Hello ", "encoding": "GSM-7", "header": None},
}


def envelope(event_type: str, event: object, /, **extra: object) -> RawRecord:
    body: dict[str, Any] = {"event_id": EVENT_ID, "timestamp": STAMP, "event_type": event_type, "event": event}
    body.update(extra)
    return events({key: value for key, value in body.items() if value is not ...})


def sms_status(**changes: object) -> RawRecord:
    return envelope("message.status.sms", with_(SMS_STATUS, **changes))


def sms_text(**changes: object) -> RawRecord:
    return envelope("user-message.text.sms", with_(SMS_TEXT, **changes))


def with_(base: dict[str, Any], **changes: object) -> dict[str, Any]:
    """A copy of `base` with fields changed; `...` removes a field."""
    merged = {**base, **changes}
    return {key: value for key, value in merged.items() if value is not ...}


Expected = dict[str, Any] | Rejected

# fmt: off
CASES: list[tuple[str, RawRecord, Expected]] = [
    # --- published examples (tests/fixtures/gatewayapi) ---
    ("example_dlr_rest_callback", rest(example("gatewayapi/dlr-rest-callback.json")), {
        "kind": Kind.STATUS, "message_ref": "1000001", "phone": "+4587654321", "phone_raw": "4587654321",
        "occurred_at": utc(1450000000), "status": Status.DELIVERED, "provider_status": "DELIVERED",
        "reason": None, "provider_reason": None, "user_ref": "foobar", "provider_event_id": None,
        "dedupe_key": dlr_key("1000001", "4587654321", "DELIVERED", "1450000000"),
    }),
    ("example_dlr_jwt_claims_json", rest(example("gatewayapi/dlr-x-gwapi-signature-jwt.claims.json")), {
        "kind": Kind.STATUS, "message_ref": "2381703", "phone": "+4542609045", "phone_raw": "4542609045",
        "occurred_at": utc(1522764062), "status": Status.DELIVERED, "user_ref": None, "provider_reason": None,
        "dedupe_key": dlr_key("2381703", "4542609045", "DELIVERED", "1522764062"),
    }),
    ("example_dlr_jwt_decoded", rest(jwt_claims("gatewayapi/dlr-x-gwapi-signature-jwt.txt")), {
        "kind": Kind.STATUS, "message_ref": "2381703", "status": Status.DELIVERED,
        "dedupe_key": dlr_key("2381703", "4542609045", "DELIVERED", "1522764062"),
    }),
    ("example_mo_rest_callback", rest(example("gatewayapi/mo-rest-callback.json")), {
        "kind": Kind.INBOUND, "provider_event_id": "1000001", "message_ref": None,
        "dedupe_key": natural_key(P, "inbound", "1000001"),
        "phone": "+4587654321", "phone_raw": "4587654321", "counterpart": "451204", "counterpart_raw": "451204",
        "body": "foo Hello World", "occurred_at": utc(1450000000), "status": None, "scope": None, "keyword": None,
    }),
    ("example_mo_jwt_thirdparty_decoded", rest(jwt_claims("gatewayapi/mo-x-gwapi-signature-jwt-thirdparty.txt")), {
        "kind": Kind.INBOUND, "provider_event_id": "1000001", "phone": "+4587654321", "counterpart": "451204",
        "body": "foo Hello World", "occurred_at": utc(1450000000),
    }),
    # The claims as printed in providers.md §4f.
    ("example_mo_claims_providers_md", rest(
        '{"id":1000001,"msisdn":4587654321,"receiver":451204,"message":"foo Hello World","senttime":1450000000,'
        '"webhook_label":"test","country_code":"DK","country_prefix":45,"sender":"test","validity_period":3434,'
        '"encoding":"string","mcc":123,"mnc":125,"payload":"bin","udh":"udh string"}'), {
        "kind": Kind.INBOUND, "provider_event_id": "1000001", "counterpart": "451204", "body": "foo Hello World",
    }),
    ("example_messaging_api_envelope_not_json", events(example("gatewayapi/messaging-api-envelope.txt")),
     Rejected("not valid JSON")),
    # The published envelope with its "..." filled in (SDK shape), misspelled type and all.
    ("example_envelope_filled", envelope("messaging.status.sms", SMS_STATUS), {
        "kind": Kind.STATUS, "dedupe_key": natural_key(P, "status", EVENT_ID), "provider_event_id": EVENT_ID,
        "message_ref": "01JNN696A9E0WS89FPYGT15NBX", "phone": "+4587654321", "phone_raw": "4587654321",
        "user_ref": "order-42", "status": Status.DELIVERED, "provider_status": "DELIVERED",
        "occurred_at": datetime(2025, 4, 1, 11, 50, 11, tzinfo=UTC), "event_type": None,
    }),

    # --- rest DLR: every status of the table, then variants ---
    *[
        (f"rest_status_{name.lower()}", rest(with_(DLR, status=name)),
         {"kind": Kind.STATUS, "status": status, "reason": reason, "provider_status": name})
        for name, (status, reason) in gatewayapi.STATUS.items()
    ],
    ("rest_status_lower_case", rest(with_(DLR, status="delivered")),
     {"status": Status.DELIVERED, "provider_status": "delivered"}),
    ("rest_status_mixed_case_undeliverable", rest(with_(DLR, status="Undeliverable")),
     {"status": Status.FAILED, "reason": Reason.INVALID_NUMBER}),
    ("rest_status_unknown_value", rest(with_(DLR, status="TELEPORTED")),
     {"status": Status.UNKNOWN, "provider_status": "TELEPORTED", "reason": None}),
    ("rest_status_error_text_and_code",
     rest(with_(DLR, status="UNDELIVERABLE", error="Unspecified delivery error", code="0x1001")),
     {"provider_reason": "Unspecified delivery error", "reason": Reason.INVALID_NUMBER}),
    ("rest_status_code_only", rest(with_(DLR, status="REJECTED", code="0x1001")),
     {"provider_reason": "0x1001", "status": Status.REJECTED}),
    ("rest_status_legacy_error_code", rest(with_(DLR, status="REJECTED", error_code=4097, error="")),
     {"provider_reason": "4097"}),
    ("rest_status_thirdparty_charge", rest(with_(DLR, error="error text", charge_status="AUTHORIZED", userref="ref")),
     {"provider_reason": "error text", "user_ref": "ref", "status": Status.DELIVERED}),
    ("rest_status_strings_for_numbers", rest(with_(DLR, id="1000001", msisdn="4587654321", time="1450000000")),
     {"message_ref": "1000001", "phone": "+4587654321", "occurred_at": utc(1450000000),
      "dedupe_key": dlr_key("1000001", "4587654321", "DELIVERED", "1450000000")}),
    ("rest_status_no_time", rest(with_(DLR, time=...)),
     {"occurred_at": None, "dedupe_key": dlr_key("1000001", "4587654321", "DELIVERED", None)}),
    ("rest_status_empty_userref", rest(with_(DLR, userref="", error=None)), {"user_ref": None, "provider_reason": None}),
    ("rest_status_national_msisdn", rest(with_(DLR, msisdn="087654321")), {"phone_raw": "087654321"}),
    ("rest_status_jwt_extras_ignored", rest(with_(DLR, callback_url="http://x", api=4)), {"status": Status.DELIVERED}),
    ("rest_status_missing_id", rest(with_(DLR, id=...)), Rejected("'id'")),
    ("rest_status_empty_status", rest(with_(DLR, status="")), Rejected("'status'")),
    ("rest_status_number_status", rest(with_(DLR, status=3)), Rejected("'status'")),
    ("rest_status_dict_msisdn", rest(with_(DLR, msisdn={"n": 1})), Rejected("'msisdn'")),
    ("rest_status_bool_id", rest(with_(DLR, id=True)), Rejected("'id'")),
    ("rest_status_float_msisdn", rest(with_(DLR, msisdn=4587654321.0)), Rejected("'msisdn'")),
    ("rest_status_text_time", rest(with_(DLR, time="yesterday")), Rejected("epoch time")),
    ("rest_status_list_time", rest(with_(DLR, time=[1])), Rejected("epoch time")),
    ("rest_status_bool_time", rest(with_(DLR, time=False)), Rejected("'time'")),
    ("rest_status_huge_time", rest(with_(DLR, time=10**18)), Rejected("epoch time")),

    # --- rest MO ---
    ("rest_mo_keyword_kept_verbatim", rest(MO), {
        "kind": Kind.INBOUND, "body": "foo stop", "dedupe_key": natural_key(P, "inbound", "7"), "provider_event_id": "7",
        "counterpart": "451204", "phone": "+4587654321", "consent": None, "outcome": None,
    }),
    ("rest_mo_whitespace_kept", rest(with_(MO, message="  STOP \n")), {"body": "  STOP \n"}),
    ("rest_mo_long_receiver", rest(with_(MO, receiver=4560575797)),
     {"counterpart": "+4560575797", "counterpart_raw": "4560575797"}),
    ("rest_mo_string_numbers", rest(with_(MO, id="7", msisdn="4587654321", receiver="1204")),
     {"provider_event_id": "7", "phone": "+4587654321", "counterpart": "1204"}),
    ("rest_mo_empty_message", rest(with_(MO, message="")), {"kind": Kind.INBOUND, "body": ""}),
    ("rest_mo_without_receiver", rest(with_(MO, receiver=...)), {"counterpart": None, "counterpart_raw": None}),
    ("rest_mo_without_senttime", rest(with_(MO, senttime=...)), {"occurred_at": None}),
    ("rest_mo_with_status_field_is_mo", rest(with_(MO, status="DELIVERED")), {"kind": Kind.INBOUND}),
    ("rest_mo_missing_id", rest(with_(MO, id=...)), Rejected("'id'")),
    ("rest_mo_missing_msisdn", rest(with_(MO, msisdn=...)), Rejected("'msisdn'")),
    ("rest_mo_dict_receiver", rest(with_(MO, receiver={"x": 1})), Rejected("'receiver'")),
    ("rest_mo_number_message", rest(with_(MO, message=42)), Rejected("'message'")),
    ("rest_mo_bad_senttime", rest(with_(MO, senttime="soon")), Rejected("epoch time")),

    # --- rest: neither shape ---
    ("rest_neither_shape", rest({"id": 1, "foo": "bar"}), Rejected("neither a delivery status")),
    ("rest_status_without_msisdn", rest({"id": 1, "status": "DELIVERED"}), Rejected("neither")),
    ("rest_nulls_only", rest({"id": 1, "msisdn": None, "status": None, "receiver": None}), Rejected("neither")),

    # --- events: status types and every status the new API sends ---
    *[
        (f"events_{etype}_{name.lower()}", envelope(etype, with_(SMS_STATUS, status=name)),
         {"kind": Kind.STATUS, "status": gatewayapi.STATUS[name][0], "reason": gatewayapi.STATUS[name][1]})
        for etype, names in (
            ("message.status.sms",
             ("ENROUTE", "DELIVERED", "EXPIRED", "DELETED", "UNDELIVERABLE", "ACCEPTED", "UNKNOWN", "REJECTED")),
            ("message.status.rcs", ("DELIVERED", "READ", "ENROUTE", "EXPIRED")),
        )
        for name in names
    ],
    ("events_status_read_is_delivered", envelope("message.status.rcs", with_(SMS_STATUS, status="READ")),
     {"status": Status.DELIVERED, "provider_status": "READ"}),
    ("events_status_unknown_value", sms_status(status="BOUNCED"),
     {"status": Status.UNKNOWN, "provider_status": "BOUNCED"}),
    ("events_status_error", sms_status(status="UNDELIVERABLE",
                                     error={"hex_code": "0x1001", "details": "Unspecified delivery error"}),
     {"provider_reason": "Unspecified delivery error", "reason": Reason.INVALID_NUMBER}),
    ("events_status_error_code_only", sms_status(error={"hex_code": "0x1001", "details": None}),
     {"provider_reason": "0x1001"}),
    ("events_status_time_falls_back", sms_status(status_at=...),
     {"occurred_at": STAMP_UTC}),
    ("events_status_naive_time_is_utc", sms_status(status_at="2025-04-01T11:50:11"),
     {"occurred_at": datetime(2025, 4, 1, 11, 50, 11, tzinfo=UTC)}),
    ("events_status_no_reference", sms_status(reference=None), {"user_ref": None}),
    ("events_status_no_recipient", sms_status(recipient=...), {"phone": None}),
    ("events_status_string_recipient", sms_status(recipient="4587654321"),
     {"phone": "+4587654321"}),
    ("events_status_missing_msg_id", sms_status(msg_id=...), Rejected("'event.msg_id'")),
    ("events_status_missing_status", sms_status(status=...), Rejected("'event.status'")),
    ("events_status_dict_recipient", sms_status(recipient={}), Rejected("'event.recipient'")),
    ("events_status_bad_time", sms_status(status_at="noon"), Rejected("ISO-8601")),
    ("events_status_number_time", sms_status(status_at=1450000000), Rejected("'event.status_at' is int")),
    ("events_status_time_out_of_range", sms_status(status_at="0001-01-01T00:00:00+05:00"),
     Rejected("out of range")),
    ("events_status_event_not_object", envelope("message.status.sms", ["x"]), Rejected("expected an object")),

    # --- events: inbound texts ---
    ("events_text_sms", envelope("user-message.text.sms", SMS_TEXT), {
        "kind": Kind.INBOUND, "dedupe_key": natural_key(P, "inbound", EVENT_ID), "provider_event_id": EVENT_ID,
        "message_ref": "01JNN6ABCDEF0WS89FPYGT15NB", "phone": "+4587654321", "phone_raw": "4587654321",
        "body": " foo Hello ", "occurred_at": datetime(2025, 4, 1, 11, 50, 10, tzinfo=UTC),
        "counterpart": None, "status": None,
    }),
    ("events_text_rcs_with_recipient", envelope("user-message.text.rcs", with_(SMS_TEXT, recipient=451204)),
     {"kind": Kind.INBOUND, "counterpart": "451204", "counterpart_raw": "451204"}),
    ("events_text_with_receiver", sms_text(receiver=4560575797),
     {"counterpart": "+4560575797"}),
    ("events_text_time_falls_back", sms_text(sent_at=None), {"occurred_at": STAMP_UTC}),
    ("events_text_no_content", sms_text(content=...), {"body": None}),
    ("events_text_missing_sender", sms_text(sender=...), Rejected("'event.sender'")),
    # An RCS text's content is the text itself; the SMS shape is read on either channel, and so is this one.
    ("events_text_rcs_stop", envelope("user-message.text.rcs", with_(SMS_TEXT, content="STOP")),
     {"kind": Kind.INBOUND, "body": "STOP", "phone": "+4587654321", "dedupe_key": natural_key(P, "inbound", EVENT_ID)}),
    ("events_text_rcs_object_tolerated", envelope("user-message.text.rcs", SMS_TEXT), {"body": " foo Hello "}),
    ("events_text_sms_string_tolerated", sms_text(content="hi"), {"body": "hi"}),
    ("events_text_rcs_empty_string", envelope("user-message.text.rcs", with_(SMS_TEXT, content="")), {"body": ""}),
    ("events_text_content_list", sms_text(content=["hi"]), Rejected("'event.content'")),
    ("events_text_content_number", envelope("user-message.text.rcs", with_(SMS_TEXT, content=5)),
     Rejected("'event.content'")),
    ("events_text_message_not_string", sms_text(content={"message": ["hi"]}),
     Rejected("'event.content.message'")),

    # --- events: everything else is a channel event ---
    ("events_location_rcs", envelope("user-message.location.rcs", {"msg_id": "01X", "sender": 4587654321, "content": {"lat": 1}}), {
        "kind": Kind.EVENT, "event_type": "user-message.location.rcs", "dedupe_key": natural_key(P, "event", EVENT_ID),
        "message_ref": "01X", "phone": "+4587654321", "occurred_at": STAMP_UTC, "status": None, "body": None,
    }),
    ("events_file_rcs_no_content", envelope("user-message.file.rcs", {"msg_id": 5, "sender": 4587654321}),
     {"kind": Kind.EVENT, "event_type": "user-message.file.rcs", "message_ref": "5", "phone": "+4587654321"}),
    ("events_file_rcs_odd_sender", envelope("user-message.file.rcs", {"msg_id": 5, "sender": {"odd": True}}),
     Rejected("'event.sender'")),
    ("events_location_rcs_without_sender", envelope("user-message.location.rcs", {"msg_id": "01X"}),
     Rejected("'event.sender'")),
    ("events_location_rcs_content_string",
     envelope("user-message.location.rcs", {"sender": 4587654321, "content": "x"}), Rejected("'event.content'")),
    ("events_location_rcs_event_not_object", envelope("user-message.location.rcs", "x"),
     Rejected("expected an object")),
    ("events_unknown_type", envelope("account.balance.low", {"balance": 3}),
     {"kind": Kind.EVENT, "event_type": "account.balance.low", "provider_event_id": EVENT_ID}),
    ("events_unknown_type_no_event", envelope("account.ping", ...), {"kind": Kind.EVENT, "message_ref": None}),
    ("events_unknown_type_no_timestamp", envelope("account.ping", {}, timestamp=...), {"occurred_at": None}),
    ("events_missing_event_id", envelope("message.status.sms", SMS_STATUS, event_id=...), Rejected("'event_id'")),
    ("events_empty_event_id", envelope("message.status.sms", SMS_STATUS, event_id=""), Rejected("'event_id'")),
    ("events_number_event_id", envelope("message.status.sms", SMS_STATUS, event_id=5), Rejected("'event_id'")),
    ("events_missing_event_type", envelope("x", SMS_STATUS, event_type=...), Rejected("'event_type'")),
    ("events_bad_envelope_timestamp", envelope("account.ping", {}, timestamp="later"), Rejected("ISO-8601")),
    ("events_rest_body_on_events_feed", events(DLR), Rejected("'event_id'")),

    # --- garbage on both feeds ---
    *[
        (f"{feed}_garbage_{label}", record(P, feed, body), Rejected(fragment))
        for feed in sorted(gatewayapi.FEEDS)
        for label, body, fragment in (
            ("empty", b"", "not valid JSON"),
            ("not_json", b"not json", "not valid JSON"),
            ("array", b"[]", "expected an object"),
            ("string", b'"DELIVERED"', "expected an object"),
            ("invalid_utf8", b'{"id": "\xff\xfe"}', "not valid JSON"),
            ("empty_object", b"{}", "neither" if feed == "rest" else "'event_id'"),
        )
    ],
    ("unknown_feed", record(P, "sms", json.dumps(DLR)), Rejected("unknown gatewayapi feed")),
]
# fmt: on


# --- the Mobile Messaging API's published examples: every event type, each content shape ---

SENT_AT = datetime(2025, 4, 1, 11, 49, 12, 5021, tzinfo=UTC)
EVENTS_EXAMPLE = orjson.loads(fixture("gatewayapi/messaging-api-webhook-events-thirdparty.json"))
OPENAPI_EXAMPLES = orjson.loads(fixture("gatewayapi/messaging-api-openapi-webhook-examples.json"))
MSG = "01K33QFGSHXXM0Q7HM7QS34PY6"

# event_type → the fields its example must give: texts are INBOUND with their text as the body,
# a location or a file is an EVENT named by its type, with no body.
EXAMPLE_EVENTS: dict[str, dict[str, Any]] = {
    "message.status.sms": {"kind": Kind.STATUS, "status": Status.DELIVERED, "phone": "+4512345678",
                           "message_ref": "01JQRJWK259Y1YEECJZB50908V", "user_ref": "<client provided reference>",
                           "occurred_at": SENT_AT, "body": None},
    "message.status.rcs": {"kind": Kind.STATUS, "status": Status.DELIVERED, "provider_status": "READ",
                           "phone": "+4512345678", "provider_reason": None},
    "user-message.text.sms": {"kind": Kind.INBOUND, "body": "Hello World", "phone": "+4512345678",
                              "phone_raw": "4512345678", "message_ref": MSG, "occurred_at": SENT_AT,
                              "event_type": None, "counterpart": None},
    "user-message.text.rcs": {"kind": Kind.INBOUND, "body": "Hello world!", "phone": "+4512345678",
                              "message_ref": MSG, "occurred_at": SENT_AT, "event_type": None},
    "user-message.location.rcs": {"kind": Kind.EVENT, "body": None, "event_type": "user-message.location.rcs",
                                  "phone": "+4512345678", "message_ref": MSG, "occurred_at": SENT_AT},
    "user-message.file.rcs": {"kind": Kind.EVENT, "body": None, "event_type": "user-message.file.rcs",
                              "phone": "+4512345678", "message_ref": MSG, "occurred_at": SENT_AT},
}


def test_the_examples_cover_every_user_message_type() -> None:
    assert [e["event_type"] for e in EVENTS_EXAMPLE] == list(EXAMPLE_EVENTS)
    assert set(gatewayapi.CONTENT) <= set(EXAMPLE_EVENTS)


@pytest.mark.parametrize("envelope_", EVENTS_EXAMPLE, ids=[e["event_type"] for e in EVENTS_EXAMPLE])
def test_every_example_event(envelope_: dict[str, Any]) -> None:
    raw = events(orjson.dumps(envelope_))
    [event] = gatewayapi.parse(raw, CTX)
    assert_contract(event, raw)
    expected = EXAMPLE_EVENTS[envelope_["event_type"]]
    assert {name: getattr(event, name) for name in expected} == expected
    assert event.dedupe_key == natural_key(P, event.kind, "09c829a2-a77b-422d-8562-2f88e784dfb5")


@pytest.mark.parametrize(("name", "status", "reason", "provider_reason"), [
    ("minimal", Status.DELIVERED, None, None),
    ("full example", Status.REJECTED, None, "Unsupported sender"),
    ("rcs", Status.DELIVERED, None, None),
])
def test_openapi_webhook_examples(name: str, status: Status, reason: Reason | None, provider_reason: str | None) -> None:
    raw = events(orjson.dumps(OPENAPI_EXAMPLES[name]["value"]))
    [event] = gatewayapi.parse(raw, CTX)
    assert (event.kind, event.status, event.reason, event.provider_reason) == (Kind.STATUS, status, reason,
                                                                               provider_reason)
    assert event.phone == "+4512345678" and event.message_ref == "01JQRJWK259Y1YEECJZB50908V"


@pytest.mark.parametrize(("label", "raw", "expected"), CASES, ids=[case[0] for case in CASES])
def test_parse(label: str, raw: RawRecord, expected: Expected) -> None:
    if isinstance(expected, Rejected):
        with pytest.raises(ParseError, match=expected.fragment.replace("(", r"\(").replace(")", r"\)")):
            gatewayapi.parse(raw, CTX)
        return
    events_ = gatewayapi.parse(raw, CTX)
    assert len(events_) == 1
    event = events_[0]
    assert_contract(event, raw)
    actual = {name: getattr(event, name) for name in expected}
    assert actual == expected


def assert_contract(event: Event, raw: RawRecord) -> None:
    """What every GatewayAPI event has, whatever the case."""
    assert event.provider == P and event.feed == raw.feed
    assert event.dedupe_key.startswith(f"{P}:{event.kind}:")
    assert event.payload == orjson.loads(raw.body)
    orjson.dumps(event.payload)
    assert event.occurred_at is None or event.occurred_at.utcoffset() == UTC.utcoffset(None)
    if event.kind is Kind.STATUS:
        assert event.status is not None and event.provider_status is not None and event.message_ref
    if event.kind is Kind.INBOUND:
        assert event.phone and event.status is None and event.consent is None
    if event.kind is Kind.EVENT:
        assert event.event_type


def test_every_table_row_is_covered() -> None:
    labels = {case[0] for case in CASES}
    assert all(f"rest_status_{name.lower()}" in labels for name in gatewayapi.STATUS)


def test_claims_file_equals_the_signed_token() -> None:
    """The .claims.json beside the official JWT is exactly what the token carries."""
    claims = orjson.loads(jwt_claims("gatewayapi/dlr-x-gwapi-signature-jwt.txt"))
    assert claims == orjson.loads(example("gatewayapi/dlr-x-gwapi-signature-jwt.claims.json"))


def test_retry_lands_on_the_same_key_and_new_time_does_not() -> None:
    first = gatewayapi.parse(rest(with_(DLR, status="ENROUTE")), CTX)[0]
    retry = gatewayapi.parse(rest(json.dumps(with_(DLR, status="ENROUTE"), indent=2)), CTX)[0]
    later = gatewayapi.parse(rest(with_(DLR, status="ENROUTE", time=1450000060)), CTX)[0]
    other_recipient = gatewayapi.parse(rest(with_(DLR, status="ENROUTE", msisdn=4512345678)), CTX)[0]
    assert first.dedupe_key == retry.dedupe_key
    assert len({first.dedupe_key, later.dedupe_key, other_recipient.dedupe_key}) == 3


def test_mo_and_dlr_with_the_same_id_do_not_collide() -> None:
    dlr = gatewayapi.parse(rest(example("gatewayapi/dlr-rest-callback.json")), CTX)[0]
    mo = gatewayapi.parse(rest(example("gatewayapi/mo-rest-callback.json")), CTX)[0]
    assert dlr.dedupe_key != mo.dedupe_key


def test_key_does_not_depend_on_receive_time() -> None:
    body = json.dumps(DLR)
    one = record(P, "rest", body)
    two = RawRecord(**{f.name: getattr(one, f.name) for f in fields(one)} | {"received_at_ms": 1})
    assert gatewayapi.parse(one, CTX)[0].dedupe_key == gatewayapi.parse(two, CTX)[0].dedupe_key


# --- never anything but ParseError ---

_KEYS = [
    "id", "msisdn", "time", "status", "error", "code", "error_code", "userref", "receiver", "message",
    "senttime", "event_id", "timestamp", "event_type", "event", "msg_id", "recipient", "reference",
    "status_at", "sender", "sent_at", "content", "hex_code", "details",
]
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["", " ", "DELIVERED", "read", "0x1001", "4587654321", "451204", "0", "+45 87 65 43 21",
                     "2025-04-01T11:50:12+00:00", "9999-12-31T23:59:59-05:00", "1e30", "nan",
                     "message.status.sms", "user-message.text.rcs", "user-message.file.rcs",
                     "user-message.location.rcs"]),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=6)),
    max_leaves=12,
)
_BODIES = st.one_of(
    st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=10).map(orjson.dumps),
    st.builds(lambda base, extra: orjson.dumps({**base, **extra}),
              st.sampled_from([DLR, MO,
                               {"event_id": EVENT_ID, "timestamp": STAMP, "event_type": "message.status.sms", "event": SMS_STATUS},
                               {"event_id": EVENT_ID, "event_type": "user-message.text.sms", "event": SMS_TEXT}]),
              st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=4)),
    st.binary(max_size=40),
)

MALFORMED: list[bytes] = [
    b"", b" ", b"null", b"0", b"1e999", b"true", b"[]", b"[{}]", b'"x"', b"{", b"{'id': 1}", b"\xff\xfe\x00",
    b'{"id": 18446744073709551616, "msisdn": 1, "status": "X"}', b'{"status": {}, "msisdn": []}',
    b'{"msisdn": 1, "status": "X", "id": {}}', b'{"message": {}, "id": 1, "msisdn": 1}', b'{"senttime": [], "id": 1, "msisdn": 1}',
    b'{"message": "x", "id": null, "msisdn": 1}', b'{"receiver": 1e400}', b'{"status": "X", "msisdn": 1, "id": 1, "time": 1e300}',
    b'{"status": "X", "msisdn": 1, "id": 1, "time": "-1e20"}', b'{"status": "\\ud800", "msisdn": 1, "id": 1}',
    b'{"event_id": [], "event_type": "x"}', b'{"event_id": "e", "event_type": {}}', b'{"event_id": "e", "event_type": "message.status.sms"}',
    b'{"event_id": "e", "event_type": "message.status.sms", "event": {"msg_id": [], "status": "X"}}',
    b'{"event_id": "e", "event_type": "message.status.sms", "event": {"msg_id": "m", "status": "X", "error": [1]}}',
    b'{"event_id": "e", "event_type": "message.status.sms", "event": {"msg_id": "m", "status": "X", "status_at": {}}}',
    b'{"event_id": "e", "event_type": "user-message.text.sms", "event": {"sender": 1, "content": []}}',
    b'{"event_id": "e", "event_type": "user-message.text.sms", "event": {"sender": true}}',
    b'{"event_id": "e", "event_type": "user-message.text.rcs", "event": {"sender": 1, "content": {"message": 5}}}',
    b'{"event_id": "e", "event_type": "user-message.location.rcs", "event": {"sender": 1, "content": [1, 2]}}',
    b'{"event_id": "e", "event_type": "user-message.file.rcs", "event": []}',
    b'{"event_id": "e", "event_type": "x", "event": [], "timestamp": 5}',
    b'{"event_id": "e", "event_type": "x", "timestamp": "9999-12-31T23:59:59-05:00"}',
]


@pytest.mark.parametrize("feed", sorted(gatewayapi.FEEDS))
@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_never_escapes(feed: str, body: bytes) -> None:
    try:
        gatewayapi.parse(record(P, feed, body), CTX)
    except ParseError as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(feed=st.sampled_from(sorted(gatewayapi.FEEDS)), body=_BODIES)
def test_fuzz_only_parse_error(feed: str, body: bytes) -> None:
    try:
        events_ = gatewayapi.parse(record(P, feed, body), CTX)
    except ParseError as exc:
        assert str(exc)
        return
    for event in events_:
        assert_contract(event, record(P, feed, body))
