"""API bearer tokens: `HOOKSTREAM_API_TOKENS`, parsed here because the settings object is shared.

Each comma-separated entry is `label:secret` or a bare secret, whose label is then `token-` and the
first 8 hex digits of the secret's SHA-256. Audit rows and logs name the label, never the secret;
several entries allow rotation (any one verifies).

Wrong tokens are limited per client address (a token bucket: `FailureLimit`); past the limit the
API answers 429 with Retry-After without looking at the token, and every failure is logged with the
address only (no label can be known, no secret is written).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ConfigError

log = logging.getLogger("hookstream.api.auth")

ENV = "HOOKSTREAM_API_TOKENS"
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
SHORT_SECRET = 16  # characters; shorter ones are accepted but reported at start-up
SCOPE_KEY = "hookstream.api_token"  # ASGI scope key holding the verified token's label


def bare_label(secret: str) -> str:
    return "token-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


class ApiTokens:
    """Label → secret. The secrets never appear in a repr, a log line or an error message."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._secrets = {label: secret.encode() for label, secret in secrets.items()}

    @classmethod
    def parse(cls, raw: str) -> ApiTokens:
        secrets: dict[str, str] = {}
        for number, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
            if not entry:
                continue
            label, sep, secret = entry.partition(":")
            if not sep:
                label, secret = bare_label(entry), entry
            elif not LABEL.fullmatch(label):
                raise ConfigError(f"{ENV}: entry {number} has a label that is not 1-64 letters, digits or _.@+-")
            if not secret:
                raise ConfigError(f"{ENV}: entry {number} ({label}) has an empty secret")
            if label in secrets:
                raise ConfigError(f"{ENV}: label {label!r} is used twice (audit rows could not tell them apart)")
            if secret in secrets.values():
                raise ConfigError(f"{ENV}: entry {number} ({label}) repeats the secret of another label")
            secrets[label] = secret
        return cls(secrets)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiTokens:
        """`env` as ApiConfig passes it, HOOKSTREAM_API_TOKENS_FILE already read."""
        return cls.parse(env.get(ENV, ""))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    def digest(self, label: str) -> str | None:
        """A digest of `label`'s secret (None: no such label), for the dashboard's sessions: a session
        made with an older secret of the same label no longer matches after a rotation."""
        secret = self._secrets.get(label)
        return None if secret is None else hmac.new(b"hookstream-session-token", secret, hashlib.sha256).hexdigest()

    def short_labels(self) -> list[str]:
        return [label for label, secret in self._secrets.items() if len(secret) < SHORT_SECRET]

    def verify(self, presented: str) -> str | None:
        """The label of the matching token; compares with every one so the time tells nothing."""
        candidate = presented.encode()
        found: str | None = None
        for label, secret in self._secrets.items():
            if hmac.compare_digest(candidate, secret):
                found = label
        return found

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __len__(self) -> int:
        return len(self._secrets)

    def __iter__(self) -> Iterator[str]:
        return iter(self._secrets)

    def __repr__(self) -> str:
        return f"ApiTokens(labels={list(self._secrets)!r}, secrets hidden)"

    __str__ = __repr__


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for anything else."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


UNAUTHORIZED_BODY = b'{"error":"unauthorized"}'
TOO_MANY_BODY = b'{"error":"too many wrong tokens"}'


@dataclass
class FailureLimit:
    """A token bucket per client address, drawn on by wrong tokens only: `burst` wrong tries at once,
    then one more every 1/`per_s` seconds. At most `max_clients` addresses are remembered (the
    oldest are forgotten first), so a flood of addresses cannot grow it without bound."""

    burst: float = 10
    per_s: float = 0.2
    max_clients: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # address → (tokens, at)

    def _level(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.per_s)

    def retry_after_s(self, client: str, now: float) -> int:
        """0: this client may try a token now; else whole seconds until it may."""
        level = self._level(client, now)
        return 0 if level >= 1 else max(1, math.ceil((1 - level) / self.per_s))

    def failed(self, client: str, now: float) -> None:
        level = self._level(client, now) - 1
        self._buckets.pop(client, None)
        self._buckets[client] = (level, now)
        while len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class BearerAuth:
    """Every path except the public ones needs a valid bearer token: otherwise 401 and nothing more.

    A pure ASGI middleware, so it runs before routing: without a token, an unknown path and a real
    one answer alike. The label of the verified token is left in the scope for the handlers.
    """

    def __init__(self, app: ASGIApp, tokens: ApiTokens, public: frozenset[str] = frozenset(),
                 limit: FailureLimit | None = None) -> None:
        self.app = app
        self.tokens = tokens
        self.public = public
        self.limit = limit if limit is not None else FailureLimit()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        token = bearer(authorization)
        client, now = client_address(scope), time.monotonic()
        wait_s = self.limit.retry_after_s(client, now) if token is not None else 0
        if wait_s:
            await send({"type": "http.response.start", "status": 429, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(TOO_MANY_BODY)).encode()),
                (b"retry-after", str(wait_s).encode())]})
            await send({"type": "http.response.body", "body": TOO_MANY_BODY})
            return
        label = self.tokens.verify(token) if token is not None else None
        if label is None and token is not None:
            self.limit.failed(client, now)
            log.warning("wrong API token from %s", client)
        if label is None:
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(UNAUTHORIZED_BODY)).encode()),
                (b"www-authenticate", b'Bearer realm="hookstream"')]})
            await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY})
            return
        scope[SCOPE_KEY] = label
        await self.app(scope, receive, send)


def token_label(scope: Scope) -> str:
    return str(scope[SCOPE_KEY])
