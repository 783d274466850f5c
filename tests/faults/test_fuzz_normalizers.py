"""Property-based fuzzing of every normalizer through `workers.normalize.normalize_entry`.

Records of every provider and feed are generated from valid payloads and then broken: random
bytes, invalid UTF-8, wrong types in every field, missing fields, extra fields, deep and huge
JSON, XML with entity expansion or external entities, query strings with repeated keys and bad
escapes, and stream entries that are not hookstream records at all. The properties:

- normalize_entry never raises; an entry is its events or a dead letter with a reason, and the
  reason is a ParseError's ("normalizer failed: …" would be a bug in a provider module);
- the entries are then written to a real PostgreSQL through the workers' own store: no record
  may make the batch fail (the database refusing one record dead-letters that record only).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from bench.payloads import MAKERS
from shared.events import Kind
from shared.record import RawRecord
from shared.settings import Settings
from tests.faults.harness import Servers, count, no_other_threads
from workers.batch import write_bisecting
from workers.context import normalize_context
from workers.normalize import Entry, normalize_entry

CTX = normalize_context(Settings(gatewayapi_keywords=frozenset({"foo"}), default_region="NL"))

# -- valid starting points, one or more per provider and feed ---------------------------------------


def _bench(i: int) -> tuple[str, str, str, bytes, bytes]:
    import random

    return MAKERS[i % len(MAKERS)](i, random.Random(i))


SEEDS: list[tuple[str, str, str, bytes, bytes]] = [_bench(i) for i in range(len(MAKERS))] + [
    ("cm", "mo", "application/xml", b"<MO><FROM>+31612345678</FROM><TO>3669</TO><BODY>STOP</BODY>"
     b"<REFERENCE>r</REFERENCE></MO>", b""),
    ("cm", "mo", "", b"", b"from=%2B31612345678&to=3669&body=STOP&reference=r1"),
    ("cm", "mo", "application/json", orjson.dumps({"from": {"number": "+31612345678"}, "to": {"number": "3669"},
                                                   "message": {"text": "stop"}, "channel": "WhatsApp",
                                                   "timeUtc": "2025-09-03T08:00:05", "reference": "x"}), b""),
    ("cm", "status", "text/xml", b'<?xml version="1.0"?><MESSAGES><MSG><TO>0031612345678</TO><REFERENCE>r</REFERENCE>'
     b"<STATUS><CODE>2</CODE></STATUS><RECEIVED>2025-09-03T08:00:05</RECEIVED></MSG><MSG><TO>x</TO></MSG></MESSAGES>", b""),
    ("cm", "events", "application/json", orjson.dumps({"event": {"type": "OptInSubscribed", "reference": "e"},
                                                       "from": {"number": "17841400000000000"},
                                                       "to": {"number": "1234"}, "channel": "Instagram"}), b""),
    ("smsmode", "status", "application/json", orjson.dumps({"messageId": "m", "direction": "MT", "from": "36034",
                                                            "recipient": {"to": "33612345678"},
                                                            "status": {"value": "DELIVERED",
                                                                       "deliveryDate": "2025-03-25T09:52:17Z"}}), b""),
    ("smsmode", "mo", "application/json", orjson.dumps({"messageId": "m", "direction": "MO", "from": "33612345678",
                                                        "recipient": {"to": "36034"}, "body": {"text": "STOP"},
                                                        "sentDate": "2025-03-25T09:52:17+01:00"}), b""),
    ("smsmode", "status", "application/x-www-form-urlencoded",
     b"numero=33612345678&statut=3999&smsID=S1&date_reception=2025-03-25+09%3A52%3A17", b""),
    ("mx2", "webhook", "application/json", orjson.dumps({"subscriberId": "s", "cguid": "c", "status": "optout",
                                                         "datetime": "2024-11-03 01:30:00"}), b""),
    ("gatewayapi", "events", "application/json",
     orjson.dumps({"event_id": "e", "timestamp": "2025-04-01T11:50:12+00:00", "event_type": "user-message.text.sms",
                   "event": {"msg_id": "m", "sender": 4512345678, "content": {"message": "foo stop"}}}), b""),
]

# -- ways to break them --------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", " ", "0", "00", "+", "STOP", "2025-13-45T99:99:99", "1e999", "\x00", "０", "NaN",
                     "9" * 40, "2024-03-10 02:30:00", "99999999999999999999", "-1", "ＳＴＯＰ", "<x/>"]),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _mutate_json(data: Any, draw: Any) -> Any:
    """Wrong types, missing and extra fields, at the top and one level down."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for key in list(data):
        action = draw(st.sampled_from(["keep", "keep", "drop", "replace", "recurse"]))
        if action == "drop":
            del data[key]
        elif action == "replace":
            data[key] = draw(json_values)
        elif action == "recurse" and isinstance(data[key], dict):
            data[key] = _mutate_json(data[key], draw)
    for _ in range(draw(st.integers(0, 2))):
        data[draw(st.text(max_size=10))] = draw(json_values)
    return data


