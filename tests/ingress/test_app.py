"""The ingress against a real redis-server: routes, sources, sizes, signatures, exact bytes stored."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator

import jwt
import pytest
import redis
from starlette.testclient import TestClient

from ingress.app import create_app
from ingress.webhook import MAX_KEPT_HEADER_BYTES, RECORD_ALLOWANCE_BYTES, BodyTooLarge, read_body
from shared.record import KEPT_HEADERS, RawRecord
from shared.settings import NetList, Settings
from tests.providers.util import example

CM_IP = "31.169.56.10"
OUTSIDE_IP = "203.0.113.50"
PROXY_IP = "10.1.2.3"
GWAPI_IP = "35.241.147.191"

Factory = Callable[..., TestClient]


async def fake_dns() -> list[str]:
    return [GWAPI_IP]


@pytest.fixture
def ingress(redis_url: str, redis_client: redis.Redis) -> Iterator[Factory]:
    """Build an ingress client seen from `client_ip`, with settings overrides."""
    opened: list[TestClient] = []

    def make(client_ip: str = CM_IP, **overrides: object) -> TestClient:
        settings = Settings(redis_url=redis_url, **overrides)  # type: ignore[arg-type]
        client = TestClient(create_app(settings, resolver=fake_dns), client=(client_ip, 40000))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def stored(redis_client: redis.Redis) -> list[RawRecord]:
    return [RawRecord.from_fields(fields, sid.decode()) for sid, fields in redis_client.xrange("hookstream:raw")]


def url_query(relative: str) -> str:
    return example(relative).decode().split("?", 1)[1]


JSON = {"content-type": "application/json"}
BRIEF_CM_MO = b'{"reference": "2f2d42ac-3809-40fb-bce5-dc720e4db138", "from": "+31612345678", "to": "3669", "body": "This is an example message.", "groupings": ["", "", ""]}'
BRIEF_CM_EVENT = json.dumps({
    "reference": "121c38a5-cf77-424a-9ea9-d6c044a845f8", "messageContext": "msg$abeade67-de9c-45ba-bcfd-abcae1d1879f",
    "from": {"number": "0031612345678"}, "to": {"number": "003222556611"},
    "event": {"type": "SuggestionClick", "custom": {"postbackdata": "btn$123456", "label": "View on our website"}},
    "groupings": ["Marketing", "Campaign_Party_2025", "Target_Group_A"], "timeUtc": "2025-09-03T08:00:05", "channel": "RCS",
}).encode()
MX2_SENT = b'{"subscriberId": "xct7jy", "cguid": "71349011-E13D-43FC-ADB4-DAE215EA5438", "status": "sent", "statusmessage": "", "textMessage": "", "messageType": "Initial", "datetime": "2024-03-25 20:01:58"}'


def examples() -> list[tuple[str, str, str, bytes, str, dict[str, str]]]:
    """(label, method, path, body, query, headers) for every published and brief example."""
    return [
        ("cm mo brief", "POST", "/webhooks/cm/mo", BRIEF_CM_MO, "", JSON),
        ("cm mo get", "GET", "/webhooks/cm/mo", b"", "from=%2B31612345678&to=3669&body=STOP&reference=r1", {}),
        ("cm mo xml", "POST", "/webhooks/cm/mo", b"<MO><FROM>+31612345678</FROM><TO>3669</TO><BODY>Hi</BODY></MO>", "",
         {"content-type": "application/xml"}),
        ("cm event brief", "POST", "/webhooks/cm/events", BRIEF_CM_EVENT, "", JSON),
        ("cm event delete", "POST", "/webhooks/cm/events", example("cm/event-instagram-messagedelete.json"), "", JSON),
        ("cm event story", "POST", "/webhooks/cm/events", example("cm/event-instagram-storymention.json"), "", JSON),
        ("cm dlr json", "POST", "/webhooks/cm/status", example("cm/dlr-json-template.json"), "", JSON),
        ("cm dlr xml", "POST", "/webhooks/cm/status", example("cm/dlr-xml-template.txt"), "", {"content-type": "text/xml"}),
        ("smsmode dlr", "GET", "/webhooks/smsmode/status", b"", url_query("smsmode/dlr-callback-http-v1.txt"), {}),
        ("smsmode mo", "GET", "/webhooks/smsmode/mo", b"", url_query("smsmode/mo-callback-http-v1.txt"), {}),
        ("mx2 brief", "POST", "/webhooks/mx2", MX2_SENT, "", JSON),
        ("mx2 template", "POST", "/webhooks/mx2", example("mx2/webhook-request-template.json"), "", JSON),
        ("gwapi dlr", "POST", "/webhooks/gatewayapi", example("gatewayapi/dlr-rest-callback.json"), "", JSON),
        ("gwapi mo", "POST", "/webhooks/gatewayapi", example("gatewayapi/mo-rest-callback.json"), "", JSON),
        ("gwapi envelope", "POST", "/webhooks/gatewayapi/events", example("gatewayapi/messaging-api-envelope.txt"), "", JSON),
    ]


@pytest.mark.parametrize(("label", "method", "path", "body", "query", "headers"), examples(), ids=lambda v: v if isinstance(v, str) and " " in v else "")
def test_examples_land_byte_exact(ingress: Factory, redis_client: redis.Redis, label: str, method: str, path: str,
                                  body: bytes, query: str, headers: dict[str, str]) -> None:
    ip = GWAPI_IP if "gatewayapi" in path else CM_IP
    client = ingress(ip)
    response = client.request(method, path + (f"?{query}" if query else ""), content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.content == b""
    [record] = stored(redis_client)
    assert record.body == body
    assert record.query == query.encode()
    assert record.method == method
    assert record.client == ip
    assert record.provider == path.split("/")[2]
    assert record.content_type == headers.get("content-type", "")


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/webhooks/unknown", 404), ("POST", "/webhooks/cm/nope", 404), ("POST", "/", 404),
    ("GET", "/webhooks/cm/events", 405), ("PUT", "/webhooks/mx2", 405), ("GET", "/webhooks/gatewayapi", 405),
])
def test_unknown_route_and_wrong_method(ingress: Factory, redis_client: redis.Redis, method: str, path: str, status: int) -> None:
    assert ingress().request(method, path, content=b"{}").status_code == status
    assert stored(redis_client) == []


def test_cm_from_outside_its_ranges_is_refused(ingress: Factory, redis_client: redis.Redis) -> None:
    response = ingress(OUTSIDE_IP).post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=JSON)
    assert response.status_code == 403
    assert stored(redis_client) == []


def test_spoofed_forwarded_for_from_untrusted_peer_is_refused(ingress: Factory, redis_client: redis.Redis) -> None:
    client = ingress(OUTSIDE_IP, trusted_proxies=NetList.parse("10.0.0.0/8"))
    response = client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers={**JSON, "x-forwarded-for": CM_IP})
    assert response.status_code == 403
    assert stored(redis_client) == []


def test_same_request_through_a_trusted_proxy_is_accepted(ingress: Factory, redis_client: redis.Redis) -> None:
    client = ingress(PROXY_IP, trusted_proxies=NetList.parse("10.0.0.0/8"))
    response = client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers={**JSON, "x-forwarded-for": f"6.6.6.6, {CM_IP}"})
    assert response.status_code == 200
    assert stored(redis_client)[0].client == CM_IP


def test_configured_list_replaces_default(ingress: Factory) -> None:
    client = ingress(CM_IP, allowed_ips={"cm": NetList.parse("192.0.2.0/24")})
    assert client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=JSON).status_code == 403


def test_gatewayapi_addresses_come_from_dns(ingress: Factory) -> None:
    body = example("gatewayapi/dlr-rest-callback.json")
    assert ingress(GWAPI_IP).post("/webhooks/gatewayapi", content=body, headers=JSON).status_code == 200
    assert ingress(OUTSIDE_IP).post("/webhooks/gatewayapi", content=body, headers=JSON).status_code == 403


def test_body_over_the_limit_is_413(ingress: Factory, redis_client: redis.Redis) -> None:
    client = ingress(max_body_bytes=100)
    assert client.post("/webhooks/cm/mo", content=b"x" * 101, headers=JSON).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * 10

    response = client.post("/webhooks/cm/mo", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert stored(redis_client) == []
    assert client.post("/webhooks/cm/mo", content=b"z" * 100, headers=JSON).status_code == 200


JWT_EXAMPLE = "gatewayapi/dlr-x-gwapi-signature-jwt.txt"


def test_official_jwt_example_verifies(ingress: Factory, redis_client: redis.Redis) -> None:
    from shared.settings import Secret

    token = example(JWT_EXAMPLE).decode()
    body = example("gatewayapi/dlr-x-gwapi-signature-jwt.claims.json")
    client = ingress(GWAPI_IP, gatewayapi_secret=Secret("rotated-out,secret"))
    response = client.post("/webhooks/gatewayapi", content=body, headers={**JSON, "x-gwapi-signature": token})
    assert response.status_code == 200
    assert stored(redis_client)[0].headers["x-gwapi-signature"] == token


def _none_alg(claims: dict[str, object]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


@pytest.mark.parametrize("label", ["missing", "garbage", "wrong key", "alg none", "HS512", "expired"])
def test_bad_jwt_is_401(ingress: Factory, redis_client: redis.Redis, label: str) -> None:
    from shared.settings import Secret

    claims = json.loads(example("gatewayapi/dlr-x-gwapi-signature-jwt.claims.json"))
    tokens = {
        "missing": None,
        "garbage": "not.a.jwt",
        "wrong key": jwt.encode(claims, "another-secret-that-is-long-enough-32b", algorithm="HS256"),
        "alg none": _none_alg(claims),
        "HS512": jwt.encode(claims, "secret-secret-secret-secret-secret-secret-secret-secret-secret-64", algorithm="HS512"),
        "expired": jwt.encode({**claims, "exp": 1}, "secret-secret-secret-secret-secret", algorithm="HS256"),
    }
    secret = "secret-secret-secret-secret-secret-secret-secret-secret-secret-64" if label == "HS512" else "secret-secret-secret-secret-secret"
    client = ingress(GWAPI_IP, gatewayapi_secret=Secret(secret))
    headers = dict(JSON)
    if tokens[label] is not None:
        headers["x-gwapi-signature"] = tokens[label]  # type: ignore[assignment]
    assert client.post("/webhooks/gatewayapi", content=json.dumps(claims), headers=headers).status_code == 401
    assert stored(redis_client) == []


def test_new_api_hmac(ingress: Factory, redis_client: redis.Redis) -> None:
    from shared.settings import Secret

    body = b'{"event_id": "09c829a2-a77b-422d-8562-2f88e784dfb5", "event_type": "message.status.sms", "event": {}}'
    good = hmac.new(b"whsec", body, hashlib.sha256).hexdigest()
    client = ingress(GWAPI_IP, gatewayapi_webhook_secret=Secret("whsec"))
    path = "/webhooks/gatewayapi/events"
    assert client.post(path, content=body, headers={**JSON, "signature": f"v1={good}"}).status_code == 200
    assert client.post(path, content=body + b" ", headers={**JSON, "signature": f"v1={good}"}).status_code == 401
    assert client.post(path, content=body, headers=JSON).status_code == 401
    assert client.post(path, content=body, headers={**JSON, "signature": "v1=zz"}).status_code == 401
    assert len(stored(redis_client)) == 1


def test_shared_token_by_query_or_basic_auth_and_never_stored(ingress: Factory, redis_client: redis.Redis) -> None:
    from shared.settings import Secret

    client = ingress(OUTSIDE_IP, tokens={"smsmode": Secret("old,s3cret")})
    query = url_query("smsmode/dlr-callback-http-v1.txt")
    assert client.get(f"/webhooks/smsmode/status?{query}").status_code == 401
    assert client.get(f"/webhooks/smsmode/status?{query}&token=wrong").status_code == 401
    assert client.get(f"/webhooks/smsmode/status?{query}&token=s3cret").status_code == 200
    basic = base64.b64encode(b"smsmode:old").decode()
    assert client.get(f"/webhooks/smsmode/status?{query}", headers={"authorization": f"Basic {basic}"}).status_code == 200
    records = stored(redis_client)
    assert len(records) == 2
    assert all(b"token" not in r.query and b"s3cret" not in r.query for r in records)
    assert "authorization" not in records[1].headers


def test_probes_and_metrics(ingress: Factory) -> None:
    inside = ingress("127.0.0.1")
    inside.post("/webhooks/mx2", content=MX2_SENT, headers=JSON)
    assert inside.get("/healthz").status_code == 200
    assert inside.get("/readyz").status_code == 200
    text = inside.get("/metrics").text
    assert 'hookstream_ingress_requests_total{feed="webhook",outcome="accepted",provider="mx2"} 1.0' in text
    assert "hookstream_ingress_append_seconds_bucket" in text
    outside = ingress(OUTSIDE_IP)
    assert outside.get("/metrics").status_code == 403
    assert outside.get("/readyz").status_code == 403
    assert outside.get("/healthz").status_code == 200


def test_local_profile_admits_loopback_everywhere(ingress: Factory) -> None:
    assert ingress("127.0.0.1").post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=JSON).status_code == 403
    client = ingress("127.0.0.1", local_profile=True)
    assert client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=JSON).status_code == 200
    assert client.post("/webhooks/gatewayapi", content=b"{}", headers=JSON).status_code == 200


def test_direct_path_answers_as_the_router_does(ingress: Factory, redis_client: redis.Redis) -> None:
    """Exact (path, method) matches skip Starlette's router; near misses still get its answers."""
    client = ingress()
    direct = client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=JSON)
    assert (direct.status_code, direct.content, direct.headers["content-length"]) == (200, b"", "0")
    refused = ingress(OUTSIDE_IP).post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=JSON)
    assert refused.headers["content-type"] == "text/plain; charset=utf-8"
    assert refused.text == "source address not allowed"
    redirected = client.post("/webhooks/cm/mo/", content=BRIEF_CM_MO, headers=JSON, follow_redirects=False)
    assert redirected.status_code == 307
    assert client.get("/webhooks/cm/events").headers["allow"] == "POST"
    assert len(stored(redis_client)) == 1


