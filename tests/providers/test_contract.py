"""One contract for every provider in the registry (each provider adds its own table beside this).

Checked for each: every published example either parses into events or is refused with a
reason; an unknown status becomes `unknown` with the provider's value kept; garbage on every
feed becomes a dead letter with a reason, never an exception.
"""

from __future__ import annotations

import json

import pytest

from shared.errors import ParseError
from shared.events import Kind, Status
from shared.providers import REGISTRY, ParseContext
from shared.record import RawRecord
from tests.providers.util import example, record
from workers.normalize import NormalizeContext, normalize_entry

CTX = ParseContext()

# (provider, feed, example file, content type, method, parses): `parses=False` for the
# published templates that carry no usable data (they must be refused with a reason).
EXAMPLES = [
    ("cm", "events", "cm/event-instagram-messagedelete.json", "application/json", "POST", True),
    ("cm", "events", "cm/event-instagram-storymention.json", "application/json", "POST", True),
    ("cm", "status", "cm/dlr-json-template.json", "application/json", "POST", True),
    ("cm", "status", "cm/dlr-xml-template.txt", "text/xml", "POST", True),
    ("smsmode", "status", "smsmode/dlr-callback-http-v1.txt", "", "GET", True),
    ("smsmode", "mo", "smsmode/mo-callback-http-v1.txt", "", "GET", True),
    ("mx2", "webhook", "mx2/webhook-request-template.json", "application/json", "POST", False),
    ("gatewayapi", "rest", "gatewayapi/dlr-rest-callback.json", "application/json", "POST", True),
    ("gatewayapi", "rest", "gatewayapi/mo-rest-callback.json", "application/json", "POST", True),
    ("gatewayapi", "rest", "gatewayapi/dlr-x-gwapi-signature-jwt.claims.json", "application/json", "POST", True),
    ("gatewayapi", "events", "gatewayapi/messaging-api-envelope.txt", "application/json", "POST", False),
]

# A status the provider never sends, in each provider's own shape.
UNKNOWN_STATUS = [
    ("cm", "status", json.dumps({"messages": {"msg": {"received": "2025-01-01T10:00:00", "to": "+31612345678",
                                                      "reference": "r1", "status": {"code": "77"}}}}), ""),
    ("smsmode", "status", "", "numero=33612345678&date_reception=2025-01-01+10%3A00%3A00&statut=4242&smsID=S1"),
    ("mx2", "webhook", json.dumps({"subscriberId": "s1", "cguid": "c1", "status": "teleported",
                                   "datetime": "2025-01-01 10:00:00"}), ""),
    ("gatewayapi", "rest", json.dumps({"id": 1, "msisdn": 4512345678, "time": 1700000000, "status": "TELEPORTED"}), ""),
]

GARBAGE = [b"", b"not json", b"[]", b"null", b"{}", b"\xff\xfe\x00", b"<a><b></a>", b'{"a": {"b": [1, 2, {}]}}']


def _query_of(url: bytes) -> bytes:
    return url.split(b"?", 1)[1] if b"?" in url else url


def _example_record(provider: str, feed: str, name: str, content_type: str, method: str) -> RawRecord:
    raw = example(name)
    if method == "GET":
        return record(provider, feed, b"", query=_query_of(raw), method="GET", content_type="")
    return record(provider, feed, raw, content_type=content_type)


def test_registry_names_every_provider() -> None:
    assert set(REGISTRY) == {"cm", "smsmode", "mx2", "gatewayapi"}
    for name, module in REGISTRY.items():
        assert module.NAME == name and module.FEEDS


@pytest.mark.parametrize(("provider", "feed", "name", "content_type", "method", "parses"), EXAMPLES,
                         ids=[e[2] for e in EXAMPLES])
def test_published_examples(provider: str, feed: str, name: str, content_type: str, method: str, parses: bool) -> None:
    rec = _example_record(provider, feed, name, content_type, method)
    if not parses:
        with pytest.raises(ParseError):
            REGISTRY[provider].parse(rec, CTX)
        return
    events = REGISTRY[provider].parse(rec, CTX)
    assert events
    for event in events:
        assert event.provider == provider and event.feed == feed
        assert event.dedupe_key.startswith(f"{provider}:")
        json.dumps(event.payload, default=str)  # storable as jsonb
    assert len({e.dedupe_key for e in events}) == len(events)


@pytest.mark.parametrize(("provider", "feed", "body", "query"), UNKNOWN_STATUS, ids=[u[0] for u in UNKNOWN_STATUS])
def test_unknown_status_maps_to_unknown(provider: str, feed: str, body: str, query: str) -> None:
    rec = record(provider, feed, body, query=query, method="GET" if query else "POST",
                 content_type="" if query else "application/json")
    [event] = [e for e in REGISTRY[provider].parse(rec, CTX) if e.kind is Kind.STATUS]
    assert event.status is Status.UNKNOWN
    assert event.provider_status


@pytest.mark.parametrize("provider, feed", [(p, f) for p, m in sorted(REGISTRY.items()) for f in sorted(m.FEEDS)])
@pytest.mark.parametrize("body", GARBAGE, ids=[repr(g)[:20] for g in GARBAGE])
def test_garbage_is_a_dead_letter_with_a_reason(provider: str, feed: str, body: bytes) -> None:
    fields = record(provider, feed, body).to_fields()
    entry = normalize_entry("1-0", fields, NormalizeContext())
    assert not entry.events
    assert entry.dead_reason
