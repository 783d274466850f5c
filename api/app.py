"""The consent API: a small Starlette app over the consent tables (see the README, "Consent API").

Routes: GET /v1/consent/{subject}?scope=, POST /v1/consent/check, GET /v1/consent/review,
POST /v1/consent/review/{event_id}, GET /v1/consent/changes?since=&limit=, POST /v1/consent/records,
POST /v1/consent/deactivations, GET /v1/subjects/{subject}/export, DELETE /v1/subjects/{subject},
GET /openapi.json.
Every route but /openapi.json needs a bearer token (401 and nothing more otherwise); bad input is
a 4xx with a JSON reason, never a 500; the database unreachable is a 503.

The lookups (GET /v1/consent/{subject}, POST /v1/consent/check) read through `read_pool`: a streaming
replica when HOOKSTREAM_DATABASE_READ_URL is set, and then each answer says how far behind the
primary it may be (api.replica). Everything else — the review queue and its decisions, the changes
feed, whose order rests on the primary's transaction ids — stays on the primary.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypedDict

import orjson
import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from api import access, clock, cursor, deactivations, inputs, messages, queries, records, replica, review
from api.answers import NOT_ALLOWED, answer
from api.auth import ApiTokens, BearerAuth, token_label
from api.dashboard import PUBLIC_PATHS, Dashboard
from api.dashboard.app import SecureHeaders
from api.errors import ApiError, JSONResponse, error_response, invalid
from api.openapi import FIXED, document
from api.subjects import Classifier, InvalidSubject, scope_forms
from shared import connections, erasure
from shared.feed import Position, iso
from shared.settings import Settings

log = logging.getLogger("hookstream.api")

DEFAULT_POOL_SIZE = 4
POOL_TIMEOUT_S = 5.0
PAGE_DEFAULT, PAGE_MAX = 100, 1000
THREAD_ABOVE = 2000  # subjects: above this, normalizing runs off the event loop
SHOWN_INVALID = 20  # invalid subjects listed in a 422 of the bulk check


class State(TypedDict):
    settings: Settings
    pool: AsyncConnectionPool[Any]
    read_pool: AsyncConnectionPool[Any]  # the lookups' pool: `pool` itself unless a replica is set
    classifier: Classifier


def _lag_headers(state: State, lag: float | None) -> dict[str, str] | None:
    return {replica.LAG_HEADER: replica.shown(lag)} if state["read_pool"] is not state["pool"] else None


def _state(request: Request) -> State:
    return request.scope["state"]  # type: ignore[no-any-return]


async def read_body(request: Request, limit: int = inputs.MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise inputs.too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise inputs.too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def lookup(request: Request) -> Response:
    raw = request.path_params["subject"]
    if raw in FIXED:  # GET /v1/consent/check: the fixed route wins, and it takes POST only
        raise HTTPException(405, headers={"Allow": "POST"})
    params = inputs.query(request.query_params.multi_items(), ("scope",))
    scope = inputs.scope_value(params.get("scope"), "the scope parameter") if "scope" in params else None
    state = _state(request)
    try:
        subject = state["classifier"](raw)
    except InvalidSubject as exc:
        raise invalid(f"subject: {exc}") from None
    forms = scope_forms(scope, state["settings"].default_region) if scope is not None else None
    async with state["read_pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        lag = await _lag(state, conn)
        rows = await queries.subject_rows(conn, subject.value, _erasure_hash(state["settings"], subject.value))
        if not rows and not subject.phone and not await queries.seen_as_person(conn, subject.value):
            raise invalid(f"subject: {subject.reason}")
        deactivated = await queries.deactivated_at(conn, subject.value) if rows else None
    return JSONResponse(answer(subject.value, rows, forms, deactivated).as_json(), headers=_lag_headers(state, lag))


def _erasure_hash(settings: Settings, subject: str) -> str | None:
    """The subject's keyed hash, under which an erased person's opt-out is kept (the first key's)."""
    key = settings.erasure_key.values[0] if settings.erasure_key else None
    return erasure.keyed_hash(key, subject) if key else None


async def _lag(state: State, conn: psycopg.AsyncConnection[Any]) -> float | None:
    """Measured before the read (api.replica); nothing asked when the reads go to the primary."""
    return await replica.lag_s(conn) if state["read_pool"] is not state["pool"] else None


async def check(request: Request) -> Response:
    body = inputs.check_request(inputs.parse_json(await read_body(request)))
    state = _state(request)
    classifier = state["classifier"]
    if len(body.subjects) > THREAD_ABOVE:
        subjects, refused = await run_in_threadpool(classifier.many, body.subjects)
    else:
        subjects, refused = classifier.many(body.subjects)
    if refused:
        raise invalid(f"{len(refused)} subject(s) cannot be looked up", invalid=refused[:SHOWN_INVALID],
                      count=len(refused))
    forms = scope_forms(body.scope, state["settings"].default_region) if body.scope is not None else None
    values = [s.value for s in subjects]
    async with state["read_pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        lag = await _lag(state, conn)
        settings = state["settings"]
        hashed = [_erasure_hash(settings, value) for value in values] if settings.erasure_key else None
        states = await queries.bulk_states(conn, values, [s.phone for s in subjects], forms, hashed)
    unknown_ids = [{"index": i, "subject": body.subjects[i][:80], "reason": subjects[i].reason}
                   for i, value in enumerate(states) if value == queries.INVALID]
    if unknown_ids:
        raise invalid(f"{len(unknown_ids)} subject(s) are neither a phone number nor a known id",
                      invalid=unknown_ids[:SHOWN_INVALID], count=len(unknown_ids))
    results = [{"subject": value, "allowed": st not in NOT_ALLOWED, "state": st} for value, st in zip(values, states)]
    return Response(orjson.dumps({"results": results}), media_type="application/json",
                    headers=_lag_headers(state, lag))


def _review_cursor(raw: str | None) -> int:
    if raw is None:
        return 0
    try:
        return cursor.decode_review(raw)
    except cursor.BadCursor as exc:
        raise invalid(f"since: {exc}") from None


async def review_list(request: Request) -> Response:
    params = inputs.query(request.query_params.multi_items(), ("since", "limit"))
    after = _review_cursor(params.get("since"))
    limit = inputs.limit_value(params.get("limit"), PAGE_DEFAULT, PAGE_MAX)
    async with _state(request)["pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        items = await queries.review_page(conn, after, limit + 1)
    page = items[:limit]
    return JSONResponse({
        "items": [{"event_id": i.event_id, "subject": i.subject, "scope": i.scope, "provider": i.provider,
                   "body": i.body, "keyword": i.keyword, "occurred_at": iso(i.occurred_at),
                   "received_at": iso(i.received_at)} for i in page],
        "next": cursor.encode_review(page[-1].id if page else after),
        "has_more": len(items) > limit,
    })


async def review_decide(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    inputs.query(request.query_params.multi_items(), ())
    decision = inputs.decision_request(inputs.parse_json(await read_body(request, 4096)))
    review.check_event_id(event_id)
    label = token_label(request.scope)
    async with _state(request)["pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        made = await review.decide(conn, event_id, decision, label, _state(request)["settings"].opt_out_reach)
    log.info("review decision %s on %s by %s%s", decision, event_id, label, " (repeated)" if made.repeated else "")
    return JSONResponse(made.as_json())


async def changes(request: Request) -> Response:
    params = inputs.query(request.query_params.multi_items(), ("since", "limit"))
    try:
        after = cursor.decode(params["since"]) if "since" in params else Position()
    except cursor.BadCursor as exc:
        raise invalid(f"since: {exc}") from None
    limit = inputs.limit_value(params.get("limit"), PAGE_DEFAULT, PAGE_MAX)
    async with _state(request)["pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        found = await queries.changes_page(conn, after, limit + 1)
    page = found[:limit]
    return JSONResponse({
        "changes": [change.as_json() for change in page],
        "next": cursor.encode(page[-1].position if page else after),
        "has_more": len(found) > limit,
    })


async def import_records(request: Request) -> Response:
    inputs.query(request.query_params.multi_items(), ())
    state = _state(request)
    settings = state["settings"]
    data = inputs.parse_json(await read_body(request, records.MAX_BODY_BYTES))
    parsed = await run_in_threadpool(records.parse_request, data, state["classifier"], settings.default_region)
    label = token_label(request.scope)
    async with state["pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        done = await records.import_or_refuse(conn, parsed, label, settings.opt_out_reach)
    log.info("consent import %s by %s: %d record(s), %d new, %d change(s)", done.import_id, label, done.records,
             done.imported, done.changes)
    return JSONResponse(done.as_json())


async def report_deactivations(request: Request) -> Response:
    inputs.query(request.query_params.multi_items(), ())
    state = _state(request)
    data = inputs.parse_json(await read_body(request))
    report = await run_in_threadpool(deactivations.parse_request, data, state["classifier"])
    label = token_label(request.scope)
    async with state["pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        recorded, stale = await deactivations.record(conn, report, label)
    log.info("deactivations from %s by %s: %d number(s), %d opt-in(s) now stale", report.source, label,
             len(report.subjects), stale)
    return JSONResponse({"recorded": recorded, "stale": stale})


def _person(request: Request) -> str:
    try:
        return _state(request)["classifier"](request.path_params["subject"]).value
    except InvalidSubject as exc:
        raise invalid(f"subject: {exc}") from None


async def export_subject(request: Request) -> Response:
    params = inputs.query(request.query_params.multi_items(), ("format",))
    kind = params.get("format", "json")
    if kind not in ("json", "csv"):
        raise invalid("format must be json or csv")
    state = _state(request)
    subject = _person(request)
    hashed = _erasure_hash(state["settings"], subject)
    async with state["pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        tables = await access.export(conn, [subject] if hashed is None else [subject, hashed])
    if not access.held(tables):
        raise ApiError(404, "not_found", "nothing is held about this subject")
    log.info("export of a subject by %s", token_label(request.scope))
    if kind == "csv":
        return Response(access.as_csv(subject, tables), media_type="text/csv",
                        headers={"content-disposition": 'attachment; filename="subject-export.csv"'})
    return Response(access.as_json(subject, tables), media_type="application/json")


async def erase_subject(request: Request) -> Response:
    inputs.query(request.query_params.multi_items(), ())
    state = _state(request)
    settings = state["settings"]
    subject = _person(request)
    hashed = _erasure_hash(settings, subject)
    if hashed is None:
        raise ApiError(503, "unavailable", "erasure needs HOOKSTREAM_ERASURE_KEY")
    label = token_label(request.scope)
    target = erasure.Target(subject, hashed, erasure.notations(subject))
    streams = await run_in_threadpool(_erase_streams, settings, target)
    async with state["pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        async with conn.transaction():
            cur = await conn.execute(erasure.ERASE_SQL, (subject, hashed, target.notations, label,
                                                          orjson.dumps(streams).decode()))
            row = await cur.fetchone()
    counts = {key: int(value) for key, value in (row[0] if row else {}).items()}
    log.info("erasure by %s: %d row(s), %d stream entr(ies)", label, sum(counts.values()),
             sum(streams.values()))
    return JSONResponse({"subject_hash": hashed, "requested_by": label, "requested_at": iso(datetime.now(UTC)),
                         "counts": counts, "repeated": not any(counts.values())})


def _erase_streams(settings: Settings, target: erasure.Target) -> dict[str, int]:
    redis = connections.cli_redis(settings)
    try:
        shards = connections.stream_shards(settings, redis)
        return erasure.erase_streams(redis, target, streams=[shard.stream for shard in shards], group=settings.group,
                                     others=[settings.parked_stream, f"{settings.key_prefix}:consent-changes"])
    finally:
        redis.close()


async def metrics(request: Request) -> Response:
    """The revocation clock (api.clock), for addresses in HOOKSTREAM_METRICS_ALLOWED_IPS only."""
    state = _state(request)
    settings = state["settings"]
    try:
        client = ipaddress.ip_address(request.client.host) if request.client else None
    except ValueError:
        client = None
    if not (settings.metrics_allowed_ips.any_address or (client and settings.metrics_allowed_ips.admits(client))):
        return error_response(403, "forbidden", "not an address allowed to read metrics")
    gauges: clock.ClockMetrics = request.app.state.clock
    async with state["pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        gauges.unapplied.labels("review").set(await clock.oldest_review_s(conn))
    try:
        gauges.unapplied.labels("stream").set(await run_in_threadpool(_stream_age, settings))
    except RedisError as exc:  # the review half still answers; the stream's last value stays
        log.warning("revocation clock: redis unavailable (%s)", type(exc).__name__)
    return Response(generate_latest(gauges.registry), media_type=CONTENT_TYPE_LATEST)


def _stream_age(settings: Settings) -> float:
    """The oldest unprocessed entry of all the raw stream's shards."""
    redis = connections.cli_redis(settings)
    try:
        return max(clock.oldest_unprocessed_s(redis, shard.stream, settings.group)
                   for shard in connections.stream_shards(settings, redis))
    finally:
        redis.close()


async def openapi(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


async def healthz(request: Request) -> Response:
    """The process answers (liveness): Postgres being down must not restart it."""
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Postgres answers (readiness): while it does not, the API would only give 503s. With a replica
    for the lookups, it must answer too, and its lag is shown (not judged: a lagging replica still
    answers truly, as of its lag)."""
    state = _state(request)
    try:
        async with state["pool"].connection(timeout=1.0) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.Error, PoolTimeout):
        return PlainTextResponse("postgres unreachable", status_code=503)
    if state["read_pool"] is state["pool"]:
        return PlainTextResponse("ready")
    try:
        async with state["read_pool"].connection(timeout=1.0) as conn:
            lag = await replica.lag_s(conn)
    except (psycopg.Error, PoolTimeout):
        return PlainTextResponse("postgres read replica unreachable", status_code=503)
    return PlainTextResponse(f"ready; replica lag {replica.shown(lag)} s", headers=_lag_headers(state, lag))


# Errors → JSON. Starlette raises HTTPException for 404/405 itself.
async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, **exc.extra)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, None, headers=dict(exc.headers or {}))


async def on_unavailable(request: Request, exc: Exception) -> Response:
    log.error("database unavailable: %s", type(exc).__name__)
    return error_response(503, "unavailable", "the database is unavailable; retry", headers={"Retry-After": "1"})


async def on_internal(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal", None)


Handler = Callable[[Request, Exception], Awaitable[Response]]
# No bearer token: the document, the probes, and /metrics (limited to HOOKSTREAM_METRICS_ALLOWED_IPS).
PUBLIC = frozenset({"/openapi.json", "/healthz", "/readyz", "/metrics"})


def create_app(settings: Settings, tokens: ApiTokens, *, pool: AsyncConnectionPool[Any] | None = None,
               pool_size: int = DEFAULT_POOL_SIZE, dashboard: Dashboard | None = None,
               read_pool: AsyncConnectionPool[Any] | None = None) -> Starlette:
    """The API application with the dashboard at `/`; `pool`, `read_pool` and `dashboard` are
    injectable (tests, benchmarks), otherwise made here and closed with the app. The read pool is
    made only when HOOKSTREAM_DATABASE_READ_URL is set; otherwise the lookups share `pool`."""
    own_dashboard = dashboard is None
    dash = dashboard or Dashboard(settings, tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        own = pool is None
        active = pool or connections.api_pool(settings.database_url_or_default(), pool_size)
        own_read = read_pool is None and settings.database_read_url is not None
        reads = read_pool or (connections.api_read_pool(settings.database_read_url_or_default(), pool_size)
                              if own_read else active)
        if own:
            await active.open()  # does not wait for a connection: the API starts with Postgres down (503s)
        if own_read:
            await reads.open()
        for label in tokens.short_labels():
            log.warning("API token %s is shorter than 16 characters", label)
        log.info("consent API ready; tokens: %s", ", ".join(tokens.labels) or "none (every request gets 401)")
        try:
            yield State(settings=settings, pool=active, read_pool=reads, classifier=Classifier(settings.default_region))
        finally:
            if own:
                await active.close()
            if own_read:
                await reads.close()
            if own_dashboard:
                dash.close()

    routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/consent/check", check, methods=["POST"]),
        Route("/v1/consent/review", review_list, methods=["GET"]),
        Route("/v1/consent/review/{event_id:path}", review_decide, methods=["POST"]),
        Route("/v1/consent/changes", changes, methods=["GET"]),
        Route("/v1/consent/records", import_records, methods=["POST"]),
        Route("/v1/consent/deactivations", report_deactivations, methods=["POST"]),
        Route("/v1/subjects/{subject}/export", export_subject, methods=["GET"]),
        Route("/v1/subjects/{subject}", erase_subject, methods=["DELETE"]),
        Route("/v1/consent/{subject}", lookup, methods=["GET"]),
        Route("/v1/messages", messages.search, methods=["GET"]),
        Route("/v1/messages/{provider}/{message_ref:path}", messages.show, methods=["GET"]),
        *dash.routes(),  # the dashboard checks its own session cookie or bearer token
    ]
    handlers: dict[Any, Handler] = {
        ApiError: on_api_error, HTTPException: on_http_error, psycopg.OperationalError: on_unavailable,
        PoolTimeout: on_unavailable, Exception: on_internal,
    }
    # nosniff on every answer of the process, the errors Starlette builds (404, 405) included.
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers,
                    middleware=[Middleware(SecureHeaders, headers={"x-content-type-options": "nosniff"}),
                                Middleware(BearerAuth, tokens=tokens,
                                           public=PUBLIC | PUBLIC_PATHS)])
    app.state.openapi = orjson.dumps(document())
    app.state.clock = clock.ClockMetrics()
    return app
