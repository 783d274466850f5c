"""smsmode normalizer: published examples first, then every status row, variants and garbage."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.events import GLOBAL_SCOPE, Event, Kind, Outcome, Reason, Status
from shared.keys import hashed_key, natural_key
from shared.providers import smsmode
from shared.providers.base import FORM_TYPE, ParseContext
from shared.record import RawRecord
from tests.providers.util import example, fixture, record

CTX = ParseContext(default_region="FR")
FORM = FORM_TYPE + "; charset=utf-8"


def url_query(relative: str) -> str:
    """The query part of a published example URL."""
    return example(relative).decode().split("?", 1)[1]


def get(feed: str, query: str | bytes | dict[str, str]) -> RawRecord:
    """A v1 callback as smsmode sends it: GET, everything in the query string."""
    text = urlencode(query) if isinstance(query, dict) else query
    return record("smsmode", feed, query=text, method="GET", content_type="")


def rest(feed: str, obj: Any) -> RawRecord:
    return record("smsmode", feed, json.dumps(obj))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


DLR = {"numero": "33612345678", "date_reception": "2024-07-01 10:00:00", "statut": "11", "smsID": "S1",
       "refClient": "r1", "cost": "1", "mcc_mnc": "20801"}
MO = {"numero": "36034", "message": "STOP", "emetteur": "33601020304", "date_reception": "01122024-093000",
      "smsID": "S1", "refClient": "r1", "responseID": "R1"}
DLR_KEY = hashed_key("smsmode", "status", "S1", "33612345678", "11", "2024-07-01 10:00:00")
REST_MO = {"messageId": "m-mo", "direction": "MO", "from": "33601020304", "recipient": {"to": "36034"},
           "body": {"text": "Oui merci", "length": 9, "encoding": "GSM7"}, "sentDate": "2025-03-01T10:00:00Z",
           "channel": {"type": "SMS"}}
REST_MT = {"messageId": "m-mt", "direction": "MT", "from": "36034", "recipient": {"to": "+33612345678"},
           "status": {"value": "DELIVERED", "deliveryDate": "2025-03-01T10:00:05+01:00"},
           "sentDate": "2025-03-01T09:00:00Z", "refClient": "ref-9"}


def dlr(**changes: str | None) -> dict[str, str]:
    return {k: v for k, v in {**DLR, **changes}.items() if v is not None}


def mo(**changes: str | None) -> dict[str, str]:
    return {k: v for k, v in {**MO, **changes}.items() if v is not None}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


# (label, record, expected): one dict of expected fields per event, in order.
CASES: list[tuple[str, RawRecord, list[dict[str, Any]]]] = [
    # Published examples (providers.md §2a, §2b).
    ("doc_v3.4_dlr_callback", get("status", url_query("smsmode/dlr-callback-http-v1.txt")), [dict(
        kind=Kind.STATUS, status=Status.DELIVERED, provider_status="11", reason=None, message_ref="S7EpYZ5kmS87",
        phone="336xxyyzzaa", phone_raw="336xxyyzzaa", user_ref="12azer34", occurred_at=utc(2010, 3, 25, 8, 52, 17),
        dedupe_key=hashed_key("smsmode", "status", "S7EpYZ5kmS87", "336xxyyzzaa", "11", "2010-03-25 09:52:17"),
        payload={"numero": "336xxyyzzaa", "date_reception": "2010-03-25 09:52:17", "statut": "11",
                 "smsID": "S7EpYZ5kmS87", "refClient": "12azer34", "mcc_mnc": "20801", "cost": "1"},
    )]),
    ("doc_v3.4_reply_callback", get("mo", url_query("smsmode/mo-callback-http-v1.txt")), [dict(
        kind=Kind.INBOUND, body="bonjour", phone="+33601020304", phone_raw="33601020304", counterpart="36034",
        counterpart_raw="36034", message_ref="abcd1234", user_ref="monclient123", provider_event_id="azertyu123",
        dedupe_key=natural_key("smsmode", "inbound", "azertyu123"), occurred_at=utc(2013, 1, 1, 11, 22, 33),
        scope=None, consent=None, status=None,
    )]),
    # v1 delivery reports.
    ("dlr_summer_time_is_utc_plus_2", get("status", DLR), [dict(
        status=Status.DELIVERED, phone="+33612345678", occurred_at=utc(2024, 7, 1, 8, 0), dedupe_key=DLR_KEY)]),
    ("dlr_3999_blacklisted_also_opts_out", get("status", dlr(statut="3999")), [
        dict(kind=Kind.STATUS, status=Status.REJECTED, reason=Reason.OPTED_OUT, provider_status="3999",
             consent=None, phone="+33612345678", message_ref="S1", user_ref="r1"),
        dict(kind=Kind.CONSENT, consent=Outcome.OPT_OUT, scope=GLOBAL_SCOPE, status=None, phone="+33612345678",
             phone_raw="33612345678", occurred_at=utc(2024, 7, 1, 8, 0), message_ref="S1", provider_status="3999",
             dedupe_key=hashed_key("smsmode", "status", "S1", "33612345678", "3999", "2024-07-01 10:00:00")
             + ":consent"),
    ]),
    ("dlr_13_temporary_then_sent", get("status", dlr(statut="13")), [dict(status=Status.SENT, reason=None)]),
    ("dlr_only_required_fields", get("status", {"smsID": "S1", "numero": "33612345678", "statut": "0"}), [dict(
        status=Status.SENT, occurred_at=None, user_ref=None,
        dedupe_key=hashed_key("smsmode", "status", "S1", "33612345678", "0", None))]),
    ("dlr_empty_optionals", get("status", dlr(refClient="", date_reception="", cost="")), [dict(
        user_ref=None, occurred_at=None, status=Status.DELIVERED)]),
    ("dlr_missing_statut_is_unknown", get("status", dlr(statut=None)), [dict(
        status=Status.UNKNOWN, provider_status=None)]),
    ("dlr_unknown_statut_kept_raw", get("status", dlr(statut="4242")), [dict(
        status=Status.UNKNOWN, provider_status="4242", reason=None)]),
    ("dlr_leading_zero_statut", get("status", dlr(statut="011")), [dict(
        status=Status.DELIVERED, provider_status="011")]),
    ("dlr_national_numero_uses_region", get("status", dlr(numero="0612345678")), [dict(
        phone="+33612345678", phone_raw="0612345678")]),
    ("dlr_date_in_reply_format_tolerated", get("status", dlr(date_reception="01072024-100000")), [dict(
        occurred_at=utc(2024, 7, 1, 8, 0))]),
    ("dlr_winter_time_is_utc_plus_1", get("status", dlr(date_reception="2024-01-15 10:00:00")), [dict(
        occurred_at=utc(2024, 1, 15, 9, 0))]),
    ("dlr_as_form_post", record("smsmode", "status", urlencode(DLR), content_type=FORM), [dict(
        status=Status.DELIVERED, dedupe_key=DLR_KEY)]),
    ("dlr_split_between_query_and_form", record(
        "smsmode", "status", urlencode({"statut": "11", "cost": "1"}), content_type=FORM,
        query=urlencode({k: v for k, v in DLR.items() if k not in ("statut", "cost")})), [dict(
        status=Status.DELIVERED, dedupe_key=DLR_KEY)]),
    ("dlr_sent_to_the_mo_url", get("mo", DLR), [dict(kind=Kind.STATUS, feed="mo", dedupe_key=DLR_KEY)]),
    # v1 replies.
    ("reply_winter_time", get("mo", MO), [dict(kind=Kind.INBOUND, body="STOP", occurred_at=utc(2024, 12, 1, 8, 30),
                                               keyword=None, outcome=None, consent=None)]),
    ("reply_without_response_id_hashes_content", get("mo", mo(responseID=None)), [dict(
        provider_event_id=None, dedupe_key=hashed_key(
            "smsmode", "inbound", "33601020304", "36034", "STOP", "01122024-093000", "S1"))]),
    ("reply_empty_response_id_hashes_content", get("mo", mo(responseID="")), [dict(
        provider_event_id=None, dedupe_key=hashed_key(
            "smsmode", "inbound", "33601020304", "36034", "STOP", "01122024-093000", "S1"))]),
    ("reply_only_emetteur", get("mo", {"emetteur": "33601020304"}), [dict(
        kind=Kind.INBOUND, body=None, counterpart=None, message_ref=None, occurred_at=None, user_ref=None)]),
    ("reply_empty_message_kept", get("mo", mo(message="")), [dict(body="")]),
    ("reply_utf8_accent", get("mo", b"emetteur=33601020304&numero=36034&message=D%C3%A9sabonn%C3%A9+svp"), [dict(
        body="Désabonné svp")]),
    ("reply_latin1_accent", get("mo", b"emetteur=33601020304&numero=36034&message=d%E9j%E0+vu"), [dict(
        body="déjà vu")]),
    ("reply_latin9_euro_sign", get("mo", b"emetteur=33601020304&message=10%A4"), [dict(body="10€")]),
    ("reply_raw_latin1_byte_in_query", get("mo", b"emetteur=33601020304&message=caf\xe9"), [dict(body="café")]),
    ("reply_spaces_and_plus", get("mo", b"emetteur=33601020304&message=a+b%2Bc++"), [dict(body="a b+c  ")]),
    ("reply_sent_to_the_status_url", get("status", MO), [dict(kind=Kind.INBOUND, feed="status", body="STOP")]),
    ("reply_date_in_dlr_format_tolerated", get("mo", mo(date_reception="2024-12-01 09:30:00")), [dict(
        occurred_at=utc(2024, 12, 1, 8, 30))]),
    ("reply_as_form_post", record("smsmode", "mo", urlencode(MO), content_type=FORM), [dict(
        kind=Kind.INBOUND, provider_event_id="R1")]),
    # REST API JSON message objects (providers.md §2d).
    ("rest_mo", rest("mo", REST_MO), [dict(
        kind=Kind.INBOUND, body="Oui merci", phone="+33601020304", counterpart="36034", provider_event_id="m-mo",
        dedupe_key=natural_key("smsmode", "inbound", "m-mo"), occurred_at=utc(2025, 3, 1, 10, 0), payload=REST_MO)]),
    ("rest_mo_on_the_status_url", rest("status", REST_MO), [dict(kind=Kind.INBOUND, feed="status")]),
    ("rest_mo_lower_case_direction", rest("mo", with_(REST_MO, direction="mo")), [dict(kind=Kind.INBOUND)]),
    ("rest_mo_body_as_string", rest("mo", with_(REST_MO, body="STOP")), [dict(body="STOP")]),
    ("rest_mo_without_dates", rest("mo", with_(REST_MO, sentDate=None)), [dict(occurred_at=None)]),
    ("rest_mo_accepted_at", rest("mo", with_(REST_MO, sentDate="", acceptedAt="2025-03-01T11:00:00")), [dict(
        occurred_at=utc(2025, 3, 1, 11, 0))]),
    ("rest_mt_delivered", rest("status", REST_MT), [dict(
        kind=Kind.STATUS, status=Status.DELIVERED, provider_status="DELIVERED", message_ref="m-mt",
        phone="+33612345678", counterpart="36034", user_ref="ref-9", provider_event_id=None,
        occurred_at=utc(2025, 3, 1, 9, 0, 5),
        dedupe_key=hashed_key("smsmode", "status", "m-mt", "DELIVERED", "2025-03-01T10:00:05+01:00"))]),
    ("rest_mt_on_the_mo_url", rest("mo", REST_MT), [dict(kind=Kind.STATUS, feed="mo")]),
    ("rest_status_without_direction", rest("status", with_(REST_MT, direction=None)), [dict(
        kind=Kind.STATUS, status=Status.DELIVERED)]),
    ("rest_status_value_as_bare_string", rest("status", with_(REST_MT, status="failed")), [dict(
        status=Status.FAILED, occurred_at=utc(2025, 3, 1, 9, 0))]),
    ("rest_unknown_status_value", rest("status", with_(REST_MT, status={"value": "WEIRD"})), [dict(
        status=Status.UNKNOWN, provider_status="WEIRD")]),
    ("rest_mt_without_status", rest("status", with_(REST_MT, status=None)), [dict(
        status=Status.UNKNOWN, provider_status=None)]),
    ("rest_mt_without_recipient", rest("status", with_(REST_MT, recipient=None)), [dict(phone=None)]),
    ("rest_numeric_message_id", rest("status", with_(REST_MT, messageId=12345)), [dict(message_ref="12345")]),
    ("rest_in_progress_words", rest("status", with_(REST_MT, status={"value": "In Progress"})), [dict(
        status=Status.QUEUED)]),
    ("rest_in_progress_snake_case", rest("status", with_(REST_MT, status={"value": "IN_PROGRESS"})), [dict(
        status=Status.QUEUED)]),
    ("rest_json_with_charset", record("smsmode", "status", json.dumps(REST_MT),
                                      content_type="application/json; charset=utf-8"), [dict(kind=Kind.STATUS)]),
    ("rest_json_without_content_type", record("smsmode", "mo", json.dumps(REST_MO), content_type=""), [dict(
        kind=Kind.INBOUND)]),
]


@pytest.mark.parametrize(("label", "raw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(label: str, raw: RawRecord, expected: list[dict[str, Any]]) -> None:
    events = smsmode.parse(raw, CTX)
    assert len(events) == len(expected)
    for event, fields in zip(events, expected):
        assert {name: getattr(event, name) for name in fields} == fields
        assert event.provider == "smsmode"
        if "feed" not in fields:
            assert event.feed == raw.feed


# The v1 annex list (providers.md §2c): every code, expected independently of the module's table.
V1_CODES: dict[str, tuple[Status, Reason | None]] = {
    "0": (Status.SENT, None), "1": (Status.QUEUED, None), "2": (Status.FAILED, Reason.OTHER),
    "10": (Status.QUEUED, None), "11": (Status.DELIVERED, None), "12": (Status.SENT, None),
    "13": (Status.SENT, None), "14": (Status.DELIVERED, None), "15": (Status.DELIVERED, None),
    "16": (Status.DELIVERED, None), "21": (Status.FAILED, Reason.OTHER), "22": (Status.REJECTED, Reason.OTHER),
    "33": (Status.REJECTED, Reason.OTHER), "34": (Status.FAILED, Reason.INVALID_NUMBER),
    "35": (Status.FAILED, Reason.OTHER), "36": (Status.REJECTED, Reason.OTHER),
    "37": (Status.EXPIRED, Reason.EXPIRED), "38": (Status.REJECTED, Reason.OTHER),
    "40": (Status.UNKNOWN, None), "50": (Status.FAILED, Reason.OTHER), "100": (Status.DELIVERED, None),
    "101": (Status.DELIVERED, None), "999": (Status.UNKNOWN, None),
    **{str(c): (Status.FAILED, Reason.OTHER) for c in range(3501, 3505)},
    **{str(c): (Status.FAILED, Reason.OTHER) for c in (3521, 3522, 3523, 3526, 3527)},
    "3524": (Status.REJECTED, Reason.BLOCKED), "3525": (Status.REJECTED, Reason.OTHER),
    "3560": (Status.FAILED, Reason.INVALID_NUMBER), "3599": (Status.FAILED, Reason.OTHER),
    "3998": (Status.REJECTED, Reason.INVALID_NUMBER), "3999": (Status.REJECTED, Reason.OPTED_OUT),
}
REST_VALUES: dict[str, Status] = {
    "delivered": Status.DELIVERED, "read": Status.DELIVERED, "failed": Status.FAILED,
    "undeliverable": Status.FAILED, "undelivered": Status.FAILED, "rejected": Status.REJECTED,
    "expired": Status.EXPIRED, "in progress": Status.QUEUED, "scheduled": Status.QUEUED,
    "enroute": Status.SENT, "sent": Status.SENT,
}


def test_every_table_row_is_tested() -> None:
    assert smsmode.STATUS.keys() == V1_CODES.keys() | REST_VALUES.keys()
    assert set(smsmode.CONSENT) <= set(V1_CODES) | smsmode.DETAIL.keys()


@pytest.mark.parametrize(("code", "expected"), V1_CODES.items(), ids=list(V1_CODES))
def test_every_v1_statut(code: str, expected: tuple[Status, Reason | None]) -> None:
    [event, *consent] = smsmode.parse(get("status", dlr(statut=code)), CTX)
    assert (event.kind, event.status, event.reason, event.provider_status) == (Kind.STATUS, *expected, code)
    assert [e.kind for e in consent] == ([Kind.CONSENT] if code == "3999" else [])


@pytest.mark.parametrize("value", [v for word in REST_VALUES for v in (word, word.upper(), word.title())])
def test_every_rest_status_value_any_case(value: str) -> None:
    [event] = smsmode.parse(rest("status", with_(REST_MT, status={"value": value})), CTX)
    assert (event.status, event.provider_status) == (REST_VALUES[value.lower()], value)


def test_consent_rows_drive_the_consent_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new opt-out code is one row, not code: adding 3998 to CONSENT makes it a signal too."""
    monkeypatch.setitem(smsmode.CONSENT, "3998", Outcome.OPT_OUT)
    events = smsmode.parse(get("status", dlr(statut="3998")), CTX)
    assert [(e.kind, e.consent) for e in events] == [(Kind.STATUS, None), (Kind.CONSENT, Outcome.OPT_OUT)]


