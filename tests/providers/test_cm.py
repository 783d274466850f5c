"""CM.com normalizer: published and brief examples first, then every status row, feed, variant and garbage."""

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
from shared.events import Event, Kind, Outcome, Reason, Status
from shared.providers import cm
from shared.providers.base import ParseContext
from shared.record import RawRecord
from tests.providers.util import example, fixture, record

CTX = ParseContext(default_region="NL")
XML = "application/xml"
UTC = UTC
BRIEF_EVENT_ID = "121c38a5-cf77-424a-9ea9-d6c044a845f8"


def _brief_json(name: str) -> bytes:
    """The first JSON object printed in a brief file (the files are page text around it)."""
    text = fixture(name).decode()
    value, _ = json.JSONDecoder().raw_decode(text, text.index("{"))
    return orjson.dumps(value)


def mo(body: dict[str, Any] | bytes | str, **kwargs: Any) -> RawRecord:
    return record("cm", "mo", orjson.dumps(body) if isinstance(body, dict) else body, **kwargs)


def events(body: dict[str, Any] | bytes | str, **kwargs: Any) -> RawRecord:
    return record("cm", "events", orjson.dumps(body) if isinstance(body, dict) else body, **kwargs)


def status(body: dict[str, Any] | bytes | str, **kwargs: Any) -> RawRecord:
    return record("cm", "status", orjson.dumps(body) if isinstance(body, dict) else body, **kwargs)


# The SMS MO brief's JSON is cut off inside `groupings`: the three strings are completed here.
SMS_MO = {
    "reference": "2f2d42ac-3809-40fb-bce5-dc720e4db138",
    "from": "+31612345678",
    "to": "3669",
    "body": "This is an example message.",
    "groupings": ["group1", "group2", "group3"],
}
BM_MESSAGE = {
    "reference": "ref-mt-42",
    "messageContext": "msg$abeade67",
    "from": {"number": "0031612345678", "name": "Jan"},
    "to": {"number": "0031201234567"},
    "message": {"text": "  STOP please  "},
    "groupings": ["a", "b", "c"],
    "timeUtc": "2025-09-03T08:00:05",
    "channel": "WhatsApp",
}
EVENT = {
    "reference": "9a7c0f52-1111-4c3e-9f00-000000000001",
    "from": {"number": "0031612345678"},
    "to": {"number": "003222556611"},
    "event": {"type": "SuggestionClick"},
    "timeUtc": "2025-09-03T08:00:05",
    "channel": "RCS",
}


def dlr(code: object = "2", **msg: Any) -> dict[str, Any]:
    base = {
        "received": "2025-09-03T08:00:05",
        "to": "0031612345678",
        "reference": "ref-1",
        "status": {"code": code, "errorCode": "0", "errorDescription": ""},
        "operator": "20408",
    }
    return {"messages": {"msg": {**base, **msg}}}


XML_DLR = b"""<?xml version="1.0" encoding="utf-8"?>
<MESSAGES>
<MSG RECEIVED="2025-09-03 08:00:05"><TO>0031612345678</TO><REFERENCE>ref-1</REFERENCE>
<STATUS><CODE>2</CODE><ERRORCODE>0</ERRORCODE><ERRORDESCRIPTION></ERRORDESCRIPTION></STATUS></MSG>
<MSG RECEIVED="2025-09-03 08:01:00"><TO>0031612345679</TO><REFERENCE>ref-2</REFERENCE>
<STATUS><CODE>3</CODE><ERRORCODE>23</ERRORCODE><ERRORDESCRIPTION>Invalid MSISDN</ERRORDESCRIPTION></STATUS></MSG>
</MESSAGES>"""
XML_MO = (
    b"<MO><REFERENCE>2f2d42ac</REFERENCE><FROM>+31612345678</FROM><TO>3669</TO>"
    b"<BODY> Stop </BODY><GROUPINGS><GROUPING>a</GROUPING><GROUPING>b</GROUPING><GROUPING>c</GROUPING>"
    b"</GROUPINGS></MO>"
)
TIME = datetime(2025, 9, 3, 8, 0, 5, tzinfo=UTC)
TEMPLATE = {"status": Status.UNKNOWN, "provider_status": "[STATUS]", "message_ref": "[REFERENCE]",
            "phone_raw": "[GSM]", "occurred_at": None, "provider_reason": "[STANDARDERRORTEXT]"}