def _mutate_query(query: bytes, draw: Any) -> bytes:
    pairs = [part.split(b"=", 1) for part in query.split(b"&") if part]
    out = []
    for pair in pairs:
        key, value = pair[0], pair[1] if len(pair) > 1 else b""
        action = draw(st.sampled_from(["keep", "keep", "drop", "replace", "repeat", "bad escape"]))
        if action == "drop":
            continue
        if action == "replace":
            value = quote(draw(st.text(max_size=30)), safe="").encode()
        if action == "bad escape":
            value = draw(st.sampled_from([b"%", b"%zz", b"%ff%fe", b"%00", b"%ED%A0%80", b"%C3%28", b"%E9t%E9"]))
        out.append(key + b"=" + value)
        if action == "repeat":
            out.append(key + b"=" + quote(draw(st.text(max_size=10)), safe="").encode())
    for _ in range(draw(st.integers(0, 2))):
        out.append(quote(draw(st.text(max_size=6)), safe="").encode() + b"=" + draw(st.binary(max_size=8)))
    return b"&".join(out)


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                             for i in range(1, 10))
                  + b"]><MO><FROM>+31612345678</FROM><BODY>&lol9;</BODY></MO>")
XXE = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b"<MO><FROM>+31612345678</FROM><BODY>&x;</BODY></MO>")
QUADRATIC = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + b"a" * 5000 + b'">]><MO><BODY>' + b"&a;" * 200 + b"</BODY></MO>"
HOSTILE_BODIES = [
    BILLION_LAUGHS, XXE, QUADRATIC,
    b'<!DOCTYPE MO SYSTEM "http://127.0.0.1:1/dtd"><MO><FROM>1</FROM></MO>',
    b"<MO>" * 5000 + b"</MO>" * 5000, b"[" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
    orjson.dumps({"messages": {"msg": [{"to": str(i), "reference": "r", "status": {"code": "2"}} for i in range(3000)]}}),
    orjson.dumps(list(range(20000))), b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"\x00" * 100, b"{" + b"\x00" * 10 + b"}",
    b'{"from": "+31612345678", "body": "a\\u0000b", "reference": "\\u0000"}', b"<MO><BODY>\x80\x81</BODY></MO>",
    b'{"id": 1e308, "msisdn": -0.0, "status": "DELIVERED", "time": 1e20}', b'{"msisdn": 123456789012345678901234567890}',
]


@st.composite
def broken_records(draw: Any) -> RawRecord:
    provider, feed, content_type, body, query = draw(st.sampled_from(SEEDS))
    how = draw(st.sampled_from(["json", "json", "query", "bytes", "hostile", "utf8", "feed", "content type"]))
    if how == "json" and body[:1] == b"{":
        # The json module: integers beyond 64 bits are among the values sent.
        body = json.dumps(_mutate_json(orjson.loads(body), draw), ensure_ascii=draw(st.booleans())).encode()
    elif how == "json" or how == "query":
        query = _mutate_query(query or body, draw) if query else query
        if not query and body[:1] != b"<":
            body = _mutate_query(body, draw)
    elif how == "bytes":
        body = draw(st.binary(max_size=300))
        query = draw(st.one_of(st.just(query), st.binary(max_size=60)))
    elif how == "hostile":
        body = draw(st.sampled_from(HOSTILE_BODIES))
    elif how == "utf8":  # invalid UTF-8 spliced into a valid body
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80"]))\
            + body[cut:]
    elif how == "feed":  # a body of another feed of the same provider
        feed = draw(st.sampled_from(sorted({f for p, f, *_ in SEEDS if p == provider})))
    else:
        content_type = draw(st.sampled_from(["", "application/json", "text/xml", "application/xml; charset=utf-8",
                                             "application/x-www-form-urlencoded", "text/plain", "ä/ö", "json"]))
    method = draw(st.sampled_from(["GET", "POST"])) if draw(st.booleans()) else ("GET" if query and not body else "POST")
    return RawRecord(provider=provider, feed=feed, method=method, query=query, content_type=content_type,
                     headers={"content-type": content_type}, client="127.0.0.1",
                     received_at_ms=draw(st.integers(0, 4_102_444_800_000)), body=body)


def not_records() -> st.SearchStrategy[dict[bytes, bytes]]:
    """Stream entries someone else wrote: missing, undecodable or out-of-range fields."""
    keys = st.sampled_from([b"v", b"p", b"f", b"m", b"q", b"ct", b"h", b"ip", b"t", b"b", b"x"])
    values = st.one_of(st.binary(max_size=20), st.sampled_from(
        [b"cm", b"mo", b"{}", b"[1]", b'"s"', b"null", b"-1", b"99999999999999999999", b"1e3", b"\xff", b"0"]))
    return st.dictionaries(keys, values, max_size=11)