def test_rest_status_3999_is_a_consent_signal_too() -> None:
    events = smsmode.parse(rest("status", with_(REST_MT, status={"value": "3999"})), CTX)
    assert [(e.kind, e.scope, e.phone) for e in events] == [
        (Kind.STATUS, None, "+33612345678"), (Kind.CONSENT, GLOBAL_SCOPE, "+33612345678")]


def test_dedupe_keys_follow_provider_data_only() -> None:
    first = smsmode.parse(get("status", DLR), CTX)[0]
    later = record("smsmode", "status", query=urlencode(DLR), method="GET", content_type="")
    assert smsmode.parse(later, ParseContext())[0].dedupe_key == first.dedupe_key
    for change in ({"statut": "13"}, {"date_reception": "2024-07-01 10:00:01"}, {"numero": "33612345679"},
                   {"smsID": "S2"}):
        assert smsmode.parse(get("status", {**DLR, **change}), CTX)[0].dedupe_key != first.dedupe_key
    # cost and refClient do not identify the report.
    assert smsmode.parse(get("status", dlr(cost="2", refClient="x")), CTX)[0].dedupe_key == first.dedupe_key
    rest_key = smsmode.parse(rest("status", REST_MT), CTX)[0].dedupe_key
    other = with_(REST_MT, status={"value": "SENT", "deliveryDate": "2025-03-01T10:00:05+01:00"})
    assert smsmode.parse(rest("status", other), CTX)[0].dedupe_key != rest_key


