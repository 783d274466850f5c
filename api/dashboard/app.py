"""The dashboard's routes: one server-rendered page (Jinja2) that refreshes its sections every few
seconds, the HTML partials it refreshes from, JSON data endpoints, a login form, the review
decisions, and the dead-letter details page.

Mounted into the API app (`hookstream api`) with `routes(settings, tokens)`; the API's bearer
middleware must let `PUBLIC_PATHS` through (they authenticate themselves: a session cookie or the
same bearer tokens). Every path is exact (no path parameters) so that list can be exact too.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import psycopg
from jinja2 import Environment, FileSystemLoader, select_autoescape
from psycopg_pool import ConnectionPool, PoolTimeout
from redis import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import ApiTokens, bearer
from api.dashboard import data, messages
from api.dashboard.cache import TTLCache
from api.dashboard.review import Decider, api_decider
from api.dashboard.session import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SECRET_ENV,
    Session,
    Signer,
    cookie_secure,
    csrf_ok,
    same_origin,
)
from api.errors import ApiError, error_response
from shared import connections, flow_history
from shared.display import visible
from shared.examples import example_curl
from shared.reports import first_line
from shared.settings import Settings

log = logging.getLogger("hookstream.dashboard")

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_PREFIX = "/dashboard/static"
REFRESH_S = 5
# Seconds each section is reused for: flow moves fast, the 14-day views slowly.
CACHE_TTL_S: Mapping[str, float] = {"flow": 2.0, "deliverability": 30.0, "consent": 5.0}
SECTIONS = ("flow", "deliverability", "consent")
MAX_FORM_BYTES = 4096
BIGINT_MAX = 2**63 - 1  # dead_letters.id is a bigint

PAGE_PATHS = ("/", "/login", "/logout", "/dashboard/review", "/dashboard/dead-letters", messages.PATH)
DATA_PATHS = tuple(f"/dashboard/data/{s}" for s in SECTIONS)
PARTIAL_PATHS = tuple(f"/dashboard/partial/{s}" for s in SECTIONS)
STATIC_FILES = tuple(sorted(p.name for p in STATIC.iterdir() if p.is_file()))
PUBLIC_PATHS: frozenset[str] = frozenset(
    (*PAGE_PATHS, *DATA_PATHS, *PARTIAL_PATHS, *(f"{STATIC_PREFIX}/{name}" for name in STATIC_FILES)))

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                               " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # no-referrer would make Chromium send `Origin: null` on form posts
    "cache-control": "no-store",
}
# The static files are versioned (`?v=`), so a browser may keep them: everything above but no-store.
STATIC_HEADERS = {k: v for k, v in SECURITY_HEADERS.items() if k != "cache-control"}
NOTICES = {  # ?notice= after a form post without JavaScript: fixed sentences, nothing reflected
    "opt_out": "Opt-out recorded.", "dismiss": "Dismissed.", "conflict": "Someone decided that one already.",
    "not_found": "That item is no longer in the queue.", "invalid": "That decision cannot be applied.",
    "csrf": "The form had expired; try again.", "logged_out": "Logged out.",
}


def _asset_version(name: str) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]


ASSET_VERSIONS = {name: _asset_version(name) for name in STATIC_FILES}


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v: "?" if v is None else f"{v:,}" if isinstance(v, int) else str(v)
    env.filters["pct"] = lambda v: "–" if v is None else f"{float(v) * 100:.1f}%"
    env.filters["when"] = lambda iso: iso[:19].replace("T", " ") if iso else ""  # times come in UTC (TimeZone=UTC)
    env.filters["visible"] = visible  # provider text: controls and bidi overrides shown escaped, as in the CLI
    env.filters["utc"] = lambda t: t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if t else "-"
    env.globals["asset"] = lambda name: f"{STATIC_PREFIX}/{name}?v={ASSET_VERSIONS[name]}"
    return env


class Dashboard:
    """Routes plus what they share: a small sync Postgres pool and a Redis client (opened on first
    use, so the API starts with either down), the section cache, the session signer."""

    def __init__(self, settings: Settings, tokens: ApiTokens, *, secret: str | None = None,
                 secure_cookie: bool = False, signer: Signer | None = None,
                 cache_ttl_s: Mapping[str, float] | None = None, decide: Decider | None = None, pool_size: int = 4,
                 ingress_port: int | None = None, refresh_s: int = REFRESH_S,
                 pool_timeout_s: float | None = None) -> None:
        """`secret` and `secure_cookie`: the API's config (api.config.ApiConfig); `ingress_port`: the
        settings' by default; `pool_timeout_s`: the dashboard's row of shared.connections by default."""
        self.settings = settings
        self.tokens = tokens
        self.secure_cookie = secure_cookie
        self.signer = signer or Signer.from_secret(secret)
        if signer is None and not secret:
            log.info("dashboard: %s is not set; sessions are signed with a key of this process only", SECRET_ENV)
        self.cache = TTLCache(CACHE_TTL_S if cache_ttl_s is None else cache_ttl_s)
        self.decide = decide or api_decider(settings.database_url_or_default(), settings.opt_out_reach)
        self.pool_size = pool_size
        self.refresh_s = refresh_s
        self.pool_timeout_s = pool_timeout_s
        self.ingress_port = ingress_port or settings.port
        self.templates = _env()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._redis: Redis | None = None
        self._queue_redis: Redis | None = None  # None while it is `_redis` (RQ's queues live there)
        self._logouts: dict[str, int] = {}  # csrf of a logged-out session → when it would have expired

    # -- resources --------------------------------------------------------------------------------

    def pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                # Every section reads only: a streaming replica when HOOKSTREAM_DATABASE_READ_URL is set.
                # The review decisions write through the API's pool or their own (api_decider), on the primary.
                self._pool = connections.dashboard_pool(self.settings.database_read_url_or_default(),
                                                        self.pool_size, self.pool_timeout_s)
                self._pool.open(wait=False)
                atexit.register(self.close)
            return self._pool

    def reading(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A pooled connection in one read transaction (statement timeout, UTC): every query of the
        dashboard runs in one, which works behind PgBouncer in transaction mode too."""
        return connections.dashboard_read(self.pool())

    def redis(self) -> Redis:
        with self._lock:
            if self._redis is None:
                self._redis = connections.dashboard_redis(self.settings)
            return self._redis

    def queue_redis(self) -> Redis:
        """Where RQ's queues live: the stream's client unless HOOKSTREAM_QUEUE_REDIS_URL names another."""
        redis = self.redis()
        with self._lock:
            if self._queue_redis is None and not connections.queue_shares_stream_redis(self.settings):
                self._queue_redis = connections.queue_redis(self.settings, connections.Role.DASHBOARD)
            return self._queue_redis or redis

    def close(self) -> None:
        self.cache.close()
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if self._redis is not None:
                self._redis.close()
                self._redis = None
            if self._queue_redis is not None:
                self._queue_redis.close()
                self._queue_redis = None

    # -- sections (sync: run in the thread pool) ---------------------------------------------------

    def _flow(self) -> dict[str, Any]:
        redis, queue_redis = self.redis(), self.queue_redis()
        try:
            with self.reading() as conn:
                return data.flow(self.settings, redis, conn, queue_redis=queue_redis)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            return data.flow(self.settings, redis, None, first_line(exc), queue_redis=queue_redis)

    def _flow_history(self) -> dict[str, Any] | None:
        """The last hours of the dispatcher's samples (shared/flow_history.py); None when Redis is away."""
        now = datetime.now(UTC)
        since_ms = int((now.timestamp() - flow_history.HOURS * 3600 - flow_history.BUCKET_S) * 1000)
        try:
            entries = self.redis().xrange(flow_history.key(self.settings.key_prefix), min=f"{since_ms}-0")
        except RedisError:
            return None
        return flow_history.series([flow_history.decode(fields) for _, fields in entries], now)

    def _postgres_section(self, read: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        try:
            with self.reading() as conn:
                return {**read(conn), "errors": []}
        except (PoolTimeout, psycopg.Error) as exc:
            return {"errors": [f"postgres: {first_line(exc)}"]}

    def compute(self, section: str) -> dict[str, Any]:
        """The section's figures and when they were read (shown beside it: a cached section says its age)."""
        updated = datetime.now(UTC).strftime("%H:%M:%S")
        if section == "flow":
            return {**self._flow(), "history": self._flow_history(), "updated": updated}
        read = data.deliverability if section == "deliverability" else data.consent
        return {**self._postgres_section(read), "updated": updated}

    def agree(self) -> None:
        """Flow is read every 2 s, deliverability every 30 s: a deliverability section cached while it
        was empty would say "No delivery reports" beside the statuses Flow counts. Flow seeing
        statuses makes an empty deliverability section be read again."""
        flow, deliverability = self.cache.peek("flow"), self.cache.peek("deliverability")
        if flow is not None and deliverability is not None and data.statuses_seen(flow) and data.no_reports(
                deliverability):
            self.cache.drop("deliverability")

    async def section(self, name: str) -> dict[str, Any]:
        self.agree()
        value: dict[str, Any] = await run_in_threadpool(self.cache.get, name, partial(self.compute, name))
        if name == "flow":
            self.agree()
        return value

    # -- authentication ---------------------------------------------------------------------------

    def authenticate(self, request: Request) -> tuple[str, Session | None] | None:
        """(label, session) for a valid session cookie, (label, None) for a valid bearer token."""
        token = bearer(request.headers.get("authorization"))
        if token is not None:
            label = self.tokens.verify(token)
            return (label, None) if label is not None else None
        session = self.signer.read(request.cookies.get(COOKIE))
        # A revoked token, a rotated secret or a logout ends a session.
        if session is None or session.token != self.tokens.digest(session.label) or self.logged_out(session):
            return None
        return session.label, session

    def _logout_key(self, session: Session) -> str:
        return f"{self.settings.key_prefix}:dashboard:logout:{hashlib.sha256(session.csrf.encode()).hexdigest()[:32]}"

    def logged_out(self, session: Session) -> bool:
        """Here, or (for the other API replicas) in Redis; Redis unreachable: this process's memory only."""
        if session.csrf in self._logouts:
            return True
        try:
            return bool(self.redis().exists(self._logout_key(session)))
        except RedisError:
            return False

    def log_out(self, session: Session) -> None:
        now = time.time()
        self._logouts = {csrf: until for csrf, until in self._logouts.items() if until > now}
        self._logouts[session.csrf] = session.expires
        try:
            self.redis().set(self._logout_key(session), b"1", ex=max(1, int(session.expires - now)))
        except RedisError as exc:
            log.warning("dashboard: logout kept in this process only (redis: %s)", first_line(exc))

    # -- rendering --------------------------------------------------------------------------------

    def html(self, template: str, status_code: int = 200, **context: Any) -> Response:
        body = self.templates.get_template(template).render(refresh_s=self.refresh_s, **context)
        return Response(body, status_code=status_code, media_type="text/html; charset=utf-8")

    def context(self, name: str, section: dict[str, Any], session: Session | None) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if name == "flow":
            extra = {"no_traffic": section["per_minute"] is not None and data.no_traffic(section),
                     "curl": example_curl(self.ingress_port), "ingress_port": self.ingress_port,
                     "outcomes": data.OUTCOMES, "flow_charts": data.flow_charts(section["per_minute"]),
                     "history_charts": flow_history.charts(section["history"]) if section.get("history") else []}
        elif name == "deliverability":
            extra = {"deliverability_charts": data.deliverability_charts(section)}
        else:
            extra = {"consent_chart": data.consent_chart(section)}
        return {name: section, "csrf": session.csrf if session else "", **extra}

    @staticmethod
    def json(body: Any, status_code: int = 200) -> Response:
        return Response(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), status_code=status_code,
                        media_type="application/json")

    # -- handlers ---------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        auth = self.authenticate(request)
        if auth is None:
            return RedirectResponse("/login", 303)
        label, session = auth
        sections = await asyncio.gather(*(self.section(name) for name in SECTIONS))
        context: dict[str, Any] = {}
        for name, section in zip(SECTIONS, sections):
            context.update(self.context(name, section, session))
        return self.html("index.html", label=label, notice=NOTICES.get(request.query_params.get("notice", "")),
                         now=datetime.now(UTC).strftime("%H:%M:%S"), **context)

    async def partial(self, request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[1]
        auth = self.authenticate(request)
        if auth is None:
            return self.json({"error": "unauthorized"}, 401)
        section = await self.section(name)
        context = self.context(name, section, auth[1])
        body = self.templates.get_template(f"_{name}.html").render(refresh_s=self.refresh_s, **context)
        stamp = self.templates.get_template("_updated.html").render(at=section.get("updated"))
        return Response(stamp + body, media_type="text/html; charset=utf-8")

    async def data(self, request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[1]
        if self.authenticate(request) is None:
            return self.json({"error": "unauthorized"}, 401)
        return self.json(await self.section(name))

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            if self.authenticate(request) is not None:
                return RedirectResponse("/", 303)
            return self.html("login.html", notice=NOTICES.get(request.query_params.get("notice", "")))
        if not same_origin(request):
            return self.html("login.html", 403, error="This form was sent from another site.")
        form = await read_form(request)
        label = self.tokens.verify(form.get("token", "").strip()) if form is not None else None
        if label is None:
            await asyncio.sleep(0.25)  # a guess costs a little time
            return self.html("login.html", 401, error="That token is not one of HOOKSTREAM_API_TOKENS.")
        value, _ = self.signer.issue(label, self.tokens.digest(label) or "")
        response = RedirectResponse("/", 303)
        response.set_cookie(COOKIE, value, max_age=self.signer.max_age_s, path="/", httponly=True,
                            samesite="strict", secure=cookie_secure(request, self.secure_cookie))
        log.info("dashboard login by %s", label)
        return response

    async def logout(self, request: Request) -> Response:
        auth = self.authenticate(request)
        form = await read_form(request) or {}
        if auth is not None and auth[1] is not None and not (
                same_origin(request) and csrf_ok(auth[1], form.get(CSRF_FIELD))):
            return RedirectResponse("/?notice=csrf", 303)
        if auth is not None and auth[1] is not None:
            self.log_out(auth[1])
        response = RedirectResponse("/login?notice=logged_out", 303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=cookie_secure(request, self.secure_cookie))
        return response

    async def review(self, request: Request) -> Response:
        wants_json = "application/json" in request.headers.get("accept", "")
        auth = self.authenticate(request)
        if auth is None:
            return self.json({"error": "unauthorized"}, 401) if wants_json else RedirectResponse("/login", 303)
        label, session = auth
        form = await read_form(request)
        if form is None:
            return self.json({"error": "bad_request", "detail": "send a form or a JSON object"}, 400)
        if session is not None:  # a browser: ambient credentials, so the CSRF token and the origin
            presented = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
            if not same_origin(request) or not csrf_ok(session, presented):
                return (self.json({"error": "csrf", "detail": "missing or wrong CSRF token"}, 403) if wants_json
                        else RedirectResponse("/?notice=csrf#consent", 303))
        event_id, decision = form.get("event_id", ""), form.get("decision", "")
        try:
            made = await self.decide(event_id, decision, label, request.scope.get("state", {}).get("pool"))
        except ApiError as exc:  # the API's own refusal, answered as the API answers it
            if wants_json:
                return error_response(exc.status, exc.code, exc.detail, **exc.extra)
            return RedirectResponse(f"/?notice={exc.code}#consent", 303)
        finally:
            self.cache.drop("consent")
        log.info("dashboard review decision %s by %s", decision, label)
        return self.json(made) if wants_json else RedirectResponse(f"/?notice={decision}#consent", 303)

    async def dead_letters(self, request: Request) -> Response:
        auth = self.authenticate(request)
        if auth is None:
            return RedirectResponse("/login", 303)
        raw_id = request.query_params.get("id", "")
        letter_id = whole_number(raw_id, low=1, high=BIGINT_MAX)
        if raw_id and letter_id is None:  # not an id at all (a well-formed one that is not there: 404)
            return self.html("dead_letters.html", 422, malformed=True, csrf=_csrf(auth))

        def read() -> dict[str, Any]:
            with self.reading() as conn:
                if letter_id is not None:
                    return {"letter": data.dead_letter(conn, letter_id)}
                return {"letters": data.dead_letter_list(conn)}

        try:
            found = await run_in_threadpool(read)
        except (PoolTimeout, psycopg.Error) as exc:
            return self.html("dead_letters.html", 503, error=f"postgres: {first_line(exc)}", csrf=_csrf(auth))
        status_code = 404 if raw_id and found.get("letter") is None else 200
        return self.html("dead_letters.html", status_code, asked=raw_id, csrf=_csrf(auth), **found)

    def routes(self) -> list[BaseRoute]:
        """Each route wrapped in `SecureHeaders`: every answer a handler or the static files send
        (pages, JSON, redirects, the handlers' own errors) carries the same headers, set in this one place."""
        headers = [Middleware(SecureHeaders, headers=SECURITY_HEADERS)]
        return [
            Route("/", self.index, methods=["GET"], middleware=headers),
            Route("/login", self.login, methods=["GET", "POST"], middleware=headers),
            Route("/logout", self.logout, methods=["POST"], middleware=headers),
            Route("/dashboard/review", self.review, methods=["POST"], middleware=headers),
            Route("/dashboard/dead-letters", self.dead_letters, methods=["GET"], middleware=headers),
            Route(messages.PATH, partial(messages.page, self), methods=["GET"], middleware=headers),
            *(Route(path, self.data, methods=["GET"], middleware=headers) for path in DATA_PATHS),
            *(Route(path, self.partial, methods=["GET"], middleware=headers) for path in PARTIAL_PATHS),
            Mount(STATIC_PREFIX, app=StaticFiles(directory=str(STATIC)), name="dashboard-static",
                  middleware=[Middleware(SecureHeaders, headers=STATIC_HEADERS)]),
        ]


class SecureHeaders:
    """A pure ASGI middleware adding `headers` to the start of every response the wrapped app sends,
    unless the app set that header itself."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                   *((n, v) for n, v in self.headers if n not in present)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _csrf(auth: tuple[str, Session | None]) -> str:
    return auth[1].csrf if auth[1] is not None else ""


def whole_number(text: str, low: int = 0, high: int = BIGINT_MAX) -> int | None:
    """`text` as an int when it is ASCII digits only and within [low, high], else None: the one way the
    dashboard reads a number from a client. `str.isdigit()` alone is not enough: it accepts `²`, which
    int() refuses, and `١٢`, which int() reads as 12; int() refuses more than 4,300 digits; and a value
    past the column's range would overflow Postgres' bigint."""
    if not 0 < len(text) <= len(str(high)) or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if low <= value <= high else None


async def read_form(request: Request) -> dict[str, str] | None:
    """A small urlencoded form or JSON object (no multipart: nothing here uploads files)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        size = whole_number(declared)
        if size is None or size > MAX_FORM_BYTES:  # malformed, or more than a form here ever is
            return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            parsed = orjson.loads(body) if body else {}
            if not isinstance(parsed, dict):
                return None
            return {str(k): v for k, v in parsed.items() if isinstance(v, str)}
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (ValueError, UnicodeDecodeError):
        return None


def routes(settings: Settings, tokens: ApiTokens, **options: Any) -> list[BaseRoute]:
    """The dashboard's routes, to mount into the API app at `/` (see PUBLIC_PATHS)."""
    return Dashboard(settings, tokens, **options).routes()