def test_repeated_kept_headers_store_the_first(ingress: Factory, redis_client: redis.Redis) -> None:
    client = ingress()
    headers = [("content-type", "application/json"), ("content-type", "text/plain"), ("user-agent", "CM/1")]
    assert client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=headers).status_code == 200
    record = stored(redis_client)[0]
    assert record.content_type == "application/json"
    assert record.headers == {"content-type": "application/json", "user-agent": "CM/1"}


def test_a_refused_append_is_503_and_the_next_lands(ingress: Factory, redis_client: redis.Redis) -> None:
    redis_client.set("hookstream:raw", "not a stream")
    client = ingress()
    assert client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=JSON).status_code == 503
    redis_client.delete("hookstream:raw")
    assert client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers=JSON).status_code == 200
    assert len(stored(redis_client)) == 1


# -- from a security review: what a token binds, what a record may hold, what HEAD does ------------

# GatewayAPI's published example (onlinecity/gatewayapi-docs docs/rest.rst, "Authentication token"),
# secret "secret"; its claims are the payload below plus `callback_url` and `api`.
GWAPI_TOKEN = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpZCI6MjM4MTcwMywibXNpc2RuIjo0NTQyNjA5MDQ1LCJ0aW1lIjoxNTIyNzY0M"
               "DYyLCJzdGF0dXMiOiJERUxJVkVSRUQiLCJlcnJvciI6bnVsbCwiY29kZSI6bnVsbCwidXNlcnJlZiI6bnVsbCwiY2FsbGJhY2tfdXJsIjo"
               "iaHR0cDovL2JiYWY3MTQyLm5ncm9rLmlvIiwiYXBpIjo0fQ.KdfDH65bnQtgxEkFnpAQodOciAJedZFB13r9wEo8t3Y")