def test_autumn_ambiguous_hour_takes_first_occurrence() -> None:
    [event] = smsmode.parse(get("status", dlr(date_reception="2024-10-27 02:30:00")), CTX)
    assert event.occurred_at == utc(2024, 10, 27, 0, 30)


# --- REST API, SMS and RCS: smsmode's own examples and SDK types ---

def rest_fixture(feed: str, name: str, **changes: Any) -> RawRecord:
    return rest(feed, with_(orjson.loads(fixture(name)), **changes))


# An RCS reply in the SDK's orientation (`from` the agent, `recipient.to` the person).
REST_RCS_MO = orjson.loads(fixture("smsmode/rest-rcs-mo-suggestion-production-thirdparty.json"))
RCS_BODY_TEXT = {"type": "TEXT", "text": "STOP"}

# (label, record, phone, counterpart): who the person is in a reply, on each channel and in
# every orientation seen; the other field is our side (scope of a STOP).
PERSON_CASES: list[tuple[str, RawRecord, str, str]] = [
    ("rcs_spec_example_person_in_from",
     rest_fixture("mo", "smsmode/rest-rcs-mo-suggestion-spec.json"), "+33600000000", "RcsAgent"),
    ("rcs_production_person_in_recipient",
     rest_fixture("mo", "smsmode/rest-rcs-mo-suggestion-production-thirdparty.json"), "+33633921577",
     "Messaging Me (TEST)"),
    ("rcs_text_stop_person_in_recipient", rest("mo", with_(REST_RCS_MO, body=RCS_BODY_TEXT)), "+33633921577",
     "Messaging Me (TEST)"),
    ("rcs_both_numbers_sdk_order_recipient_first",
     rest("mo", with_(REST_RCS_MO, **{"from": "33611111111"})), "+33633921577", "+33611111111"),
    ("sms_documented_person_in_from", rest("mo", REST_MO), "+33601020304", "36034"),
    ("sms_person_in_recipient", rest("mo", with_(REST_MO, **{"from": "36034"}, recipient={"to": "33601020304"})),
     "+33601020304", "36034"),
    ("sms_both_numbers_documented_order_from_first",
     rest("mo", with_(REST_MO, recipient={"to": "33611111111"})), "+33601020304", "+33611111111"),
    ("no_channel_reads_as_sms", rest("mo", with_(REST_MO, channel=None, **{"from": "36034"},
                                                 recipient={"to": "33601020304"})), "+33601020304", "36034"),
    ("channel_from_type_field", rest("mo", with_(REST_RCS_MO, channel=None)), "+33633921577", "Messaging Me (TEST)"),
    ("number_written_with_spaces", rest("mo", with_(REST_MO, **{"from": "+33 6 01 02 03 04"})), "+33601020304",
     "36034"),
    ("national_number_with_region", rest("mo", with_(REST_MO, **{"from": "0601020304"})), "+33601020304", "36034"),
]