Expected = list[dict[str, Any]] | str
CASES: list[tuple[str, RawRecord, Expected]] = [
    # --- published and brief examples ---
    ("brief_events_suggestionclick", events(_brief_json("cm/incoming-events-brief.txt")), [{
        "kind": Kind.EVENT, "provider_event_id": BRIEF_EVENT_ID, "dedupe_key": f"cm:event:{BRIEF_EVENT_ID}",
        "phone": "+31612345678", "phone_raw": "0031612345678", "counterpart": "+3222556611",
        "occurred_at": TIME, "event_type": "SuggestionClick",
        "message_ref": "msg$abeade67-de9c-45ba-bcfd-abcae1d1879f", "consent": None}]),
    ("brief_sms_mo_json", mo(SMS_MO), [{
        "kind": Kind.INBOUND, "phone": "+31612345678", "counterpart": "3669", "counterpart_raw": "3669",
        "body": "This is an example message.", "message_ref": SMS_MO["reference"],
        "user_ref": SMS_MO["reference"], "occurred_at": None, "provider_event_id": None, "scope": None}]),
    ("published_dlr_json_template", status(example("cm/dlr-json-template.json")), [TEMPLATE]),
    ("published_dlr_xml_template", status(example("cm/dlr-xml-template.txt"), content_type=XML), [TEMPLATE]),
    ("published_event_instagram_messagedelete", events(example("cm/event-instagram-messagedelete.json")), [{
        "kind": Kind.EVENT, "event_type": "MessageDelete", "provider_event_id": "453563216",
        "dedupe_key": "cm:event:MessageDelete:453563216", "phone": "<IGSID>", "counterpart": "<IGID>",
        "occurred_at": datetime(2021, 7, 5, 17, 8, 45, tzinfo=UTC)}]),
    ("published_event_instagram_storymention", events(example("cm/event-instagram-storymention.json")), [{
        "kind": Kind.EVENT, "event_type": "StoryMention", "provider_event_id": "453563217"}]),
    # --- mo: SMS MO variants ---
    ("mo_json_no_groupings_no_reference", mo({"from": "0031612345678", "to": "3669", "body": "Hi"}), [{
        "phone": "+31612345678", "phone_raw": "0031612345678", "message_ref": None, "body": "Hi"}]),
    ("mo_json_number_types", mo({"from": 31612345678, "to": 3669, "body": 42}), [{
        "phone": "+31612345678", "phone_raw": "31612345678", "counterpart": "3669", "body": "42"}]),
    ("mo_json_national_number_with_region", mo({"from": "0612345678", "to": "3669", "body": "x"}), [{
        "phone": "+31612345678", "phone_raw": "0612345678"}]),
    ("mo_json_upper_case_keys", mo({"FROM": "+31612345678", "To": "3669", "Body": "ja"}), [{
        "phone": "+31612345678", "body": "ja"}]),
    ("mo_json_empty_body_kept", mo({"from": "+31612345678", "to": "3669", "body": ""}), [{"body": ""}]),
    ("mo_json_missing_body", mo({"from": "+31612345678", "to": "3669"}), [{"body": None}]),
    ("mo_json_empty_strings", mo({"from": "+31612345678", "to": "", "body": "", "reference": ""}), [{
        "counterpart": None, "message_ref": None}]),
    ("mo_get", mo(b"", method="GET", content_type="",
                  query="reference=r1&from=%2B31612345678&to=3669&body=Stop+now&token=s3cret"), [{
        "kind": Kind.INBOUND, "phone": "+31612345678", "body": "Stop now", "message_ref": "r1",
        "payload": {"reference": "r1", "from": "+31612345678", "to": "3669", "body": "Stop now"}}]),
    ("mo_get_non_ascii_utf8_and_latin", mo(b"", method="GET",
                                           query="from=0031612345678&to=3669&body=%C3%A9t%C3%A9&reference=%E9"), [{
        "body": "été", "message_ref": "é", "phone": "+31612345678"}]),
    ("mo_xml", mo(XML_MO, content_type=XML), [{
        "kind": Kind.INBOUND, "phone": "+31612345678", "counterpart": "3669", "body": " Stop ",
        "message_ref": "2f2d42ac"}]),
    ("mo_xml_lower_case_other_root_text_xml", mo(b"<reply><from>0031612345678</from><to>3669</to>"
                                                 b"<body>ok</body></reply>", content_type="text/xml"), [{
        "phone": "+31612345678", "body": "ok"}]),
    ("mo_xml_sniffed_without_content_type", mo(b"<MO><FROM>+31612345678</FROM><BODY>a</BODY></MO>",
                                               content_type=""), [{"body": "a", "counterpart": None}]),
    # --- mo: Business Messaging incoming messages ---
    ("mo_business_message_whatsapp", mo(BM_MESSAGE), [{
        "kind": Kind.INBOUND, "phone": "+31612345678", "phone_raw": "0031612345678",
        "counterpart": "+31201234567", "body": "  STOP please  ", "message_ref": "ref-mt-42",
        "occurred_at": TIME, "provider_event_id": None}]),
    ("mo_business_message_media_only", mo({**BM_MESSAGE, "message": {"media": {"mediaUri": "u"}}}), [{
        "body": None}]),
    ("mo_business_message_no_time", mo({**BM_MESSAGE, "timeUtc": None}), [{"occurred_at": None}]),
    ("mo_business_message_bad_time", mo({**BM_MESSAGE, "timeUtc": "yesterday"}), [{"occurred_at": None}]),
    ("mo_business_message_instagram_id_kept", mo({**BM_MESSAGE, "channel": "Instagram",
                                                  "from": {"number": "1234567890"}}), [{
        "phone": "1234567890", "phone_raw": "1234567890"}]),
    ("mo_business_message_bare_numbers", mo({"from": {"number": 31612345678}, "to": {"number": "3669"},
                                            "message": {"text": "hi"}}), [{"phone": "+31612345678"}]),
    # --- events ---
    ("events_top_reference_wins", events({**EVENT, "event": {"type": "X", "reference": "123"}}), [{
        "provider_event_id": EVENT["reference"], "dedupe_key": f"cm:event:{EVENT['reference']}"}]),
    ("events_no_reference_hashed", events({k: v for k, v in EVENT.items() if k != "reference"}), [{
        "provider_event_id": None, "kind": Kind.EVENT}]),
    ("events_opt_in_subscribed", events({"from": {"number": "1234567890123"}, "to": {"number": "9876543210"},
                                        "event": {"type": "OptInSubscribed", "reference": "55"},
                                        "timeUtc": "2025-09-03T08:00:05", "channel": "Instagram"}), [{
        "kind": Kind.CONSENT, "consent": Outcome.OPT_IN, "phone": "1234567890123", "scope": "9876543210",
        "counterpart": "9876543210", "event_type": "OptInSubscribed", "occurred_at": TIME}]),
    ("events_opt_in_extended_messenger_lower_case", events({"From": {"Number": "7654321098"}, "to": {"number": "1"},
                                                          "event": {"Type": "optinextended"}}), [{
        "kind": Kind.CONSENT, "consent": Outcome.OPT_IN, "phone": "7654321098", "scope": "1"}]),
    ("events_missing_optional_fields", events({"event": {"type": "HumanAgentRequested", "reference": "1"}}), [{
        "phone": None, "counterpart": None, "occurred_at": None, "message_ref": None}]),
    ("events_time_with_fraction", events({**EVENT, "timeUtc": "2025-09-03T08:00:05.1234567"}), [{
        "occurred_at": datetime(2025, 9, 3, 8, 0, 5, 123456, tzinfo=UTC)}]),
    # --- status ---
    ("status_json_delivered", status(dlr()), [{
        "kind": Kind.STATUS, "status": Status.DELIVERED, "provider_status": "2", "message_ref": "ref-1",
        "user_ref": "ref-1", "phone": "+31612345678", "phone_raw": "0031612345678", "occurred_at": TIME,
        "provider_reason": None, "reason": None, "counterpart": None}]),
    ("status_json_failed_keeps_error_code", status(dlr("3", status={"code": 3, "errorCode": 23,
                                                                    "errorDescription": "Invalid MSISDN"})), [{
        "status": Status.FAILED, "provider_status": "3", "provider_reason": "Invalid MSISDN",
        "payload": dlr("3", status={"code": 3, "errorCode": 23, "errorDescription": "Invalid MSISDN"})
        ["messages"]["msg"]}]),
    ("status_json_list_of_msgs", status({"messages": {"msg": [dlr()["messages"]["msg"],
                                                              dlr("1", reference="ref-2")["messages"]["msg"]]}}), [
        {"status": Status.DELIVERED, "message_ref": "ref-1"}, {"status": Status.REJECTED, "message_ref": "ref-2"}]),
    ("status_json_top_level_msg_any_case", status({"MSG": {"TO": "+31612345678", "Reference": "r",
                                                           "Status": {"Code": "0"}, "Received": "2025-09-03 08:00:05"}}), [{
        "status": Status.SENT, "provider_status": "0", "occurred_at": TIME}]),
    ("status_json_word_code_any_case", status(dlr("DELIVERED")), [{"status": Status.DELIVERED,
                                                                   "provider_status": "DELIVERED"}]),
    ("status_json_status_as_word", status(dlr(status="Failed")), [{"status": Status.FAILED}]),
    ("status_json_unknown_code", status(dlr("17")), [{"status": Status.UNKNOWN, "provider_status": "17"}]),
    ("status_json_no_status", status(dlr(status=None)), [{"status": Status.UNKNOWN, "provider_status": None}]),
    ("status_json_empty_reference", status(dlr(reference="")), [{"message_ref": None, "user_ref": None}]),
    ("status_json_only_reference", status(dlr(to=None)), [{"phone": None, "message_ref": "ref-1"}]),
    ("status_json_received_with_offset", status(dlr(received="2025-09-03T10:00:05+02:00")), [{"occurred_at": TIME}]),
    ("status_json_received_not_a_date", status(dlr(received="[CREATED_S]")), [{"occurred_at": None}]),
    ("status_xml_two_msgs", status(XML_DLR, content_type="text/xml"), [
        {"status": Status.DELIVERED, "message_ref": "ref-1", "occurred_at": TIME, "phone": "+31612345678"},
        {"status": Status.FAILED, "message_ref": "ref-2", "provider_reason": "Invalid MSISDN",
         "payload": {"received": "2025-09-03 08:01:00", "to": "0031612345679", "reference": "ref-2",
                     "status": {"code": "3", "errorcode": "23", "errordescription": "Invalid MSISDN"}}}]),
    ("status_xml_single_msg_root", status(b"<msg received='2025-09-03T08:00:05'><to>0031612345678</to>"
                                          b"<status><code>Read</code></status></msg>", content_type=XML), [{
        "status": Status.DELIVERED, "message_ref": None, "occurred_at": TIME}]),
    # --- a body of another feed's shape (CM uses one URL per product) ---
    ("mo_receives_event", mo(EVENT), "looks like a Business Messaging event, arrived on mo"),
    ("mo_receives_status_json", mo(dlr()), "looks like a status report, arrived on mo"),
    ("mo_receives_status_xml", mo(XML_DLR, content_type=XML), "looks like a status report, arrived on mo"),
    ("events_receives_sms_mo", events(SMS_MO), "looks like an SMS MO, arrived on events"),
    ("events_receives_business_message", events(BM_MESSAGE), "looks like a Business Messaging incoming message"),
    ("events_receives_status", events(dlr()), "looks like a status report, arrived on events"),
    ("status_receives_sms_mo", status(SMS_MO), "looks like an SMS MO, arrived on status"),
    ("status_receives_event", status(EVENT), "looks like a Business Messaging event, arrived on status"),
    ("status_receives_mo_get", status(b"", method="GET", query="from=%2B316&body=x"), "looks like an SMS MO"),
    # --- garbage ---
    ("mo_empty_body", mo(b""), "not valid JSON"),
    ("mo_not_json", mo(b"not json"), "not valid JSON"),
    ("mo_json_list", mo(b"[]"), "expected an object"),
    ("events_json_null", events(b"null"), "expected an object"),
    ("status_invalid_utf8", status(b"\xff\xfe{}"), "not valid JSON"),
    ("status_invalid_xml", status(b"<MESSAGES><MSG>", content_type=XML), "not valid XML"),
    ("status_xml_entity_bomb", status(b'<!DOCTYPE x [<!ENTITY a "aaaa">]><MESSAGES>&a;</MESSAGES>',
                                      content_type=XML), "XML refused"),
    ("mo_without_from", mo({"to": "3669", "body": "x"}), "without 'from'"),
    ("mo_empty_object", mo({}), "without 'from'"),
    ("mo_get_empty", mo(b"", method="GET"), "without 'from'"),
    ("mo_from_is_list", mo({"from": ["+31612345678"], "body": "x"}), "'from' is a JSON list"),
    ("mo_body_is_object", mo({"from": "+31612345678", "body": {"text": "x"}}), "expected text"),
    ("mo_groupings_nested_object", mo({**SMS_MO, "groupings": [{"a": 1}]}), "expected text"),
    ("mo_business_message_not_object", mo({"from": {"number": "+31612345678"}, "message": "hi"}), "not an object"),
    ("mo_business_message_without_from", mo({"to": {"number": "3669"}, "message": {"text": "x"}}), "from.number"),
    ("mo_business_number_is_object", mo({"from": {"number": {"x": 1}}, "message": {}}), "'number' is a JSON dict"),
    ("events_event_not_object", events({"event": "click"}), "'event' is missing or not an object"),
    ("events_without_type", events({"event": {"reference": "1"}}), "event without 'event.type'"),
    ("events_type_is_list", events({"event": {"type": ["a"]}}), "'type' is a JSON list"),
    ("events_empty_object", events({}), "'event' is missing"),
    ("status_messages_not_object", status({"messages": []}), "'messages' is not an object"),
    ("status_messages_without_msg", status({"messages": {}}), "without messages.msg"),
    ("status_msg_empty_list", status({"messages": {"msg": []}}), "without messages.msg"),
    ("status_msg_not_object", status({"messages": {"msg": ["x"]}}), "msg #0 is not an object"),
    ("status_msg_neither_to_nor_reference", status(dlr(to="", reference=None)), "neither 'to' nor 'reference'"),
    ("status_to_is_object", status(dlr(to={"x": 1})), "'to' is a JSON dict"),
    ("status_code_is_list", status(dlr(["2"])), "'code' is a JSON list"),
    ("status_xml_empty_messages", status(b"<MESSAGES/>", content_type=XML), "without messages.msg"),
    ("status_xml_too_deep", status(b"<MESSAGES>" + b"<a>" * 20 + b"x" + b"</a>" * 20 + b"</MESSAGES>",
                                   content_type=XML), "nested too deeply"),
    ("unknown_feed", record("cm", "dlr", b"{}"), "unknown cm feed"),
]
# --- status reports as an account may choose them: the flat GET form, the older XML root ---
# The GET parameter names a third-party integration reads (tests/fixtures/README.md).
GET_PARAMS = example("cm/dlr-get-params-thirdparty.txt").decode().split()
GET_VALUES = {"reference": "ref-1", "sent": "2025-09-03T08:00:01", "received": "2025-09-03T08:00:05",
              "to": "0031612345678", "statuscode": "2", "errorcode": "0", "errordescription": ""}


