"""What a GatewayAPI JWT binds: the body must be its claims, field for field and type for type."""

from __future__ import annotations

import json

import pytest

from ingress.auth import same_json, signed_body

# GatewayAPI's published example token decodes to these claims (docs/rest.rst of
# onlinecity/gatewayapi-docs, "Authentication token"); `callback_url` and `api` are not body fields.
CLAIMS = {"id": 2381703, "msisdn": 4542609045, "time": 1522764062, "status": "DELIVERED", "error": None,
          "code": None, "userref": None, "callback_url": "http://bbaf7142.ngrok.io", "api": 4}
PAYLOAD = {name: value for name, value in CLAIMS.items() if name not in ("callback_url", "api")}


def body(**changes: object) -> bytes:
    return json.dumps({**PAYLOAD, **changes}).encode()


def without(name: str) -> bytes:
    return json.dumps({key: value for key, value in PAYLOAD.items() if key != name}).encode()


@pytest.mark.parametrize(("left", "right"), [
    (1, 1.0), (1, True), (0, False), (0, None), ("1", 1), ("", None), (1.0, True),
    ([1], [1.0]), ([1, 2], [1]), ([], {}), ({"a": 1}, {"a": True}), ({"a": 1}, {"b": 1}),
    ({"a": {"b": [1, {"c": None}]}}, {"a": {"b": [1, {"c": False}]}}), ({"a": [1]}, {"a": [1], "b": None}),
])
def test_same_json_tells_types_apart(left: object, right: object) -> None:
    assert not same_json(left, right)
    assert not same_json(right, left)


def test_same_json_accepts_equal_values_at_any_depth() -> None:
    nested = {"a": [1, 2.5, "x", None, True, {"b": []}], "c": {}}
    assert same_json(nested, json.loads(json.dumps(nested)))
    deep: object = 1
    for _ in range(100_000):  # far deeper than recursion could go
        deep = [deep]
    assert same_json(deep, deep)


def test_the_payload_without_the_extra_claims_is_signed() -> None:
    assert signed_body(CLAIMS, json.dumps(PAYLOAD).encode())
    assert signed_body(CLAIMS, json.dumps(CLAIMS).encode())  # repeating them, exactly, is fine
    assert signed_body(CLAIMS, body(callback_url="http://bbaf7142.ngrok.io"))


@pytest.mark.parametrize(("label", "raw"), [
    ("time left out (a replay meant to sort last)", without("time")),
    ("status left out", without("status")),
    ("a null claim left out", without("error")),
    ("another status", body(status="UNDELIVERABLE")),
    ("time as a float", body(time=1522764062.0)),
    ("id as a string", body(id="2381703")),
    ("null as false", body(error=False)),
    ("null as an empty string", body(userref="")),
    ("a field the token does not sign", body(extra=1)),
    ("another callback_url", body(callback_url="https://evil.example")),
    ("api as a string", body(api="4")),
    ("api as a float", body(api=4.0)),
    ("a field twice, the signed value first", json.dumps(PAYLOAD)[:-1].encode() + b', "status": "EXPIRED"}'),
    ("a field twice, the signed value last", b'{"status": "EXPIRED", ' + json.dumps(PAYLOAD)[1:].encode()),
    ("NaN", body()[:-1] + b', "x": NaN}'),
    ("UTF-16", json.dumps(PAYLOAD).encode("utf-16")),
    ("byte order mark", b"\xef\xbb\xbf" + json.dumps(PAYLOAD).encode()),
    ("not UTF-8", body()[:-1] + b', "\xff": 1}'),
    ("an array", json.dumps([PAYLOAD]).encode()),
    ("empty", b""),
    ("too deep to parse", b"[" * 100_000 + b"]" * 100_000),
])
def test_any_other_body_is_not_signed(label: str, raw: bytes) -> None:
    assert not signed_body(CLAIMS, raw)


def test_nested_claims_are_compared_with_their_types() -> None:
    claims = {"id": 1, "meta": {"n": 1, "list": [0, "a", None], "flag": False}}
    assert signed_body(claims, json.dumps(claims).encode())
    for meta in ({"n": 1.0, "list": [0, "a", None], "flag": False},
                 {"n": True, "list": [0, "a", None], "flag": False},
                 {"n": 1, "list": [False, "a", None], "flag": False},
                 {"n": 1, "list": [0, "a"], "flag": False},
                 {"n": 1, "list": [0, "a", None], "flag": 0},
                 {"n": 1, "list": [0, "a", None]}):
        assert not signed_body(claims, json.dumps({"id": 1, "meta": meta}).encode()), meta