@pytest.mark.parametrize(("label", "raw", "phone", "counterpart"), PERSON_CASES, ids=[c[0] for c in PERSON_CASES])
def test_the_person_of_a_rest_reply(label: str, raw: RawRecord, phone: str, counterpart: str) -> None:
    [event] = smsmode.parse(raw, CTX)
    assert (event.phone, event.counterpart) == (phone, counterpart)


def test_rest_examples() -> None:
    [dlr] = smsmode.parse(rest_fixture("status", "smsmode/rest-rcs-status-delivered-spec.json"), CTX)
    assert (dlr.kind, dlr.status, dlr.reason, dlr.provider_status, dlr.provider_reason) == (
        Kind.STATUS, Status.DELIVERED, None, "DELIVERED", None)
    assert (dlr.phone, dlr.counterpart, dlr.message_ref, dlr.user_ref) == (
        "+33600000000", "RcsAgent", "e5ab32e9-caf1-464b-92ac-382a0899445f", "reference")
    assert dlr.occurred_at == utc(2025, 4, 1, 16, 0, 10)
    # A real report: no `direction`, a CARD body, READ.
    [read] = smsmode.parse(rest_fixture("status", "smsmode/rest-rcs-status-read-card-production-thirdparty.json"), CTX)
    assert (read.kind, read.status, read.provider_status, read.phone) == (
        Kind.STATUS, Status.DELIVERED, "READ", "+33633921577")
    [mo] = smsmode.parse(rest_fixture("mo", "smsmode/rest-rcs-mo-suggestion-spec.json"), CTX)
    assert (mo.kind, mo.body, mo.provider_event_id, mo.message_ref) == (
        Kind.INBOUND, "Oui, je veux découvrir 📅", "82f71ab3-2e74-4da7-a9d8-bba0e23337a5",
        "efbc1edd-4de7-4629-8f9d-8cb57123436b")
    assert mo.dedupe_key == natural_key("smsmode", "inbound", "82f71ab3-2e74-4da7-a9d8-bba0e23337a5")