def get_report(**values: str) -> RawRecord:
    """A GET status report: every documented parameter, in order, with `values` overriding."""
    merged = {**GET_VALUES, **values}
    return status(b"", method="GET", content_type="", query=urlencode([(name, merged[name]) for name in GET_PARAMS]))


CASES += [
    ("thirdparty_dlr_get", get_report(), [{
        "kind": Kind.STATUS, "status": Status.DELIVERED, "provider_status": "2", "message_ref": "ref-1",
        "user_ref": "ref-1", "phone": "+31612345678", "phone_raw": "0031612345678", "occurred_at": TIME,
        "provider_reason": None, "reason": None, "payload": GET_VALUES}]),
    ("thirdparty_dlr_get_failed_invalid_number", get_report(statuscode="3", errorcode="23",
                                                            errordescription="Unknown subscriber"), [{
        "status": Status.FAILED, "reason": Reason.INVALID_NUMBER, "provider_reason": "Unknown subscriber"}]),
    ("thirdparty_dlr_get_token_not_kept", status(b"", method="GET", query="reference=r&to=%2B31612345678&statuscode=0"
                                                 "&token=s3cret"), [{
        "status": Status.SENT, "payload": {"reference": "r", "to": "+31612345678", "statuscode": "0"}}]),
    # The Salesforce plugin in CM's GitHub organization reads a GET report as REFERENCE and STATUS
    # (CMTelecom/cm-salesforce-plugin, src/classes/CMTelecomWebServiceGateway.cls): names in any case,
    # `status` for `statuscode`.
    ("salesforce_plugin_dlr_get_upper_case", status(b"", method="GET", query="REFERENCE=r9&STATUS=1"), [{
        "status": Status.REJECTED, "provider_status": "1", "message_ref": "r9", "phone": None}]),
    ("thirdparty_dlr_xml_messages_sent_root", status(example("cm/dlr-xml-messages-sent-thirdparty.xml"),
                                                     content_type="text/xml"), [{
        "kind": Kind.STATUS, "status": Status.UNKNOWN, "provider_status": "200", "provider_reason": "No Error",
        "message_ref": "ref-3f2a", "phone": "+31612345678",
        "occurred_at": datetime(2009, 6, 15, 13, 45, 30, tzinfo=UTC)}]),
    ("mo_receives_status_get", mo(b"", method="GET", query="reference=r&to=%2B316&statuscode=2"),
     "looks like a status report, arrived on mo"),
    ("status_get_without_to_or_reference", status(b"", method="GET", query="statuscode=2&received=x"),
     "neither 'to' nor 'reference'"),
    ("status_get_without_status", status(b"", method="GET", query="reference=r&to=1"), "or a flat statuscode"),
]
# Every row of the error-code table, on a failed report; a delivered report keeps no reason.
CASES += [(f"status_error_code_{code}", status(dlr("3", status={"code": "3", "errorCode": code})), [{
    "status": Status.FAILED, "reason": reason}]) for code, reason in cm.ERROR_REASONS.items()]