GWAPI_PAYLOAD = {"id": 2381703, "msisdn": 4542609045, "time": 1522764062, "status": "DELIVERED", "error": None,
                 "code": None, "userref": None}


def test_official_jwt_verifies_with_the_payload_as_body(ingress: Factory, redis_client: redis.Redis) -> None:
    from shared.settings import Secret

    client = ingress(GWAPI_IP, gatewayapi_secret=Secret("secret"))
    response = client.post("/webhooks/gatewayapi", content=json.dumps(GWAPI_PAYLOAD),
                           headers={**JSON, "x-gwapi-signature": GWAPI_TOKEN})
    assert response.status_code == 200, response.text
    assert len(stored(redis_client)) == 1


@pytest.mark.parametrize("label", ["time left out", "time as a float", "id as a string", "null as false",
                                   "unsigned field added", "status repeated"])
def test_a_captured_jwt_does_not_carry_another_body(ingress: Factory, redis_client: redis.Redis, label: str) -> None:
    """A captured DELIVERED token replayed with a body without `time` sorted after a newer status."""
    from shared.settings import Secret

    payload: dict[str, object] = dict(GWAPI_PAYLOAD)
    if label == "time left out":
        del payload["time"]
    changed = {"time as a float": {"time": 1522764062.0}, "id as a string": {"id": "2381703"},
               "null as false": {"error": False}, "unsigned field added": {"note": "x"}}
    payload.update(changed.get(label, {}))
    body = json.dumps(payload).encode()
    if label == "status repeated":  # a parser that keeps the first value reads EXPIRED
        body = b'{"status": "EXPIRED", ' + body[1:]
    client = ingress(GWAPI_IP, gatewayapi_secret=Secret("secret"))
    response = client.post("/webhooks/gatewayapi", content=body, headers={**JSON, "x-gwapi-signature": GWAPI_TOKEN})
    assert response.status_code == 401
    assert stored(redis_client) == []