# (label, body, kind, text, event_type): a reply's body by its type (RCS; an SMS body has none).
MO_BODIES: list[tuple[str, Any, Kind, str | None, str | None]] = [
    ("text", {"type": "TEXT", "text": "STOP"}, Kind.INBOUND, "STOP", None),
    ("basic", {"type": "BASIC", "text": "Stop"}, Kind.INBOUND, "Stop", None),
    ("sms_without_type", {"text": "STOP", "length": 4, "encoding": "GSM7"}, Kind.INBOUND, "STOP", None),
    ("suggestion_label", {"type": "SUGGESTION", "text": "STOP", "postbackData": "stop"}, Kind.INBOUND, "STOP", None),
    ("location", {"type": "LOCATION", "latitude": 48.8566, "longitude": 2.3522}, Kind.EVENT, None, "LOCATION"),
    ("file", {"type": "FILE", "fileUrl": "https://x.test/v.mp4", "filename": "v.mp4", "contentType": "video/mp4"},
     Kind.EVENT, None, "FILE"),
    ("unknown_type_with_text", {"type": "STICKER", "text": "hi"}, Kind.INBOUND, "hi", None),
    ("lower_case_type", {"type": "location"}, Kind.EVENT, None, "LOCATION"),
]


@pytest.mark.parametrize(("label", "body", "kind", "text", "event_type"), MO_BODIES, ids=[b[0] for b in MO_BODIES])
def test_rest_reply_bodies(label: str, body: Any, kind: Kind, text: str | None, event_type: str | None) -> None:
    [event] = smsmode.parse(rest("mo", with_(REST_RCS_MO, body=body)), CTX)
    assert (event.kind, event.body, event.event_type, event.phone) == (kind, text, event_type, "+33633921577")
    assert event.dedupe_key == natural_key("smsmode", kind.value, REST_RCS_MO["messageId"])