def check_entry(entry: Entry, record: RawRecord | None) -> None:
    assert (entry.dead_reason is None) == bool(entry.events), entry
    if entry.dead_reason is not None:
        assert entry.dead_reason.strip()
        assert not entry.dead_reason.startswith("normalizer failed"), \
            f"a provider module raised something other than ParseError: {entry.dead_reason}"
        count("fuzz_dead_letters")
        return
    for event in entry.events:
        assert isinstance(event.dedupe_key, str) and event.dedupe_key.startswith(f"{event.provider}:")
        assert record is not None and event.provider == record.provider and event.feed == record.feed
        assert event.kind in Kind
        count("fuzz_events")


COLLECTED: list[Entry] = []
FAST = settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=6000, deadline=None, suppress_health_check=list(HealthCheck))


def _fuzz(profile: settings) -> None:
    @profile
    @given(record=broken_records(), n=st.integers(0, 10**6))
    def broken(record: RawRecord, n: int) -> None:
        count("bad_inputs_tried")
        sid = f"{1_700_000_000_000 + n}-{len(COLLECTED)}"
        entry = normalize_entry(sid, record.to_fields(), CTX)
        check_entry(entry, record)
        COLLECTED.append(entry)

    @settings(profile, max_examples=max(100, profile.max_examples // 6))
    @given(fields=not_records(), n=st.integers(0, 10**6))
    def foreign(fields: dict[bytes, bytes], n: int) -> None:
        count("bad_inputs_tried")
        sid = f"{1_700_000_000_000 + n}-{len(COLLECTED)}"
        entry = normalize_entry(sid, fields, CTX)
        check_entry(entry, entry.record)
        COLLECTED.append(entry)

    broken()
    foreign()


@pytest.fixture
def scratch_db(fault_servers: Servers) -> str:
    return fault_servers.fresh_database("faults_fuzz")


def fuzz_through_the_store(url: str, profile: settings) -> None:
    COLLECTED.clear()
    # Nothing may draw from the global `random` while hypothesis generates: no thread left over
    # from an earlier test, and the store's pool (whose threads do) only afterwards.
    no_other_threads()
    _fuzz(profile)
    assert COLLECTED
    # The store's own path: one transaction per batch, a refused record bisected to a dead letter.
    # Anything raised here (not a psycopg error) would fail the whole batch in production.
    entries = list({entry.stream_id: entry for entry in COLLECTED}.values())
    with ConnectionPool(url, min_size=1, max_size=1, open=True, kwargs={"prepare_threshold": None}) as pool:
        for i in range(0, len(entries), 200):
            write_bisecting(pool, entries[i : i + 200])
        with pool.connection() as conn:
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]  # type: ignore[index]
            refused = conn.execute("SELECT count(*) FROM dead_letters WHERE reason LIKE 'database refused%'"
                                   ).fetchone()[0]  # type: ignore[index]
    assert dead == sum(1 for e in entries if e.dead_reason is not None) + refused
    count("fuzz_records_written", len(entries))
    count("fuzz_records_refused_by_postgres", refused)


def test_fuzzed_records_are_events_or_dead_letters(scratch_db: str) -> None:
    fuzz_through_the_store(scratch_db, FAST)


@pytest.mark.faults_long
@pytest.mark.timeout(900)
def test_long_fuzzed_records_are_events_or_dead_letters(scratch_db: str) -> None:
    fuzz_through_the_store(scratch_db, LONG)


def test_hostile_xml_is_refused_not_expanded() -> None:
    for body in (BILLION_LAUGHS, XXE, QUADRATIC):
        record = RawRecord("cm", "mo", "POST", b"", "application/xml", {}, "1.2.3.4", 1, body)
        entry = normalize_entry("1-0", record.to_fields(), CTX)
        assert entry.dead_reason is not None and "XML refused" in entry.dead_reason, entry.dead_reason
        count("bad_inputs_tried")


def test_repeated_query_keys_first_value_wins_and_nothing_breaks() -> None:
    query = urlencode([("numero", "33612345678"), ("statut", "11"), ("statut", "3999"), ("smsID", "S1"),
                       ("smsID", ""), ("date_reception", "2025-03-25 09:52:17")]).encode()
    record = RawRecord("smsmode", "status", "GET", query, "", {}, "1.2.3.4", 1, b"")
    entry = normalize_entry("1-0", record.to_fields(), CTX)
    [event] = entry.events
    assert (event.provider_status, event.message_ref) == ("11", "S1")
    count("bad_inputs_tried")