CASES += [
    ("status_error_code_on_rejected", status(dlr("1", status={"code": "1", "errorCode": "37"})), [{
        "status": Status.REJECTED, "reason": Reason.BLOCKED, "consent": None}]),
    ("status_error_code_ignored_when_delivered", status(dlr("2", status={"code": "2", "errorCode": "23"})), [{
        "status": Status.DELIVERED, "reason": None}]),
    ("status_error_code_unlisted_keeps_row_reason", status(dlr("3", status={"code": "3", "errorCode": "99"})), [{
        "status": Status.FAILED, "reason": None}]),
]

# --- Business Messaging channels: CM's published per-channel examples ---
CASES += [
    # Apple ids: a GUID from the person, 32 digits for our business (dashes removed, CM says)
    ("published_mo_apple_business_chat", mo(example("cm/mo-apple-business-chat.json")), [{
        "kind": Kind.INBOUND, "phone": "00000000-0000-0000-0000-000000000000",
        "phone_raw": "00000000-0000-0000-0000-000000000000", "counterpart": "11111111111111111111111111111111",
        "body": "Edit appointment", "message_ref": "515836578",
        "occurred_at": datetime(2023, 9, 19, 14, 4, 45, tzinfo=UTC)}]),
    # page-scoped ids, all digits: read as phone numbers, "12345678" would become "+12345678"
    ("published_mo_facebook_messenger", mo(example("cm/mo-facebook-messenger.json")), [{
        "kind": Kind.INBOUND, "phone": "87654321", "counterpart": "12345678", "counterpart_raw": "12345678",
        "body": "Edit appointment", "message_ref": "my-reference",
        "occurred_at": datetime(2021, 5, 27, 13, 47, 52, tzinfo=UTC)}]),
    ("published_event_rcs_suggestionclick", events(example("cm/event-rcs-suggestionclick.json")), [{
        "kind": Kind.EVENT, "event_type": "SuggestionClick", "phone": "+3161234678", "phone_raw": "003161234678",
        "counterpart": "00cm.com_agent", "message_ref": "your_reference", "consent": None,
        "provider_event_id": "a73bc8c0-ecd6-4b7b-a7de-b6b8e527bf73"}]),
    ("published_event_rcs_istyping", events(example("cm/event-rcs-istyping.json")), [{
        "kind": Kind.EVENT, "event_type": "isTyping", "phone": "+31765727000", "counterpart": "+3222556611",
        "message_ref": None, "consent": None}]),
    ("published_event_messenger_optinsubscribed", events(example("cm/event-messenger-optinsubscribed.json")), [{
        "kind": Kind.CONSENT, "consent": Outcome.OPT_IN, "event_type": "OptInSubscribed",
        "phone": "Recipients PSID", "scope": "Your Facebook account ID",
        "occurred_at": datetime(2022, 10, 10, 12, 0, 0, tzinfo=UTC)}]),
    ("published_event_messenger_optinextended", events(example("cm/event-messenger-optinextended.json")), [{
        "kind": Kind.CONSENT, "consent": Outcome.OPT_IN, "event_type": "OptInExtended",
        "phone": "Recipients PSID", "scope": "Your Facebook account ID"}]),
    ("events_opt_in_digits_without_channel_kept_as_id", events({
        "from": {"number": "12345678"}, "to": {"number": "87"}, "event": {"type": "OptInSubscribed"}}), [{
        "kind": Kind.CONSENT, "phone": "12345678", "scope": "87"}]),
]