# smsmode's SDK (`@smsmode/rcs` 1.0.0, RcsStatusValue and RcsStatusDetail): every status value and
# every detail, expected here independently of the module's tables. A detail's status, when it has
# one, replaces the value's; the value below is UNDELIVERABLE (failed, other).
SDK_VALUES: dict[str, Status] = {
    "SCHEDULED": Status.QUEUED, "ENROUTE": Status.SENT, "DELIVERED": Status.DELIVERED,
    "READ": Status.DELIVERED, "UNDELIVERABLE": Status.FAILED, "UNDELIVERED": Status.FAILED,
}
SDK_DETAILS: dict[str, tuple[Status, Reason]] = {
    "IN_PROGRESS": (Status.FAILED, Reason.OTHER),
    "DELIVERED_TO_NETWORK": (Status.FAILED, Reason.OTHER),
    "INSUFFICIENT_CREDIT": (Status.REJECTED, Reason.OTHER),
    "DAILY_LIMIT_EXCEEDED": (Status.REJECTED, Reason.OTHER),
    "ORGANISATION_MONTHLY_LIMIT_EXCEEDED": (Status.REJECTED, Reason.OTHER),
    "ROUTE_NOT_AVAILABLE": (Status.FAILED, Reason.OTHER),
    "SPAM": (Status.REJECTED, Reason.BLOCKED),
    "INVALID_PHONE_NUMBER": (Status.REJECTED, Reason.INVALID_NUMBER),
    "BLACKLISTED": (Status.REJECTED, Reason.OPTED_OUT),
    "PHONE_NOT_SUITABLE": (Status.FAILED, Reason.OTHER),
    "NETWORK_NOT_SUITABLE": (Status.FAILED, Reason.OTHER),
    "MEDIA_INVALID": (Status.REJECTED, Reason.OTHER),
    "EXPIRED": (Status.EXPIRED, Reason.EXPIRED),
    "CANCELLED": (Status.FAILED, Reason.OTHER),
    "INTERNAL_ERROR": (Status.FAILED, Reason.OTHER),
}


def rest_status(value: str, detail: str | None = None, **changes: Any) -> RawRecord:
    status = {"value": value, "deliveryDate": "2025-03-01T10:00:05+01:00"}
    return rest("status", with_(REST_MT, status=status if detail is None else {**status, "detail": detail}, **changes))


