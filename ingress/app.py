"""The ingress: check where a request comes from, append it raw to the stream, answer fast.

Order of checks (the contract): route (404/405) → source (403) → size (413) → signature or
token (401) → append (200, or 503 so the provider retries). A 4xx stores nothing; nothing in
the body is parsed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, TypedDict

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ingress import auth
from ingress.appender import Appender
from ingress.client import client_address
from ingress.metrics import IngressMetrics
from ingress.routes import FEEDS, Feed, Signature
from ingress.sources import DnsAllowList, Resolver, SourcePolicy, resolve_gatewayapi
from shared.errors import InvalidSignature, StoreUnavailable
from shared.record import KEPT_HEADERS, RawRecord
from shared.settings import Settings

log = logging.getLogger("hookstream.ingress")

Handler = Callable[[Request], Awaitable[Response]]


class State(TypedDict):
    settings: Settings
    redis: Redis
    appender: Appender
    sources: SourcePolicy
    metrics: IngressMetrics


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing early on Content-Length and while streaming when there is none."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def check_credentials(feed: Feed, settings: Settings, request: Request, body: bytes) -> None:
    token = settings.tokens.get(feed.provider)
    if token is not None:
        auth.check_token(request.scope.get("query_string", b""), request.headers.get("authorization"), token)
    if feed.signature is Signature.GATEWAYAPI_JWT and settings.gatewayapi_secret is not None:
        auth.check_gatewayapi_jwt(request.headers, settings.gatewayapi_secret, body)
    if feed.signature is Signature.GATEWAYAPI_HMAC and settings.gatewayapi_webhook_secret is not None:
        auth.check_gatewayapi_hmac(request.headers, body, settings.gatewayapi_webhook_secret)


def webhook_endpoint(feed: Feed) -> Handler:
    async def endpoint(request: Request) -> Response:
        state: State = request.scope["state"]
        settings, metrics = state["settings"], state["metrics"]

        def answer(status: int, outcome: str, text: str = "") -> Response:
            metrics.requests.labels(feed.provider, feed.feed, outcome).inc()
            return PlainTextResponse(text, status_code=status) if text else Response(status_code=status)

        peer = request.scope["client"][0] if request.scope.get("client") else None
        client = client_address(peer, request.headers.getlist("x-forwarded-for"), settings.trusted_proxies)
        if not state["sources"].allowed(feed.provider).admits(client):
            log.warning("refused %s/%s from %s: not in the allow-list", feed.provider, feed.feed, client or peer)
            return answer(403, "forbidden", "source address not allowed")
        try:
            body = await read_body(request, settings.max_body_bytes)
        except BodyTooLarge:
            return answer(413, "too_large", f"body larger than {settings.max_body_bytes} bytes")
        except ClientDisconnect:  # gone mid-body, or a body the HTTP parser refused: nothing to store
            return answer(400, "disconnected")
        try:
            check_credentials(feed, settings, request, body)
        except InvalidSignature as exc:
            return answer(401, "unauthorized", str(exc))
        record = RawRecord(
            provider=feed.provider,
            feed=feed.feed,
            method=request.method,
            query=auth.strip_token(request.scope.get("query_string", b"")),
            content_type=request.headers.get("content-type", ""),
            headers={name: request.headers[name] for name in KEPT_HEADERS if name in request.headers},
            client=str(client) if client is not None else "",
            received_at_ms=time.time_ns() // 1_000_000,
            body=body,
        )
        started = time.perf_counter()
        try:
            await state["appender"].append(record.to_fields())
        except StoreUnavailable as exc:
            metrics.append_errors.inc()
            log.error("append failed, answering 503: %s", exc)
            return answer(503, "unavailable", "temporarily unavailable, retry later")
        metrics.append_seconds.observe(time.perf_counter() - started)
        return answer(200, "accepted")

    return endpoint


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def _internal_only(handler: Handler) -> Handler:
    """Probes and metrics answer only HOOKSTREAM_METRICS_ALLOWED_IPS, by the client address the
    webhooks use: through a trusted proxy that is the forwarded client, not the (private) proxy."""

    async def guarded(request: Request) -> Response:
        settings: Settings = request.scope["state"]["settings"]
        peer = request.scope["client"][0] if request.scope.get("client") else None
        client = client_address(peer, request.headers.getlist("x-forwarded-for"), settings.trusted_proxies)
        if not settings.metrics_allowed_ips.admits(client):
            return PlainTextResponse("forbidden", status_code=403)
        return await handler(request)

    return guarded


async def readyz(request: Request) -> Response:
    redis: Redis = request.scope["state"]["redis"]
    try:
        await asyncio.wait_for(redis.ping(), 1.0)
    except Exception:
        return PlainTextResponse("redis unreachable", status_code=503)
    return PlainTextResponse("ready")


async def metrics_endpoint(request: Request) -> Response:
    metrics: IngressMetrics = request.scope["state"]["metrics"]
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def make_redis(url: str) -> Redis:
    # No client-side retries: a provider retry is cheaper than a hung request.
    return Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0, retry=Retry(NoBackoff(), 0))


def create_app(settings: Settings, *, redis: Redis | None = None, resolver: Resolver | None = None) -> Starlette:
    """The ingress application; `redis` and `resolver` are injectable for tests."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = redis or make_redis(settings.redis_url_or_default())
        dns = DnsAllowList(settings.gatewayapi_fallback_ips, resolver or resolve_gatewayapi,
                           settings.gatewayapi_dns_refresh_s)
        dns_task = asyncio.create_task(dns.run()) if settings.allowed_ips.get("gatewayapi") is None else None
        log_start_notes(settings)
        try:
            yield State(settings=settings, redis=client, appender=Appender(client, settings.stream),
                        sources=SourcePolicy(settings, dns), metrics=IngressMetrics())
        finally:
            if dns_task is not None:
                dns_task.cancel()
            if redis is None:
                await client.aclose()

    routes = [Route(feed.path, webhook_endpoint(feed), methods=list(feed.methods)) for feed in FEEDS]
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", _internal_only(readyz), methods=["GET"]),
        Route("/metrics", _internal_only(metrics_endpoint), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def log_start_notes(settings: Settings) -> None:
    for provider in ("smsmode", "mx2"):
        if settings.allowed_ips.get(provider) is None and settings.tokens.get(provider) is None:
            log.warning("%s admits any address and has no token: set HOOKSTREAM_%s_ALLOWED_IPS or "
                        "HOOKSTREAM_%s_TOKEN", provider, provider.upper(), provider.upper())
    secret = settings.gatewayapi_secret
    if secret is not None and any(len(v.encode()) < 32 for v in secret.values):
        log.warning("HOOKSTREAM_GATEWAYAPI_SECRET is shorter than 32 bytes (GatewayAPI lets customers pick it)")
    if settings.local_profile:
        log.warning("local profile: loopback is admitted on every provider route")