# --- the SMS MO "Xml" format: replies in MESSAGES/MSG, elements of their own (XML_MO_FIELDS) ---
SALESFORCE_MO = example("cm/mo-xml-messages-salesforce-plugin.xml")
CASES += [
    ("salesforce_plugin_mo_xml_messages_root", mo(SALESFORCE_MO, content_type=XML), [{
        "kind": Kind.INBOUND, "phone": "+31123456789", "phone_raw": "0123456789", "counterpart": "8850",
        "body": "Test", "message_ref": "a010Y00000ToIliQAF_20170620105591290", "provider_event_id": "519161862",
        "occurred_at": None}]),
    ("mo_xml_messages_two_replies", mo(b"<MESSAGES><MSG><SENDER>+31612345678</SENDER><MESSAGE>STOP</MESSAGE></MSG>"
                                       b"<MSG><SENDER>+31612345679</SENDER><MESSAGE>START</MESSAGE></MSG></MESSAGES>",
                                       content_type=XML), [
        {"phone": "+31612345678", "body": "STOP", "counterpart": None},
        {"phone": "+31612345679", "body": "START"}]),
    ("mo_xml_messages_reply_without_sender", mo(b"<MESSAGES><MSG><MESSAGE>hi</MESSAGE></MSG></MESSAGES>",
                                                content_type=XML), "SMS MO without 'from'"),
    ("status_receives_mo_xml_messages", status(SALESFORCE_MO, content_type=XML),
     "looks like an SMS MO, arrived on status"),
]

