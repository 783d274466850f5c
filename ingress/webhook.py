"""One provider feed's route as a plain ASGI app: source (403) → size (413) → signature or token
(401) → append (200, or 503 so the provider retries). HEAD, a reachability probe, is answered
after the source check and stores nothing.

It reads the ASGI scope and messages itself instead of building Starlette requests and
responses: at thousands of requests per second that framework work cost more CPU than every
check here together (measured by the ingress profile). Starlette still routes everything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypedDict

from redis.asyncio import Redis

from ingress import auth
from ingress.appender import Appender, ReplicaAckMissing
from ingress.client import ClientAddresses
from ingress.metrics import IngressMetrics
from ingress.routes import Feed, Signature
from ingress.sources import SourcePolicy
from shared.errors import InvalidSignature, StoreUnavailable
from shared.record import KEPT_HEADERS, RawRecord
from shared.settings import Settings

log = logging.getLogger("hookstream.ingress")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

READ_HEADERS = frozenset(name.encode() for name in (*KEPT_HEADERS, "content-length", "authorization"))
KEPT_NAMES = frozenset(KEPT_HEADERS)

# Each kept header is stored whole, so each has a cap. X-Gwapi-Signature is the largest real one:
# a JWT repeats the whole payload in base64, so 32 KiB admits a signed payload of about 24 KB, far
# beyond any GatewayAPI callback; no content type, user agent or `Signature` comes near it.
MAX_KEPT_HEADER_BYTES = 32 * 1024
# What a record may hold beyond HOOKSTREAM_MAX_BODY_BYTES: its query string and kept headers,
# counted together with the body. A body at the limit still fits its ordinary headers, and no
# record grows past the limit by more than this.
RECORD_ALLOWANCE_BYTES = 8 * 1024


class State(TypedDict):
    settings: Settings
    redis: Redis
    appender: Appender
    sources: SourcePolicy
    clients: ClientAddresses
    metrics: IngressMetrics


class BodyTooLarge(Exception):
    pass


class HeaderTooLarge(Exception):
    pass


class Disconnected(Exception):
    pass


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The headers the ingress reads (the first of repeated ones) and every X-Forwarded-For line."""
    found: dict[str, str] = {}
    forwarded: list[str] = []
    for name, value in raw:
        if name == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
        elif name in READ_HEADERS:
            found.setdefault(name.decode(), value.decode("latin-1"))
    return found, tuple(forwarded)


def kept_header_bytes(headers: dict[str, str]) -> int:
    """The bytes the kept headers add to a record (latin-1: one character per byte received).

    Raises HeaderTooLarge naming the first one over MAX_KEPT_HEADER_BYTES.
    """
    total = 0
    for name, value in headers.items():  # the few headers read, not the four names looked up
        if name in KEPT_NAMES:
            size = len(value)
            if size > MAX_KEPT_HEADER_BYTES:
                raise HeaderTooLarge(name)
            total += size
    return total


def body_limit(max_body_bytes: int, query: bytes, headers: dict[str, str]) -> int:
    """How many body bytes this request may send: the body limit, or less when its query string
    and kept headers leave less room in the record. Negative when they alone are too large."""
    room = max_body_bytes + RECORD_ALLOWANCE_BYTES - len(query) - kept_header_bytes(headers)
    return min(max_body_bytes, room)


def _declares_more(declared: str | None, limit: int) -> bool:
    """Whether Content-Length announces more than `limit`; a value that is no length is left to
    the streaming count (`isdigit` alone admits "²", which int() refuses)."""
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return False
    return len(declared) > 18 or int(declared) > limit  # 19 digits is beyond any limit, and int() caps digits


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body, refused early on Content-Length and while streaming when there is none."""
    if limit < 0 or _declares_more(declared, limit):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # gone mid-body, or a body the HTTP parser refused
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_credentials(feed: Feed, settings: Settings, query: bytes, headers: dict[str, str], body: bytes) -> None:
    token = settings.tokens.get(feed.provider)
    if token is not None:
        auth.check_token(query, headers.get("authorization"), token)
    if feed.signature is Signature.GATEWAYAPI_JWT and settings.gatewayapi_secret is not None:
        auth.check_gatewayapi_jwt(headers, settings.gatewayapi_secret, body)
    if feed.signature is Signature.GATEWAYAPI_HMAC and settings.gatewayapi_webhook_secret is not None:
        auth.check_gatewayapi_hmac(headers, body, settings.gatewayapi_webhook_secret)


class WebhookEndpoint:
    """The ASGI app of one feed's route; the lifespan's State arrives in every request's scope."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: State = scope["state"]
        feed, settings = self.feed, state["settings"]
        headers, forwarded = read_headers(scope["headers"])
        peer = scope["client"][0] if scope.get("client") else None
        client = state["clients"].resolve(peer, forwarded)
        if not state["sources"].admits(feed.provider, client):
            log.warning("refused %s/%s from %s: not in the allow-list", feed.provider, feed.feed, client or peer)
            return await self._answer(state, send, "forbidden", 403, b"source address not allowed")
        if scope["method"] == "HEAD":  # a probe: it may learn that the route is there, nothing more
            return await self._answer(state, send, "probe", 200)
        query: bytes = scope.get("query_string", b"")
        try:
            limit = body_limit(settings.max_body_bytes, query, headers)
            body = await read_body(receive, headers.get("content-length"), limit)
        except HeaderTooLarge as exc:
            text = f"{exc} header longer than {MAX_KEPT_HEADER_BYTES} bytes".encode()
            return await self._answer(state, send, "too_large", 413, text)
        except BodyTooLarge:
            text = (f"body larger than {settings.max_body_bytes} bytes, or body, query string and kept "
                    f"headers larger than {settings.max_body_bytes + RECORD_ALLOWANCE_BYTES} together").encode()
            return await self._answer(state, send, "too_large", 413, text)
        except Disconnected:  # nothing to store, and nobody left to answer
            return await self._answer(state, send, "disconnected", 400)
        try:
            check_credentials(feed, settings, query, headers, body)
        except InvalidSignature as exc:
            return await self._answer(state, send, "unauthorized", 401, str(exc).encode())
        record = RawRecord(
            provider=feed.provider,
            feed=feed.feed,
            method=scope["method"],
            query=auth.strip_token(query),
            content_type=headers.get("content-type", ""),
            headers={name: headers[name] for name in KEPT_HEADERS if name in headers},
            client=str(client) if client is not None else "",
            received_at_ms=time.time_ns() // 1_000_000,
            body=body,
        )
        started = time.perf_counter()
        try:
            await state["appender"].append(record.to_fields())
        except StoreUnavailable as exc:
            state["metrics"].append_errors.inc()
            if isinstance(exc, ReplicaAckMissing):
                state["metrics"].replica_ack_errors.inc()
            log.error("append failed, answering 503: %s", exc)
            return await self._answer(state, send, "unavailable", 503, b"temporarily unavailable, retry later")
        state["metrics"].append_seconds.observe(time.perf_counter() - started)
        await self._answer(state, send, "accepted", 200)

    async def _answer(self, state: State, send: Send, outcome: str, status: int, text: bytes = b"") -> None:
        state["metrics"].count(self.feed.provider, self.feed.feed, outcome)
        await answer(send, status, text)


async def answer(send: Send, status: int, text: bytes = b"") -> None:
    """An empty answer, or a short plain-text one (the same bytes Starlette's responses sent)."""
    # A new list each time: a middleware may edit a response's headers in place.
    headers = [(b"content-length", b"0")] if not text else [
        (b"content-length", str(len(text)).encode()), (b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})
