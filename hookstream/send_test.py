"""`hookstream send-test PROVIDER FEED`: one request built the way that provider sends it, sent to an ingress.

So that an integrator checks a deployment end to end (allow-list, token, signature, stream, worker,
Postgres) without a live provider: CM's JSON (with CM's address in X-Forwarded-For when trusted
proxies are configured: the ingress then sees the request as CM's), smsmode's GET query, Mx2's JSON,
GatewayAPI's REST callback signed with an HS256 JWT (`X-Gwapi-Signature`) and its Mobile Messaging
API events signed with an HMAC (`Signature: v1=…`), each with the configured secret, and the
provider's token (query parameter `token`) when one is set. Every request has fresh ids, so it is
never taken for a redelivery.

`build` is pure (the request from the settings and the options); `send` does the HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import jwt

from ingress.routes import FEEDS
from shared.examples import EXAMPLE_PHONE, EXAMPLE_SHORT_CODE
from shared.settings import Settings

JSON = "application/json"
# An address inside CM's published ranges (shared.settings.CM_RANGES): what CM's requests come from.
CM_ADDRESS = "31.169.56.10"
ROUTES = {(f.provider, f.feed): f.path for f in FEEDS}
# The provider's own status value a test sends when --status is not given: its "delivered".
DELIVERED = {"cm": "2", "smsmode": "11", "mx2": "delivered", "gatewayapi": "DELIVERED"}


@dataclass(frozen=True, slots=True)
class Options:
    status: str | None = None  # the provider's own status value; None: a text (MO) where the feed takes both
    text: str | None = None
    phone: str = EXAMPLE_PHONE
    serial: int = 0  # makes every id of the request fresh
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class TestRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    def url(self, base: str) -> str:
        return base.rstrip("/") + self.path + (f"?{urlencode(self.query)}" if self.query else "")


def _digits(phone: str) -> str:
    return phone.lstrip("+")


def _json(path: str, body: dict[str, object]) -> TestRequest:
    return TestRequest("POST", path, {}, {"content-type": JSON}, json.dumps(body, separators=(",", ":")).encode())


def _cm(feed: str, o: Options) -> TestRequest:
    path = ROUTES[("cm", feed)]
    if feed == "status":
        msg = {"received": o.now.strftime("%Y-%m-%dT%H:%M:%S"), "to": o.phone, "reference": f"send-test-{o.serial}",
               "status": {"code": o.status or DELIVERED["cm"], "errorCode": "", "errorDescription": ""}}
        return _json(path, {"messages": {"msg": msg}})
    if feed == "events":
        return _json(path, {"reference": f"send-test-{o.serial}", "from": {"number": o.phone},
                            "to": {"number": EXAMPLE_SHORT_CODE}, "event": {"type": "SuggestionClick"},
                            "timeUtc": o.now.strftime("%Y-%m-%dT%H:%M:%S"), "channel": "RCS"})
    return _json(path, {"reference": f"send-test-{o.serial}", "from": o.phone, "to": EXAMPLE_SHORT_CODE,
                        "body": o.text or "STOP", "groupings": ["", "", ""]})


def _smsmode(feed: str, o: Options) -> TestRequest:
    paris = o.now.astimezone(ZoneInfo("Europe/Paris"))  # smsmode's times are Paris wall time
    if feed == "status":
        query = {"numero": _digits(o.phone), "date_reception": paris.strftime("%Y-%m-%d %H:%M:%S"),
                 "statut": o.status or DELIVERED["smsmode"], "smsID": f"send-test-{o.serial}",
                 "refClient": "send-test"}
    else:
        query = {"numero": EXAMPLE_SHORT_CODE, "message": o.text or "STOP", "emetteur": _digits(o.phone),
                 "date_reception": paris.strftime("%d%m%Y-%H%M%S"), "smsID": f"send-test-{o.serial}",
                 "responseID": f"send-test-{o.serial}"}
    return TestRequest("GET", ROUTES[("smsmode", feed)], query, {})


def _mx2(feed: str, o: Options) -> TestRequest:
    new_york = o.now.astimezone(ZoneInfo("America/New_York"))  # Mx2's assumed zone (shared/providers/mx2.py)
    status = o.status or ("received" if o.text else DELIVERED["mx2"])
    return _json(ROUTES[("mx2", feed)], {
        "subscriberId": f"send-test-{o.serial}", "cguid": "send-test", "status": status, "statusMessage": "",
        "textMessage": o.text or "", "messageType": "Initial", "datetime": new_york.strftime("%Y-%m-%d %H:%M:%S")})


def _gatewayapi(feed: str, o: Options) -> TestRequest:
    path = ROUTES[("gatewayapi", feed)]
    if feed == "events":
        if o.status is None:
            event: dict[str, object] = {"msg_id": f"send-test-{o.serial}", "sender": int(_digits(o.phone)),
                                        "content": {"message": o.text or "STOP", "encoding": "GSM7", "header": None},
                                        "sent_at": o.now.isoformat()}
            event_type = "user-message.text.sms"
        else:
            event = {"msg_id": f"send-test-{o.serial}", "recipient": int(_digits(o.phone)), "reference": None,
                     "status": o.status, "status_at": o.now.isoformat(), "error": None}
            event_type = "message.status.sms"
        return _json(path, {"event_id": f"send-test-{o.serial}", "timestamp": o.now.isoformat(),
                            "event_type": event_type, "event": event})
    epoch = int(o.now.timestamp())
    if o.status is None:
        return _json(path, {"id": o.serial, "msisdn": int(_digits(o.phone)), "receiver": int(EXAMPLE_SHORT_CODE),
                            "message": o.text or "STOP", "senttime": epoch, "webhook_label": "send-test"})
    return _json(path, {"id": o.serial, "msisdn": int(_digits(o.phone)), "time": epoch, "status": o.status,
                        "userref": "send-test"})


BUILDERS: dict[str, Callable[[str, Options], TestRequest]] = {
    "cm": _cm, "smsmode": _smsmode, "mx2": _mx2, "gatewayapi": _gatewayapi}


def sign(request: TestRequest, provider: str, feed: str, settings: Settings,
         forwarded_for: str | None = None) -> TestRequest:
    """The provider's credentials, as it sends them: its token, GatewayAPI's signatures, CM's address."""
    query, headers = dict(request.query), dict(request.headers)
    token = settings.tokens.get(provider)
    if token is not None:
        query["token"] = token.values[0]
    if provider == "gatewayapi" and feed == "rest" and settings.gatewayapi_secret is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)  # customers' keys are often short
            headers["x-gwapi-signature"] = jwt.encode(json.loads(request.body), settings.gatewayapi_secret.values[0],
                                                      algorithm="HS256")
    if provider == "gatewayapi" and feed == "events" and settings.gatewayapi_webhook_secret is not None:
        key = settings.gatewayapi_webhook_secret.values[0].encode()
        headers["signature"] = "v1=" + hmac.new(key, request.body, hashlib.sha256).hexdigest()
    if forwarded_for is None and provider == "cm" and settings.trusted_proxies.networks:
        forwarded_for = CM_ADDRESS
    if forwarded_for:
        headers["x-forwarded-for"] = forwarded_for
    return TestRequest(request.method, request.path, query, headers, request.body)