# Every row of the status table, as CM would send it in JSON.
CASES += [(f"status_table_{code}", status(dlr(code)), [{"status": expected[0], "reason": expected[1],
                                                        "provider_status": code}])
          for code, expected in cm.STATUS.items()]


def _check_invariants(raw: RawRecord, events_: list[Event]) -> None:
    for event in events_:
        assert event.provider == "cm" and event.feed == raw.feed
        assert event.dedupe_key.startswith("cm:")
        assert event.occurred_at is None or event.occurred_at.utcoffset() == UTC.utcoffset(None)
        orjson.dumps(dict(event.payload))
    assert len({event.dedupe_key for event in events_}) == len(events_)


@pytest.mark.parametrize(("label", "raw", "expected"), CASES, ids=[case[0] for case in CASES])
def test_parse(label: str, raw: RawRecord, expected: Expected) -> None:
    if isinstance(expected, str):
        with pytest.raises(ParseError, match=expected.replace("(", r"\(").replace(".", r"\.")):
            cm.parse(raw, CTX)
        return
    parsed = cm.parse(raw, CTX)
    _check_invariants(raw, parsed)
    assert len(parsed) == len(expected)
    for event, fields in zip(parsed, expected):
        assert {name: getattr(event, name) for name in fields} == fields


def test_mo_retry_collapses_and_ignores_context() -> None:
    """A retry (same body, later) and another default region give the same key: content only."""
    first = cm.parse(mo(SMS_MO), CTX)[0]
    again = cm.parse(mo(orjson.dumps(SMS_MO, option=orjson.OPT_INDENT_2)), ParseContext())[0]
    assert first.dedupe_key == again.dedupe_key and first.dedupe_key.startswith("cm:inbound:h:")
    other = cm.parse(mo({**SMS_MO, "body": "Another text"}), CTX)[0]
    assert other.dedupe_key != first.dedupe_key


def test_mo_formats_share_one_key() -> None:
    """Json, Get and Xml forms of one reply name the same content, so they dedupe alike."""
    body = {k: v for k, v in SMS_MO.items() if k != "groupings"}
    json_key = cm.parse(mo(body), CTX)[0].dedupe_key
    query = "reference=2f2d42ac-3809-40fb-bce5-dc720e4db138&from=%2B31612345678&to=3669&body=This+is+an+example+message."
    get_key = cm.parse(mo(b"", method="GET", query=query), CTX)[0].dedupe_key
    xml = (b"<MO><REFERENCE>2f2d42ac-3809-40fb-bce5-dc720e4db138</REFERENCE><FROM>+31612345678</FROM>"
           b"<TO>3669</TO><BODY>This is an example message.</BODY></MO>")
    xml_key = cm.parse(mo(xml, content_type=XML), CTX)[0].dedupe_key
    assert json_key == get_key == xml_key
    grouped = cm.parse(mo(XML_MO, content_type=XML), CTX)[0].dedupe_key
    as_json = {"reference": "2f2d42ac", "from": "+31612345678", "to": "3669", "body": " Stop ",
               "groupings": ["a", "b", "c"]}
    assert grouped == cm.parse(mo(as_json), CTX)[0].dedupe_key


def test_business_message_key_includes_time_and_channel() -> None:
    first = cm.parse(mo(BM_MESSAGE), CTX)[0].dedupe_key
    assert first == cm.parse(mo(BM_MESSAGE), ParseContext())[0].dedupe_key
    assert first != cm.parse(mo({**BM_MESSAGE, "timeUtc": "2025-09-03T08:05:05"}), CTX)[0].dedupe_key
    assert first != cm.parse(mo({**BM_MESSAGE, "channel": "SMS"}), CTX)[0].dedupe_key


