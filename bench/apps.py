"""The ingress benchmark's baselines, served exactly like `hookstream ingress` (uvicorn, uvloop, httptools).

    python -m bench.apps ceiling --port P
    python -m bench.apps naive --port P --database-url URL [--pool 32]
    python -m bench.apps asgi|ceiling-await|ceiling-append --port P [--redis-url URL]   (the profile's ladder)

- `ceiling`: the same routes (every provider path and method), an endpoint that only reads the
  body and answers 200: what Starlette + uvicorn can do on this machine, the framework's ceiling.
- `naive`: the design not chosen: the same routes, each request INSERTed into Postgres inside the
  request (psycopg async pool, durable commit) and answered 200 after the commit.

The profile (bench/profile_ingress.py) also climbs a ladder from the bare server to the ingress,
one step at a time, to put a number of microseconds on each step:
- `asgi`: a bare ASGI callable (no Starlette) that reads the body and answers 200;
- `ceiling-await`: the ceiling, plus one suspension per request (awaits a future resolved on the
  next loop iteration), as the ingress suspends once while its append is in flight;
- `ceiling-append`: the ceiling, plus the product's coalescing `Appender` XADDing a fixed record
  with the request's body (no checks, no record building, no metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingress.routes import FEEDS, Feed
from shared.record import KEPT_HEADERS

NAIVE_TABLE = """
CREATE TABLE IF NOT EXISTS naive_webhooks (
    id bigserial PRIMARY KEY,
    provider text NOT NULL,
    feed text NOT NULL,
    method text NOT NULL,
    query bytea NOT NULL,
    content_type text NOT NULL,
    headers jsonb NOT NULL,
    client text NOT NULL,
    received_at timestamptz NOT NULL,
    body bytea NOT NULL
)
"""
NAIVE_INSERT = ("INSERT INTO naive_webhooks (provider, feed, method, query, content_type, headers, client, received_at,"
                " body) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, to_timestamp(%s::double precision / 1000), %s)")


async def healthz(request: Request) -> Response:
    return Response(b"ok")


def ceiling_app() -> Starlette:
    async def endpoint(request: Request) -> Response:
        await request.body()
        return Response(status_code=200)

    return Starlette(routes=[Route(feed.path, endpoint, methods=list(feed.methods)) for feed in FEEDS]
                     + [Route("/healthz", healthz, methods=["GET"])])


async def bare_asgi(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def ceiling_await_app() -> Starlette:
    async def endpoint(request: Request) -> Response:
        await request.body()
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, None)
        await future
        return Response(status_code=200)

    return Starlette(routes=[Route(feed.path, endpoint, methods=list(feed.methods)) for feed in FEEDS]
                     + [Route("/healthz", healthz, methods=["GET"])])


def ceiling_append_app(redis_url: str) -> Starlette:
    from ingress.appender import Appender
    from shared.connections import ingress_redis
    from shared.record import RawRecord
    from shared.settings import Settings

    template = RawRecord(provider="cm", feed="mo", method="POST", query=b"", content_type="application/json",
                         headers={"content-type": "application/json"}, client="127.0.0.1",
                         received_at_ms=time.time_ns() // 1_000_000, body=b"").to_fields()
    state: dict[str, Appender] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = ingress_redis(Settings(redis_url=redis_url))
        state["appender"] = Appender(redis, "hookstream-bench:ladder")
        try:
            yield
        finally:
            await redis.aclose()

    async def endpoint(request: Request) -> Response:
        await state["appender"].append({**template, b"b": await request.body()})
        return Response(status_code=200)

    return Starlette(routes=[Route(feed.path, endpoint, methods=list(feed.methods)) for feed in FEEDS]
                     + [Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)


def naive_app(database_url: str, pool_size: int) -> Starlette:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(database_url, min_size=pool_size, max_size=pool_size, open=False,
                               kwargs={"autocommit": True}, name="naive")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(NAIVE_TABLE)
        try:
            yield
        finally:
            await pool.close()

    def endpoint_for(feed: Feed):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            headers = {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers}
            client = request.scope["client"][0] if request.scope.get("client") else ""
            async with pool.connection() as conn:
                await conn.execute(NAIVE_INSERT, (feed.provider, feed.feed, request.method,
                                                  request.scope.get("query_string", b""),
                                                  request.headers.get("content-type", ""), orjson.dumps(headers).decode(),
                                                  client, time.time_ns() // 1_000_000, body))
            return Response(status_code=200)

        return endpoint

    return Starlette(routes=[Route(feed.path, endpoint_for(feed), methods=list(feed.methods)) for feed in FEEDS]
                     + [Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)


def main() -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("ceiling", "naive", "asgi", "ceiling-await", "ceiling-append"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--pool", type=int, default=32)
    args = parser.parse_args()
    apps = {"ceiling": ceiling_app, "naive": lambda: naive_app(args.database_url, args.pool),
            "asgi": lambda: bare_asgi, "ceiling-await": ceiling_await_app,
            "ceiling-append": lambda: ceiling_append_app(args.redis_url)}
    app = apps[args.kind]()
    # The same server settings as `hookstream ingress` (hookstream/cli.py).
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", proxy_headers=False,
                access_log=False, server_header=False, log_config=None, timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