def build(provider: str, feed: str, settings: Settings, options: Options, forwarded_for: str | None = None
          ) -> TestRequest:
    if (provider, feed) not in ROUTES:
        feeds = ", ".join(f for p, f in ROUTES if p == provider)
        raise ValueError(f"{provider} has no feed {feed!r}: one of {feeds}")
    return sign(BUILDERS[provider](feed, options), provider, feed, settings, forwarded_for)


def send(request: TestRequest, base_url: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    http = urllib.request.Request(request.url(base_url), data=request.body or None, method=request.method,
                                  headers=request.headers)
    try:
        with urllib.request.urlopen(http, timeout=timeout_s) as answer:  # noqa: S310  # the operator's own URL
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def cmd_send_test(settings: Settings, args: argparse.Namespace) -> int:
    options = Options(status=args.status, text=args.text, phone=args.phone, serial=time.time_ns() // 1000)
    try:
        request = build(args.provider, args.feed, settings, options, args.forwarded_for)
    except ValueError as exc:
        print(f"hookstream send-test: {exc}", file=sys.stderr)
        return 2
    base = args.url or f"http://127.0.0.1:{settings.port}"
    try:
        status, body = send(request, base)
    except OSError as exc:
        print(f"hookstream send-test: {base}: {getattr(exc, 'reason', exc)} (is the ingress running? --url)",
              file=sys.stderr)
        return 1
    print(f"{request.method} {request.path} -> {status}{(': ' + body.decode(errors='replace')) if body else ''}")
    return 0 if 200 <= status < 300 else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    feeds = "; ".join(f"{p}: {', '.join(f for q, f in ROUTES if q == p)}" for p in BUILDERS)
    p = subparsers.add_parser("send-test", help="send one realistic provider request to an ingress",
                              description=f"Feeds: {feeds}.")
    p.add_argument("provider", choices=tuple(BUILDERS), help="the provider whose request to imitate")
    p.add_argument("feed", help="the provider's feed (the last part of its webhook URL), listed above")
    p.add_argument("--status", help="send a status report with this provider status value (CM 2, smsmode 11,"
                                    " Mx2 delivered, GatewayAPI DELIVERED, ...); default: an inbound text where the"
                                    " feed takes both, else the provider's delivered")
    p.add_argument("--text", help="the inbound text (default STOP)")
    p.add_argument("--phone", default=EXAMPLE_PHONE, help=f"the person's number (default {EXAMPLE_PHONE})")
    p.add_argument("--url", help="the ingress's base URL (default http://127.0.0.1:HOOKSTREAM_PORT)")
    p.add_argument("--forwarded-for", help="an X-Forwarded-For address (default for CM, when"
                                           f" HOOKSTREAM_TRUSTED_PROXIES is set: {CM_ADDRESS}, in CM's ranges)")
    p.set_defaults(handler=cmd_send_test)