@pytest.mark.parametrize("name", KEPT_HEADERS)
def test_a_kept_header_over_its_cap_is_413_and_stores_nothing(ingress: Factory, redis_client: redis.Redis,
                                                              name: str) -> None:
    client = ingress()
    for size in (MAX_KEPT_HEADER_BYTES + 1, 4 * 1024 * 1024):
        response = client.post("/webhooks/cm/mo", content=BRIEF_CM_MO, headers={**JSON, name: "a" * size})
        assert response.status_code == 413
        assert name in response.text
    assert stored(redis_client) == []
    assert client.post("/webhooks/cm/mo", content=BRIEF_CM_MO,
                       headers={**JSON, name: "a" * MAX_KEPT_HEADER_BYTES}).status_code == 200
    assert len(stored(redis_client)) == 1


def test_body_query_and_kept_headers_count_together(ingress: Factory, redis_client: redis.Redis) -> None:
    limit = 1000
    client = ingress(max_body_bytes=limit)
    under = b"x" * (limit - 1)
    big_query = "q=" + "a" * RECORD_ALLOWANCE_BYTES
    big_agent = {"user-agent": "a" * MAX_KEPT_HEADER_BYTES}  # each within its cap, too much together
    assert client.post(f"/webhooks/cm/mo?{big_query}", content=under, headers=JSON).status_code == 413
    assert client.post("/webhooks/cm/mo", content=under, headers={**JSON, **big_agent}).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield under

    assert client.post(f"/webhooks/cm/mo?{big_query}", content=chunks(), headers=JSON).status_code == 413
    assert client.get(f"/webhooks/cm/mo?{big_query}{'a' * limit}").status_code == 413
    assert stored(redis_client) == []
    # A body at the limit with ordinary headers, and a query using the room a GET leaves: stored.
    assert client.post("/webhooks/cm/mo?a=1", content=b"x" * limit, headers=JSON).status_code == 200
    assert client.get(f"/webhooks/cm/mo?{big_query}").status_code == 200
    for record in stored(redis_client):
        kept = sum(len(value) for value in record.headers.values())
        assert len(record.body) + len(record.query) + kept <= limit + RECORD_ALLOWANCE_BYTES


