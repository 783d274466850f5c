"""smsmode normalizer: published examples first, then every status row, variants and garbage."""

from __future__ import annotations

import json
from datetime import datetime, timezone
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
from tests.providers.util import example, record

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
    return datetime(*args, tzinfo=timezone.utc)  # type: ignore[misc]


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
    assert set(smsmode.CONSENT) <= set(V1_CODES)


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
    ("rest_mo_without_from", rest("mo", with_(REST_MO, **{"from": ""})), "'from'"),
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