def test_status_keys() -> None:
    """(reference, to, code, received): a new code or time is a new event; an exact repeat is not."""
    base = cm.parse(status(dlr()), CTX)[0].dedupe_key
    assert base == cm.parse(status(dlr()), ParseContext())[0].dedupe_key
    assert base != cm.parse(status(dlr("0")), CTX)[0].dedupe_key
    assert base != cm.parse(status(dlr(received="2025-09-03T08:00:06")), CTX)[0].dedupe_key
    twice = cm.parse(status({"messages": {"msg": [dlr()["messages"]["msg"]] * 2}}), CTX)
    assert [event.dedupe_key for event in twice] == [base, base + "#2"]


def test_national_number_without_region_stays_raw() -> None:
    event = cm.parse(mo({"from": "0612345678", "to": "3669", "body": "x"}), ParseContext())[0]
    assert event.phone == "0612345678" and event.phone_raw == "0612345678"


MALFORMED: list[RawRecord] = [
    mo(b"{"), mo(b'{"from": '), mo(b"\x00\x01"), mo(b"\xc3\x28"), mo(b"true"), mo(b"1e999"), mo(b'"x"'),
    mo(b"[" * 5000), mo(b'{"a":' * 2000 + b"1" + b"}" * 2000),
    mo({"from": None}), mo({"from": True, "body": False}), mo({"from": 1.5, "to": -3, "body": 0}),
    mo({"from": "x" * 10000, "body": "y"}), mo({"from": "+" + "9" * 200, "body": "y"}),
    mo({"from": {"number": []}, "message": {"text": "x"}}), mo({"from": {}, "message": {"text": 1}}),
    mo({"from": "+31612345678", "groupings": {"a": "b"}}), mo({"from": "+31612345678", "groupings": 7}),
    mo(b"<MO><FROM><X>1</X></FROM></MO>", content_type=XML), mo(b"<MO/>", content_type=XML),
    mo(b"<a:MO xmlns:a='urn:x'><a:FROM>+31612345678</a:FROM></a:MO>", content_type=XML),
    mo(b"", method="GET", query=b"from=%ff%fe&body=%00"), mo(b"", method="GET", query=b"from=\xff&body=\x80"),
    mo(b"from=1&body=2", content_type="application/x-www-form-urlencoded"),
    events({"event": {"type": "A"}, "timeUtc": 5}), events({"event": {"type": "A"}, "timeUtc": "0001-01-01T00:00:00+01:00"}),
    events({"event": {"type": "A"}, "from": "bare", "to": 3}), events({"event": {"type": {}}}),
    events({"event": {"type": "A", "reference": {"x": 1}}}), events({"event": [], "from": {"number": "1"}}),
    events({"event": {"type": "A"}, "messageContext": ["x"]}), events(b"<event/>", content_type=XML),
    status({"messages": {"msg": None}}), status({"messages": "x"}), status({"msg": 3}),
    status({"messages": {"msg": {"to": "1", "status": []}}}), status({"messages": {"msg": {"to": "1", "received": {}}}}),
    status({"messages": {"msg": {"to": "1", "received": "9999-12-31T23:59:59-01:00"}}}),
    status(b"<MESSAGES><MSG><TO>1</TO><TO>2</TO></MSG></MESSAGES>", content_type=XML),
    status(b"<MESSAGES><MSG><STATUS>x</STATUS><STATUS>y</STATUS><TO>1</TO></MSG></MESSAGES>", content_type=XML),
    status(b"<?xml version='1.0'?><!-- c --><MESSAGES><MSG RECEIVED=''/></MESSAGES>", content_type=XML),
    status(b'<!DOCTYPE x SYSTEM "http://example.com/x.dtd"><MESSAGES/>', content_type=XML),
]


@pytest.mark.parametrize("raw", MALFORMED, ids=[f"malformed_{index}" for index in range(len(MALFORMED))])
def test_malformed_raises_only_parse_error(raw: RawRecord) -> None:
    try:
        parsed = cm.parse(raw, CTX)
    except ParseError as exc:
        assert str(exc)
    else:
        _check_invariants(raw, parsed)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_KEYS = st.sampled_from(["from", "to", "body", "reference", "groupings", "message", "event", "timeUtc", "channel",
                         "messageContext", "messages", "msg", "MSG", "status", "received", "number", "type", "text"])