def test_every_sdk_value_and_detail_is_a_row() -> None:
    assert {smsmode._code(v) for v in SDK_VALUES} <= smsmode.STATUS.keys()
    assert smsmode.DETAIL.keys() == {smsmode._code(d) for d in SDK_DETAILS}


@pytest.mark.parametrize(("value", "expected"), SDK_VALUES.items(), ids=list(SDK_VALUES))
def test_every_sdk_status_value(value: str, expected: Status) -> None:
    [event] = smsmode.parse(rest_status(value), CTX)
    assert (event.status, event.provider_status, event.provider_reason) == (expected, value, None)


@pytest.mark.parametrize(("detail", "expected"), SDK_DETAILS.items(), ids=list(SDK_DETAILS))
@pytest.mark.parametrize("channel", ["SMS", "RCS"])
def test_every_sdk_status_detail(channel: str, detail: str, expected: tuple[Status, Reason]) -> None:
    events = smsmode.parse(rest_status("UNDELIVERABLE", detail, channel={"type": channel}), CTX)
    status = events[0]
    assert (status.kind, status.status, status.reason) == (Kind.STATUS, *expected)
    assert (status.provider_status, status.provider_reason) == ("UNDELIVERABLE", detail)
    assert [e.kind for e in events[1:]] == ([Kind.CONSENT] if detail == "BLACKLISTED" else [])


def test_progress_details_leave_the_value_alone() -> None:
    for value, detail, expected in (("ENROUTE", "DELIVERED_TO_NETWORK", Status.SENT),
                                    ("SCHEDULED", "IN_PROGRESS", Status.QUEUED),
                                    ("DELIVERED", "DELIVERED_TO_NETWORK", Status.DELIVERED)):
        [event] = smsmode.parse(rest_status(value, detail), CTX)
        assert (event.status, event.reason) == (expected, None)


def test_undelivered_expired_is_expired() -> None:
    [event] = smsmode.parse(rest_status("UNDELIVERED", "EXPIRED"), CTX)
    assert (event.status, event.reason) == (Status.EXPIRED, Reason.EXPIRED)


def test_blacklisted_detail_is_3999() -> None:
    """The same status, reason and consent event as the HTTP API's code 3999, keyed like a REST report."""
    [status, consent] = smsmode.parse(rest_status("UNDELIVERABLE", "BLACKLISTED"), CTX)
    [v1_status, v1_consent] = smsmode.parse(get("status", dlr(statut="3999")), CTX)
    assert (status.status, status.reason) == (v1_status.status, v1_status.reason)
    assert (consent.kind, consent.consent, consent.scope) == (v1_consent.kind, v1_consent.consent, v1_consent.scope)
    assert (consent.phone, consent.phone_raw, consent.provider_reason) == (
        "+33612345678", "+33612345678", "BLACKLISTED")
    key = hashed_key("smsmode", "status", "m-mt", "UNDELIVERABLE", "2025-03-01T10:00:05+01:00")
    assert (status.dedupe_key, consent.dedupe_key) == (key, key + ":consent")


def test_blacklisted_without_a_recipient_is_no_consent_event() -> None:
    assert [e.kind for e in smsmode.parse(rest_status("UNDELIVERABLE", "BLACKLISTED", recipient=None), CTX)] == [
        Kind.STATUS]


