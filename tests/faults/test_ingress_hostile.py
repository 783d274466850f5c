"""Hostile requests against a real `hookstream ingress` process: a clear 4xx and nothing stored.

Spoofed X-Forwarded-For, IPv6 and IPv4-mapped addresses, malformed header values, forged JWTs
and HMACs, bodies over the limit with and without Content-Length, broken HTTP framing, routes
that do not exist, and slow clients holding connections while normal traffic goes on. Never a
5xx (503 is only for Redis trouble), and the process stays up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import warnings

import httpx
import jwt
import orjson
import pytest

from shared.settings import CM_RANGES
from tests.faults.conftest import IngressFactory
from tests.faults.harness import BACKGROUND, THREAD_PREFIX, Pipeline, Secrets, count, p99, sign_hmac, sign_jwt

CM_IP = "31.169.56.10"
CM_MO = b'{"reference": "r1", "from": "+31612345678", "to": "3669", "body": "hi", "groupings": ["", "", ""]}'
MX2 = b'{"subscriberId": "s1", "cguid": "c1", "status": "sent", "datetime": "2024-03-25 20:01:58"}'
GW_DLR = {"id": 2381703, "msisdn": 4542609045, "time": 1522764062, "status": "DELIVERED", "error": None,
          "code": None, "userref": None}
HTTP_DEADLINE_S = 30  # a client's deadline, not a latency check: the machine may be busy
GW_EVENT = orjson.dumps({"event_id": "e-1", "timestamp": "2025-04-01T11:50:12+00:00",
                         "event_type": "message.status.sms",
                         "event": {"msg_id": "m1", "recipient": 4542609045, "status": "DELIVERED"}})


def stored(pipeline: Pipeline) -> int:
    return int(pipeline.redis.xlen(pipeline.settings.stream))


def raw_http(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = HTTP_DEADLINE_S) -> int:
    """Send raw bytes; the status code of the answer (0: closed without one)."""
    count("bad_inputs_tried")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            head = sock.recv(64)
        except (TimeoutError, ConnectionResetError):
            return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"cm:{password}".encode()).decode()


def assert_alive(pipeline: Pipeline) -> None:
    assert pipeline.ingress is not None and pipeline.ingress.alive(), "the ingress process died"
    assert httpx.get(f"{pipeline.url}/healthz", timeout=HTTP_DEADLINE_S).status_code == 200


# -- what the ingress exposes --------------------------------------------------------------------


def test_nothing_but_routes_health_and_metrics(make_ingress: IngressFactory) -> None:
    pipeline = make_ingress()
    with httpx.Client(base_url=pipeline.url, timeout=HTTP_DEADLINE_S) as client:
        for path in ("/", "/docs", "/redoc", "/openapi.json", "/admin", "/admin/", "/.env", "/.git/config",
                     "/webhooks", "/webhooks/", "/webhooks/cm", "/webhooks/unknown", "/webhooks/cm/mo/../../admin",
                     "/metrics/", "/healthz/", "/debug", "/static/x", "/server-status", "/%2e%2e/etc/passwd",
                     "/webhooks/mx2/extra", "/api", "/graphql", "/favicon.ico"):
            count("bad_inputs_tried")
            response = client.get(path)
            if response.status_code == 307:  # Starlette's slash redirect: to the route itself, nothing else
                assert httpx.URL(response.headers["location"]).path == path.rstrip("/"), path
                continue
            assert response.status_code == 404, (path, response.status_code)
            assert "server" not in response.headers and "x-powered-by" not in response.headers
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
            count("bad_inputs_tried")
            assert client.request(method, "/webhooks/mx2").status_code == 405, method
        count("bad_inputs_tried")
        assert client.get("/webhooks/cm/events").status_code == 405
        assert client.post("/healthz").status_code == 405
        assert client.get("/healthz").text == "ok"
    assert stored(pipeline) == 0


def test_metrics_and_readyz_follow_the_client_address_through_a_trusted_proxy(make_ingress: IngressFactory) -> None:
    """Behind a proxy on a private address, a public client must not read /metrics or /readyz."""
    pipeline = make_ingress(HOOKSTREAM_TRUSTED_PROXIES="127.0.0.1/32")
    with httpx.Client(base_url=pipeline.url, timeout=HTTP_DEADLINE_S) as client:
        assert client.get("/metrics").status_code == 200  # the proxy itself (loopback): allowed
        for path in ("/metrics", "/readyz"):
            count("bad_inputs_tried", 2)
            assert client.get(path, headers={"x-forwarded-for": "203.0.113.9"}).status_code == 403
            assert client.get(path, headers={"x-forwarded-for": "10.0.0.5, 203.0.113.9"}).status_code == 403
        assert client.get("/metrics", headers={"x-forwarded-for": "10.0.0.5"}).status_code == 200


# -- where a request comes from ------------------------------------------------------------------


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(make_ingress: IngressFactory, secrets: Secrets) -> None:
    """No trusted proxy: the peer (loopback) is the client, whatever X-Forwarded-For claims."""
    pipeline = make_ingress(HOOKSTREAM_CM_ALLOWED_IPS=CM_RANGES)
    headers = {"content-type": "application/json", "authorization": basic(secrets.cm_token)}
    with httpx.Client(base_url=pipeline.url, timeout=HTTP_DEADLINE_S) as client:
        for forged in (CM_IP, f"6.6.6.6, {CM_IP}", f"{CM_IP}:443", f"::ffff:{CM_IP}", f"[::ffff:{CM_IP}]:1"):
            count("bad_inputs_tried")
            response = client.post("/webhooks/cm/mo", content=CM_MO, headers={**headers, "x-forwarded-for": forged})
            assert response.status_code == 403, forged
    assert stored(pipeline) == 0


FORWARDED_CASES = [
    # (X-Forwarded-For lines, expected status): the right-most untrusted entry is the client.
    ([CM_IP], 200),
    ([f"{CM_IP}:5555"], 200),
    ([f"::ffff:{CM_IP}"], 200),  # IPv4-mapped IPv6 is unmapped
    ([f"[::ffff:{CM_IP}]:443"], 200),
    ([f"6.6.6.6, {CM_IP}"], 200),  # left of the client is never read
    (["6.6.6.6", CM_IP], 200),  # several header lines are joined in order
    ([f"{CM_IP}, 127.0.0.1"], 200),  # trusted proxies on the right are skipped
    ([f"{CM_IP}, 6.6.6.6"], 403),  # the sender appended its own address: it is the client
    (["6.6.6.6"], 403),
    (["2001:db8::1"], 403),
    ([f"{CM_IP}, garbage"], 403),  # a non-address before the client: no client at all
    (["unknown"], 403),
    ([", , ,"], 403),
    ([f"{CM_IP}\t, ;"], 403),
    (["999.1.1.1"], 403),
    ([f"{CM_IP}%eth0"], 403),
]


def test_forwarded_for_walk_behind_a_trusted_proxy(make_ingress: IngressFactory, secrets: Secrets) -> None:
    pipeline = make_ingress(HOOKSTREAM_CM_ALLOWED_IPS=CM_RANGES, HOOKSTREAM_TRUSTED_PROXIES="127.0.0.1/32")
    wrong = []
    with httpx.Client(timeout=HTTP_DEADLINE_S) as client:
        for lines, expected in FORWARDED_CASES:
            before = stored(pipeline)
            headers = [("content-type", "application/json"), ("authorization", basic(secrets.cm_token))]
            headers += [("x-forwarded-for", line) for line in lines]
            count("bad_inputs_tried")
            status = client.post(f"{pipeline.url}/webhooks/cm/mo", content=CM_MO, headers=headers).status_code
            if status != expected or stored(pipeline) - before != (status == 200):
                wrong.append((lines, status, expected))
    assert not wrong, wrong


def test_ipv6_peers(make_ingress: IngressFactory, secrets: Secrets) -> None:
    """An ingress on [::1]: an IPv6 peer is matched against IPv6 ranges, never an IPv4 list."""
    allowed = make_ingress(host="::1", HOOKSTREAM_MX2_ALLOWED_IPS="::1/128")
    url = f"http://[::1]:{allowed.port}/webhooks/mx2?token={secrets.mx2_token}"
    assert httpx.post(url, content=MX2, timeout=HTTP_DEADLINE_S).status_code == 200
    refused = make_ingress(host="::1", HOOKSTREAM_MX2_ALLOWED_IPS="127.0.0.1/32,::2/128")
    url = f"http://[::1]:{refused.port}/webhooks/mx2?token={secrets.mx2_token}"
    count("bad_inputs_tried")
    assert httpx.post(url, content=MX2, timeout=HTTP_DEADLINE_S).status_code == 403
    # An IPv6 peer that is a trusted proxy forwards an IPv4-mapped client.
    proxied = make_ingress(host="::1", HOOKSTREAM_TRUSTED_PROXIES="::1/128", HOOKSTREAM_CM_ALLOWED_IPS=CM_RANGES)
    headers = {"authorization": basic(secrets.cm_token), "content-type": "application/json"}
    response = httpx.post(f"http://[::1]:{proxied.port}/webhooks/cm/mo", content=CM_MO, timeout=HTTP_DEADLINE_S,
                          headers={**headers, "x-forwarded-for": f"::ffff:{CM_IP}"})
    assert response.status_code == 200
    count("bad_inputs_tried")
    response = httpx.post(f"http://[::1]:{proxied.port}/webhooks/cm/mo", content=CM_MO, timeout=HTTP_DEADLINE_S,
                          headers={**headers, "x-forwarded-for": "::ffff:6.6.6.6"})
    assert response.status_code == 403


# -- signatures and tokens -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_jwts(secret: str) -> dict[str, str]:
    claims = dict(GW_DLR)
    payload = _b64(json.dumps(claims).encode())
    unsigned = _b64(b'{"alg":"none","typ":"JWT"}') + "." + payload + "."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "alg none": unsigned,
            "alg none, signature kept": unsigned + "c2ln",
            "alg None (case)": _b64(b'{"alg":"None"}') + "." + payload + ".",
            "wrong key": jwt.encode(claims, secret + "x", algorithm="HS256"),
            "HS512 with the key": jwt.encode(claims, secret, algorithm="HS512"),
            "HS384 with the key": jwt.encode(claims, secret, algorithm="HS384"),
            "expired": jwt.encode({**claims, "exp": 1}, secret, algorithm="HS256"),
            "not yet valid": jwt.encode({**claims, "nbf": 4_000_000_000}, secret, algorithm="HS256"),
            "garbage": "not.a.jwt",
            "empty": "",
            "two parts": "eyJhbGciOiJIUzI1NiJ9.e30",
            "non-ascii": "ée.é.é",
            "huge": "a" * 20000,
            "signature of another token": jwt.encode(claims, secret, algorithm="HS256").rsplit(".", 1)[0] + "."
            + jwt.encode({"id": 1}, secret, algorithm="HS256").rsplit(".", 1)[1],
        }


def test_forged_gatewayapi_jwts_are_401(make_ingress: IngressFactory, secrets: Secrets) -> None:
    pipeline = make_ingress()
    body = json.dumps(GW_DLR).encode()
    url = f"{pipeline.url}/webhooks/gatewayapi"
    with httpx.Client(timeout=HTTP_DEADLINE_S) as client:
        for label, token in forged_jwts(secrets.gwapi_jwt).items():
            count("bad_inputs_tried")
            headers: dict[str, str | bytes] = {"content-type": "application/json"}
            if token:
                headers["x-gwapi-signature"] = token.encode()  # bytes: httpx sends non-ASCII as is
            assert client.post(url, content=body, headers=headers).status_code == 401, label
        count("bad_inputs_tried")
        assert client.post(url, content=body, headers={"content-type": "application/json"}).status_code == 401
        assert stored(pipeline) == 0
        # The real thing passes: the claims are the body (extra claims such as callback_url allowed).
        token = sign_jwt(orjson.dumps({**GW_DLR, "callback_url": "https://x", "api": 4}), secrets.gwapi_jwt)
        assert client.post(url, content=body, headers={"x-gwapi-signature": token}).status_code == 200
        assert stored(pipeline) == 1


def test_a_valid_jwt_does_not_carry_another_body(make_ingress: IngressFactory, secrets: Secrets) -> None:
    """GatewayAPI repeats the signed payload unsigned in the body: a captured token must not sign a forgery."""
    pipeline = make_ingress()
    token = sign_jwt(json.dumps(GW_DLR).encode(), secrets.gwapi_jwt)
    url = f"{pipeline.url}/webhooks/gatewayapi"
    forgeries = [
        json.dumps({**GW_DLR, "status": "UNDELIVERABLE"}),
        json.dumps({**GW_DLR, "msisdn": 4500000000}),
        json.dumps({**GW_DLR, "extra": "unsigned"}),
        json.dumps({"id": 7, "msisdn": 4542609045, "receiver": 451204, "message": "STOP", "senttime": 1}),
        json.dumps([GW_DLR]),
        "not json",
        "[" * 30000,  # deeper than the json module recurses
        "\udcff",
    ]
    with httpx.Client(timeout=HTTP_DEADLINE_S) as client:
        for forged in forgeries:
            count("bad_inputs_tried")
            response = client.post(url, content=forged.encode("utf-8", "surrogateescape"),
                                   headers={"x-gwapi-signature": token})
            assert response.status_code == 401, forged[:40]
    assert stored(pipeline) == 0
    assert_alive(pipeline)


def test_hmac_of_another_body_and_malformed_signatures_are_401(make_ingress: IngressFactory, secrets: Secrets) -> None:
    pipeline = make_ingress()
    port = pipeline.port
    url = f"{pipeline.url}/webhooks/gatewayapi/events"
    good = sign_hmac(GW_EVENT, secrets.gwapi_hmac)
    with httpx.Client(timeout=HTTP_DEADLINE_S) as client:
        for label, header in {
            "another body": sign_hmac(GW_EVENT + b" ", secrets.gwapi_hmac),
            "another key": sign_hmac(GW_EVENT, secrets.gwapi_hmac + "x"),
            "sha1": "v1=" + hmac.new(secrets.gwapi_hmac.encode(), GW_EVENT, hashlib.sha1).hexdigest(),
            "v0 scheme": "v0=" + good[3:],
            "empty v1": "v1=",
            "truncated": good[:-2],
            "base64 instead of hex": "v1=" + base64.b64encode(bytes.fromhex(good[3:])).decode(),
            "just commas": ",,,",
        }.items():
            count("bad_inputs_tried")
            assert client.post(url, content=GW_EVENT, headers={"signature": header}).status_code == 401, label
        # Bytes a header may hold that are not ASCII: a 401, never a crash (compare_digest refuses str).
        for value in (b"v1=\xe9\xe9", b"v1=" + "é".encode() * 32, b"v1=\xff" * 10):
            request = (b"POST /webhooks/gatewayapi/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Signature: " + value + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(GW_EVENT)
                       + GW_EVENT)
            assert raw_http(port, request) == 401, value
        assert stored(pipeline) == 0
        # Rotation and letter case: any one value verifies.
        assert client.post(url, content=GW_EVENT, headers={"signature": f"v1=00, {good.upper().replace('V1', 'v1')}"}
                           ).status_code == 200
    assert_alive(pipeline)


def test_shared_tokens(make_ingress: IngressFactory, secrets: Secrets) -> None:
    pipeline = make_ingress()
    mx2 = f"{pipeline.url}/webhooks/mx2"
    with httpx.Client(timeout=HTTP_DEADLINE_S) as client:
        for label, params, headers in [
            ("missing", {}, {}),
            ("wrong", {"token": "nope"}, {}),
            ("prefix of the right one", {"token": secrets.mx2_token[:-1]}, {}),
            ("another provider's", {"token": secrets.cm_token}, {}),
            ("wrong basic password", {}, {"authorization": basic("nope")}),
            ("basic without colon", {}, {"authorization": "Basic " + base64.b64encode(b"nocolon").decode()}),
            ("basic not base64", {}, {"authorization": "Basic ###"}),
            ("bearer", {}, {"authorization": f"Bearer {secrets.mx2_token}"}),
        ]:
            count("bad_inputs_tried")
            assert client.post(mx2, params=params, content=MX2, headers=headers).status_code == 401, label
        assert stored(pipeline) == 0
        # Repeated keys: any value that verifies is the token; every `token` is removed before storing.
        response = client.post(f"{mx2}?token=nope&token={secrets.mx2_token}&keep=%E9&token=x", content=MX2)
        assert response.status_code == 200
        assert client.post(mx2, content=MX2, headers={"authorization": basic(secrets.mx2_token)}).status_code == 200
    queries = [fields[b"q"] for _, fields in pipeline.redis.xrange(pipeline.settings.stream)]
    assert queries == [b"keep=%E9", b""], "the token is removed and every other byte kept"


# -- sizes and framing ------------------------------------------------------------------------------


def test_bodies_over_the_limit(make_ingress: IngressFactory, secrets: Secrets) -> None:
    pipeline = make_ingress(HOOKSTREAM_MAX_BODY_BYTES="1000")
    port, token = pipeline.port, secrets.mx2_token
    head = f"POST /webhooks/mx2?token={token} HTTP/1.1\r\nHost: x\r\n".encode()
    # Refused on Content-Length before the body is sent at all: the body never comes, so an answer
    # proves the ingress did not wait for it (waiting, it would answer nothing before the deadline).
    assert raw_http(port, head + b"Content-Length: 50000000\r\n\r\n") == 413
    assert raw_http(port, head + b"Content-Length: 1001\r\nConnection: close\r\n\r\n" + b"a" * 1001) == 413
    # Without Content-Length (chunked): refused while streaming.
    chunk = b"3e8\r\n" + b"a" * 1000 + b"\r\n"
    assert raw_http(port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n") == 413
    assert raw_http(port, head + b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\na\r\n" * 1001 + b"0\r\n\r\n") == 413
    with httpx.Client(timeout=10) as client:
        def gen(total: int):  # httpx streams a generator with chunked encoding
            for _ in range(total // 100):
                yield b"x" * 100
        count("bad_inputs_tried")
        assert client.post(f"{pipeline.url}/webhooks/mx2?token={token}", content=gen(5000)).status_code == 413
        assert stored(pipeline) == 0
        # At the limit: accepted, byte for byte.
        body = MX2 + b" " * (1000 - len(MX2))
        assert client.post(f"{pipeline.url}/webhooks/mx2?token={token}", content=body).status_code == 200
        assert client.post(f"{pipeline.url}/webhooks/mx2?token={token}", content=gen(1000)).status_code == 200
    assert stored(pipeline) == 2
    assert_alive(pipeline)


def test_broken_framing_and_malformed_headers(make_ingress: IngressFactory, secrets: Secrets) -> None:
    """Framing errors are a 400; odd header bytes are stored or refused; never a 5xx, never a crash."""
    pipeline = make_ingress(HOOKSTREAM_MX2_TOKEN="")
    port = pipeline.port
    head = b"POST /webhooks/mx2 HTTP/1.1\r\nHost: x\r\n"
    body = b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    framing = {
        "content-length abc": head + b"Content-Length: abc\r\n\r\n{}",
        "content-length -1": head + b"Content-Length: -1\r\n\r\n{}",
        "content-length twice": head + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "content-length and chunked": head + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        "bad chunk size": head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "NUL in a header": head + b"X-A: a\x00b\r\n" + body,
        "CR in a header name": head + b"X\rA: b\r\n" + body,
        "unknown method": b"FOO /webhooks/mx2 HTTP/1.1\r\nHost: x\r\n\r\n",
        "raw 0xff in the path": b"POST /webhooks/mx2/\xff HTTP/1.1\r\nHost: x\r\n" + body,
        "raw 0xff in the query": b"POST /webhooks/mx2?a=\xff HTTP/1.1\r\nHost: x\r\n" + body,
        "TLS hello on plain HTTP": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 60,
        "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    }
    for label, request in framing.items():
        status = raw_http(port, request)
        assert status in (0, 400, 404, 405, 413, 431), (label, status)
    odd_headers = {
        "non-UTF-8 X-Forwarded-For": b"X-Forwarded-For: \xff\xfe\r\n",
        "non-UTF-8 Authorization": b"Authorization: Basic \xff\xfe\r\n",
        "non-UTF-8 content type": b"Content-Type: application/json; charset=\xe2\x82\xac\xff\r\n",
        "non-UTF-8 user agent": b"User-Agent: \xc3\x28\xa0\xa1\r\n",
        "huge header": b"X-Big: " + b"a" * 200_000 + b"\r\n",
        "thousands of headers": b"".join(b"X-%d: v\r\n" % i for i in range(3000)),
        "signature header on mx2": b"Signature: v1=\xe9\r\nX-Gwapi-Signature: \xff\r\n",
        "absolute URI": b"",
    }
    for label, extra in odd_headers.items():
        request = head + extra + body
        if label == "absolute URI":
            request = b"POST http://evil.example/webhooks/mx2 HTTP/1.1\r\nHost: evil.example\r\n" + body
        status = raw_http(port, request)
        assert status in (200, 400, 413, 431), (label, status)
    assert_alive(pipeline)
    assert pipeline.ingress is not None and "Traceback" not in pipeline.ingress.log_text()


# -- slow clients ---------------------------------------------------------------------------------


def _normal_round(client: httpx.Client, url: str, body: bytes, n: int) -> tuple[list[float], list[int]]:
    latencies, statuses = [], []
    for _ in range(n):
        started = time.monotonic()
        statuses.append(client.post(url, content=body).status_code)
        latencies.append(time.monotonic() - started)
        time.sleep(0.01)  # pacing: a steady trickle of normal requests
    return latencies, statuses


class SlowClients:
    """Many connections sending a request a byte a second, from a thread of their own: headers that
    never end, or a body announced with Content-Length and trickled.

    `ready` is set once every connection was tried; `opened` counts the ones that were opened,
    `held()` the ones still open (a send fails once the ingress has closed one).
    """

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.clients = clients
        self.opened = 0
        self.failed: list[str] = []  # why the connections that could not be opened were not
        self.ready = threading.Event()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"{THREAD_PREFIX}slow-clients")

    def start(self) -> SlowClients:
        BACKGROUND.append(self)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for i in range(self.clients):
                if self._stop.is_set():
                    return
                start = (b"POST /webhooks/mx2 HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n{" if i % 2
                         else b"POST /webhooks/mx2 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                    sock.sendall(start)
                except OSError as exc:
                    self.failed.append(repr(exc))
                    continue
                with self._lock:
                    self._open.append(sock)
                    self.opened += 1
        finally:
            self.ready.set()
        while not self._stop.wait(1.0):
            with self._lock:
                socks = list(self._open)
            for sock in socks:
                try:
                    sock.sendall(b"a")
                except OSError:
                    with self._lock:
                        self._open.remove(sock)
                    sock.close()

    def held(self) -> int:
        with self._lock:
            return len(self._open)

    def running(self) -> bool:
        return self._thread.is_alive()

    def halt(self) -> None:
        self._stop.set()
        self._thread.join(60)
        with self._lock:
            for sock in self._open:
                sock.close()
            self._open.clear()


def run_slowloris(make_ingress: IngressFactory, secrets: Secrets, clients: int, rounds: int) -> dict[str, float]:
    pipeline = make_ingress()
    url = f"{pipeline.url}/webhooks/mx2?token={secrets.mx2_token}"
    with httpx.Client(timeout=60) as client:
        _normal_round(client, url, MX2, 20)  # warm up
        before, _ = _normal_round(client, url, MX2, rounds)
        slow = SlowClients(pipeline.port, clients).start()
        try:
            # Normal traffic starts once every slow connection was tried, however long that takes.
            assert slow.ready.wait(240), f"the slow connections were not all tried in 240 s ({slow.opened} opened)"
            opened, held = slow.opened, slow.held()
            during, statuses = _normal_round(client, url, MX2, rounds)
            still_held = slow.held()
        finally:
            slow.halt()
    count("bad_inputs_tried", opened)
    figures = {"slow_clients": held, "p99_before_ms": round(p99(before) * 1000, 1),
               "p99_during_ms": round(p99(during) * 1000, 1)}
    # Counted against what was opened, once every connection was tried: no connection may be
    # refused (the ingress accepts them all), and the ingress still holds them when the normal
    # requests start and after they are done.
    assert opened >= clients * 0.9, f"only {opened} of {clients} slow connections could be opened: {slow.failed[:5]}"
    assert held >= opened * 0.9, f"the ingress closed {opened - held} of {opened} slow connections at once"
    assert set(statuses) == {200}, f"normal traffic during the slow clients: {statuses}"
    # Behaviour, not timing: normal requests succeed with a latency of the same order.
    assert p99(during) < max(1.0, 20 * p99(before)), figures
    assert still_held > 0
    assert_alive(pipeline)
    return figures


def test_slow_clients_do_not_stop_normal_traffic(make_ingress: IngressFactory, secrets: Secrets) -> None:
    figures = run_slowloris(make_ingress, secrets, clients=300, rounds=100)
    count("slowloris_300_p99_before_ms", int(figures["p99_before_ms"]))
    count("slowloris_300_p99_during_ms", int(figures["p99_during_ms"]))


@pytest.mark.faults_long
@pytest.mark.timeout(300)
def test_long_thousand_slow_clients(make_ingress: IngressFactory, secrets: Secrets) -> None:
    figures = run_slowloris(make_ingress, secrets, clients=1000, rounds=300)
    count("slowloris_1000_p99_before_ms", int(figures["p99_before_ms"]))
    count("slowloris_1000_p99_during_ms", int(figures["p99_during_ms"]))