_FIELDS = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12) | st.sampled_from(["0031612345678", "2", "Delivered", "X"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(feed=st.sampled_from(sorted(cm.FEEDS)), body=st.dictionaries(_KEYS, _FIELDS, max_size=6))
def test_shaped_json_never_raises_other_errors(feed: str, body: dict[str, Any]) -> None:
    raw = record("cm", feed, orjson.dumps(body))
    try:
        _check_invariants(raw, cm.parse(raw, CTX))
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(feed=st.sampled_from(sorted(cm.FEEDS)), value=_JSON, junk=st.binary(max_size=40),
       content_type=st.sampled_from(["application/json", XML, "", "application/x-www-form-urlencoded"]),
       method=st.sampled_from(["POST", "GET"]))
def test_any_bytes_never_raise_other_errors(
    feed: str, value: object, junk: bytes, content_type: str, method: str
) -> None:
    for body in (orjson.dumps(value), junk, b"<MO>" + junk + b"</MO>"):
        raw = record("cm", feed, body, content_type=content_type, method=method, query=junk)
        try:
            _check_invariants(raw, cm.parse(raw, CTX))
        except ParseError:
            pass


# --- who a Business Messaging number names, per channel (CHANNELS) ---
# Every channel CM documents, by the name its payloads or SDKs use, and channels it does not
# document: an all-digit id too short to tell from a phone number is read as one only on a
# phone channel. ("Apple Business Chat" is the name incoming Apple messages still carry.)
PHONE, ACCOUNT = cm.Identity.PHONE, cm.Identity.ACCOUNT
CHANNEL_NAMES: list[tuple[str, cm.Identity]] = [
    ("SMS", PHONE), ("WhatsApp", PHONE), ("RCS", PHONE), ("Viber", PHONE), ("Voice", PHONE),
    ("Apple Business Chat", ACCOUNT), ("Apple Messages for Business", ACCOUNT), ("iMessage", ACCOUNT),
    ("Instagram", ACCOUNT), ("Facebook Messenger", ACCOUNT), ("Messenger", ACCOUNT), ("Facebook", ACCOUNT),
    ("Google Business Messages", ACCOUNT), ("Telegram", ACCOUNT), ("Twitter", ACCOUNT), ("Line", ACCOUNT),
    ("Push", ACCOUNT), ("MobilePush", ACCOUNT),
    # not documented by CM: ids, never guessed into phone numbers
    ("KakaoTalk", ACCOUNT), ("WeChat", ACCOUNT), ("X", ACCOUNT), ("Some Future Channel", ACCOUNT),
    # spelled another way
    ("whatsapp", PHONE), ("APPLE_BUSINESS_CHAT", ACCOUNT), ("FacebookMessenger", ACCOUNT), (" sms ", PHONE),
]
SHORT_ID = "12345678"  # 8 digits: the phone rules read it as "+12345678"


@pytest.mark.parametrize(("channel", "identity"), CHANNEL_NAMES, ids=[name for name, _ in CHANNEL_NAMES])
def test_channel_decides_what_a_number_is(channel: str, identity: cm.Identity) -> None:
    message = {"from": {"number": SHORT_ID}, "to": {"number": SHORT_ID}, "message": {"text": "hi"},
               "timeUtc": "2025-09-03T08:00:05", "channel": channel}
    event = {**{k: v for k, v in message.items() if k != "message"}, "event": {"type": "X", "reference": "1"}}
    expected = "+12345678" if identity is PHONE else SHORT_ID
    for raw in (mo(message), events(event)):
        [parsed] = cm.parse(raw, CTX)
        assert (parsed.phone, parsed.counterpart, parsed.phone_raw) == (expected, expected, SHORT_ID)


def test_every_channel_row_is_tested() -> None:
    tested = {"".join(c for c in name.lower() if c.isalnum()) for name, _ in CHANNEL_NAMES}
    assert set(cm.CHANNELS) <= tested
    assert all(cm.CHANNELS[key] is identity for name, identity in CHANNEL_NAMES
               if (key := "".join(c for c in name.lower() if c.isalnum())) in cm.CHANNELS)


@pytest.mark.parametrize("event_type", sorted(cm.CONSENT_EVENTS))
def test_consent_event_rows(event_type: str) -> None:
    """Each row is a CONSENT event of its outcome, for the sender as sent, scoped to the account."""
    outcome, channel = cm.CONSENT_EVENTS[event_type]
    body = {"from": {"number": "1234"}, "to": {"number": "5678"}, "timeUtc": "2025-09-03T08:00:05",
            "event": {"type": event_type.upper(), "reference": "9"}, "channel": channel}
    [event] = cm.parse(events(body), CTX)
    assert (event.kind, event.consent, event.phone, event.scope) == (Kind.CONSENT, outcome, "1234", "5678")
    assert cm.CHANNELS["".join(c for c in channel.lower() if c.isalnum())] is ACCOUNT


def test_status_report_formats_share_one_key() -> None:
    """JSON, XML and GET forms of one report name the same content, so they dedupe alike."""
    json_key = cm.parse(status(dlr(status={"code": "2", "errorCode": "0"})), CTX)[0].dedupe_key
    get_key = cm.parse(get_report(), CTX)[0].dedupe_key
    xml = (b'<MESSAGES SENT="2025-09-03T08:00:06"><MSG RECEIVED="2025-09-03T08:00:05"><TO>0031612345678</TO>'
           b"<REFERENCE>ref-1</REFERENCE><STATUS><CODE>2</CODE><ERRORCODE>0</ERRORCODE></STATUS></MSG></MESSAGES>")
    xml_key = cm.parse(status(xml, content_type=XML), CTX)[0].dedupe_key
    assert json_key == get_key == xml_key


def test_xml_reply_keys_as_its_json_form() -> None:
    """The Xml and Json forms of one reply name the same content, so a reply in either dedupes alike."""
    as_json = {"reference": "a010Y00000ToIliQAF_20170620105591290", "from": "0123456789", "to": "8850", "body": "Test",
               "groupings": ["", "", "Salesforce"]}
    xml_key = cm.parse(mo(SALESFORCE_MO, content_type=XML), CTX)[0].dedupe_key
    assert xml_key == cm.parse(mo(as_json), CTX)[0].dedupe_key