def test_detail_rows_drive_the_consent_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a status code, a new opt-out detail is one row of CONSENT, not code."""
    monkeypatch.setitem(smsmode.CONSENT, "spam", Outcome.OPT_OUT)
    assert [e.kind for e in smsmode.parse(rest_status("UNDELIVERABLE", "SPAM"), CTX)] == [Kind.STATUS, Kind.CONSENT]


def test_unknown_detail_keeps_the_value_and_its_text() -> None:
    [event] = smsmode.parse(rest_status("UNDELIVERABLE", "SOMETHING_NEW"), CTX)
    assert (event.status, event.reason, event.provider_reason) == (Status.FAILED, Reason.OTHER, "SOMETHING_NEW")


GARBAGE: list[tuple[str, RawRecord, str]] = [
    ("empty_get", get("status", ""), "no callback parameters"),
    ("empty_body_and_query", record("smsmode", "mo", b""), "no callback parameters"),
    ("not_json", record("smsmode", "status", b"not json"), "not valid JSON"),
    ("json_array", record("smsmode", "status", b"[]"), "expected an object"),
    ("json_string", record("smsmode", "status", b'"x"', content_type="application/json"), "expected an object"),
    ("invalid_utf8_json", record("smsmode", "status", b'{"messageId": "\xff"}'), "not valid JSON"),
    ("text_body_no_query", record("smsmode", "status", b"hello", content_type="text/plain"), "no callback"),
    ("dlr_without_smsid", get("status", dlr(smsID=None)), "'smsID'"),
    ("dlr_empty_smsid", get("status", dlr(smsID="")), "'smsID'"),
    ("dlr_blank_numero", get("status", dlr(numero="  ")), "'numero'"),
    ("dlr_without_numero", get("status", dlr(numero=None)), "'numero'"),
    ("dlr_bad_date", get("status", dlr(date_reception="25/03/2010")), "date_reception"),
    ("dlr_year_one", get("status", dlr(date_reception="0001-01-01 00:00:00")), "date_reception"),
    ("reply_without_emetteur", get("mo", mo(emetteur=None)), "'emetteur'"),
    ("reply_empty_emetteur", get("mo", mo(emetteur="")), "'emetteur'"),
    ("reply_bad_date", get("mo", mo(date_reception="yesterday")), "date_reception"),
    ("unrelated_params_on_mo", get("mo", {"foo": "bar"}), "'emetteur'"),
    ("unrelated_params_on_status", get("status", {"foo": "bar"}), "'smsID'"),
    ("rest_without_message_id", rest("status", with_(REST_MT, messageId=None)), "'messageId'"),
    ("rest_message_id_object", rest("status", with_(REST_MT, messageId={"id": 1})), "'messageId'"),
    ("rest_mo_without_from", rest("mo", with_(REST_MO, **{"from": ""})), "no phone number in a reply"),
    ("rest_mo_short_codes_only", rest("mo", with_(REST_MO, **{"from": "36034"})), "no phone number in a reply"),
    ("rest_rcs_mo_agents_only", rest("mo", with_(REST_RCS_MO, **{"from": "Agent"}, recipient={"to": "RcsAgent"})),
     "no phone number in a reply"),
    ("rest_unknown_direction", rest("mo", with_(REST_MO, direction="XX")), "direction"),
    ("rest_no_direction_no_status", rest("mo", with_(REST_MO, direction=None)), "direction"),
    ("rest_date_not_iso", rest("status", with_(REST_MT, status={"value": "SENT", "deliveryDate": "soon"})),
     "ISO-8601"),
    ("rest_date_number", rest("mo", with_(REST_MO, sentDate=1700000000)), "not a string"),
    ("rest_date_year_one", rest("mo", with_(REST_MO, sentDate="0001-01-01T00:00:00+01:00")), "out of range"),
]


@pytest.mark.parametrize(("label", "raw", "reason"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_a_parse_error_with_a_reason(label: str, raw: RawRecord, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        smsmode.parse(raw, CTX)


def check(raw: RawRecord) -> None:
    """parse either raises ParseError or returns well-formed events."""
    try:
        events = smsmode.parse(raw, CTX)
    except ParseError as exc:
        assert str(exc)
        return
    assert events
    assert len({e.dedupe_key for e in events}) == len(events)
    for event in events:
        assert isinstance(event, Event) and event.provider == "smsmode" and event.feed == raw.feed
        assert event.dedupe_key.startswith("smsmode:")
        assert event.occurred_at is None or event.occurred_at.utcoffset() is not None
        orjson.dumps(event.payload)


FIELDS = sorted({*DLR, *MO, "messageId", "direction", "from", "recipient", "body", "status", "sentDate"})
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
                    st.sampled_from(["", "3999", "MO", "MT", "2024-07-01 10:00:00", "01122024-093000",
                                     "0001-01-01T00:00:00+01:00", "DELIVERED", "33612345678"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["to", "text", "value",
                                                                                        "deliveryDate"]), inner,
                                                                       max_size=3)), max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(feed=st.sampled_from(sorted(smsmode.FEEDS)),
       obj=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8))
def test_json_of_any_shape_never_crashes(feed: str, obj: dict[str, Any]) -> None:
    check(record("smsmode", feed, json.dumps(obj)))


@settings(max_examples=200, deadline=None)
@given(feed=st.sampled_from(sorted(smsmode.FEEDS)),
       params=st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.text(max_size=12), st.binary(max_size=6)),
                              max_size=8))
def test_query_of_any_shape_never_crashes(feed: str, params: dict[str, str | bytes]) -> None:
    check(get(feed, urlencode(params).encode()))


@settings(max_examples=200, deadline=None)
@given(feed=st.sampled_from(sorted(smsmode.FEEDS)), body=st.binary(max_size=40), query=st.binary(max_size=40),
       content_type=st.sampled_from(["", "application/json", FORM, "text/plain"]))
def test_any_bytes_never_crash(feed: str, body: bytes, query: bytes, content_type: str) -> None:
    check(record("smsmode", feed, body, query=query, content_type=content_type))
