"""The ingress: check where a request comes from, append it raw to the stream, answer fast.

Order of checks (the contract): route (404/405) → source (403) → size (413) → signature or
token (401) → append (200, or 503 so the provider retries). A 4xx stores nothing, and neither
does HEAD (a probe, answered after the source check); nothing in the body is parsed here. The
webhook routes are ingress/webhook.py; a request whose path and method match one exactly goes
straight to it, everything else through Starlette's router (404, 405, redirects, probes,
metrics, and HEAD, which Starlette adds to every GET route).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ingress.appender import Appender
from ingress.client import ClientAddresses, client_address
from ingress.metrics import IngressMetrics
from ingress.routes import FEEDS
from ingress.sources import DnsAllowList, Resolver, SourcePolicy, resolve_gatewayapi
from ingress.webhook import Receive, Scope, Send, State, WebhookEndpoint
from shared import connections
from shared.settings import Settings

log = logging.getLogger("hookstream.ingress")

Handler = Callable[[Request], Awaitable[Response]]


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
    """Ready while Redis answers; on a cluster, while one of its primaries does (the appender sends a
    batch to another shard when one primary is down, so the ingress still takes requests)."""
    redis: Redis = request.scope["state"]["redis"]
    settings: Settings = request.scope["state"]["settings"]
    try:
        async with asyncio.timeout(1.0):
            if settings.redis_cluster:
                await _any_primary_answers(redis)
            else:
                await redis.ping()
    except Exception:
        return PlainTextResponse("redis unreachable", status_code=503)
    return PlainTextResponse("ready")


async def _any_primary_answers(cluster: Redis) -> None:
    await cluster.initialize()
    last: Exception = ConnectionError("no primary known")
    for node in cluster.get_primaries():
        try:
            await cluster.ping(target_nodes=node)
            return
        except Exception as exc:
            last = exc
    raise last


async def metrics_endpoint(request: Request) -> Response:
    metrics: IngressMetrics = request.scope["state"]["metrics"]
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class Ingress:
    """Exact (path, method) matches of the webhook routes skip the router; the rest is Starlette's."""

    def __init__(self, router: Starlette, endpoints: dict[tuple[str, str], WebhookEndpoint]) -> None:
        self.router = router
        self._endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._endpoints.get((scope["path"], scope["method"]))
            if endpoint is not None:
                return await endpoint(scope, receive, send)
        await self.router(scope, receive, send)


def create_app(settings: Settings, *, redis: Redis | None = None, resolver: Resolver | None = None,
               freeze_gc: bool = False) -> Ingress:
    """The ingress application; `redis` and `resolver` are injectable for tests.

    `freeze_gc` (the served process): once started, every object alive is moved out of the
    collector's sight. Imports, uvicorn's protocol modules and the start-up state are ~50k
    long-lived objects that each full collection walked again: 40-100 ms pauses, the p99.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = redis or connections.ingress_redis(settings)  # no client retries: see shared/connections.py
        shards = await connections.stream_shards_async(settings, client)
        dns = DnsAllowList(settings.gatewayapi_fallback_ips, resolver or resolve_gatewayapi,
                           settings.gatewayapi_dns_refresh_s)
        dns_task = asyncio.create_task(dns.run()) if settings.allowed_ips.get("gatewayapi") is None else None
        log_start_notes(settings)
        metrics = IngressMetrics()
        appender = Appender(client, [shard.stream for shard in shards], cluster=settings.redis_cluster,
                            on_batch=metrics.append_batch_size.observe, replicas=settings.append_replicas,
                            replica_timeout_ms=settings.append_replica_timeout_ms,
                            on_replicas=metrics.append_replicas_acked.observe)
        state = State(settings=settings, redis=client, appender=appender, sources=SourcePolicy(settings, dns),
                      clients=ClientAddresses(settings.trusted_proxies), metrics=metrics)
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield state
        finally:
            if dns_task is not None:
                dns_task.cancel()
            await appender.close()
            if redis is None:
                await client.aclose()

    endpoints = {feed: WebhookEndpoint(feed) for feed in FEEDS}
    routes = [Route(feed.path, endpoint, methods=list(feed.methods)) for feed, endpoint in endpoints.items()]
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", _internal_only(readyz), methods=["GET"]),
        Route("/metrics", _internal_only(metrics_endpoint), methods=["GET"]),
    ]
    fast = {(feed.path, method): endpoint for feed, endpoint in endpoints.items() for method in feed.methods}
    return Ingress(Starlette(routes=routes, lifespan=lifespan), fast)


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
    if settings.append_replicas:
        log.info("200 only once %d replica(s) confirmed the append (WAIT, up to %d ms; fewer: 503)",
                 settings.append_replicas, settings.append_replica_timeout_ms)