@pytest.mark.parametrize("path", ["/webhooks/smsmode/mo", "/webhooks/smsmode/status", "/webhooks/cm/mo",
                                  "/webhooks/cm/status"])
def test_head_is_answered_and_stores_nothing(ingress: Factory, redis_client: redis.Redis, path: str) -> None:
    """smsmode's GET feed carries opt-outs (status 3999): a HEAD must never become one."""
    client = ingress()
    opt_out = "numero=33612345678&statut=3999&smsID=abc&date_reception=2024-01-01+10:00:00"
    response = client.head(f"{path}?{opt_out}")
    assert (response.status_code, response.content, response.headers["content-length"]) == (200, b"", "0")
    assert client.head(f"{path}/?{opt_out}", follow_redirects=True).status_code == 200
    assert stored(redis_client) == []
    assert client.get(f"{path}?{opt_out}").status_code == 200
    assert [record.method for record in stored(redis_client)] == ["GET"]


def test_head_keeps_the_source_check_and_the_routes_methods(ingress: Factory, redis_client: redis.Redis) -> None:
    assert ingress(OUTSIDE_IP).head("/webhooks/cm/mo").status_code == 403
    assert ingress(GWAPI_IP).head("/webhooks/gatewayapi").status_code == 405  # POST only: HEAD as GET
    assert ingress().head("/webhooks/mx2").status_code == 405
    local = ingress("127.0.0.1", local_profile=True)
    assert local.head("/webhooks/smsmode/mo").status_code == 200
    assert 'outcome="probe",provider="smsmode"} 1.0' in local.get("/metrics").text
    assert stored(redis_client) == []


async def _small_body() -> dict[str, object]:
    return {"type": "http.request", "body": b"{}", "more_body": False}


@pytest.mark.parametrize("declared", ["\u00b2", "\u0663", "-1", "1e3", " 5", ""])
def test_a_content_length_that_is_no_length_is_left_to_the_count(declared: str) -> None:
    """`"²".isdigit()` is true and int() refuses it: that was a 500 waiting for a lenient server."""
    assert asyncio.run(read_body(_small_body, declared, 100)) == b"{}"


def test_a_content_length_of_thousands_of_digits_is_413_not_a_500() -> None:
    with pytest.raises(BodyTooLarge):  # int() refuses more than 4,300 digits
        asyncio.run(read_body(_small_body, "9" * 5000, 100))
