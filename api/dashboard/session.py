"""Browser sessions and CSRF for the dashboard.

Logging in: the login form takes one of the API's tokens (HOOKSTREAM_API_TOKENS, checked by
`ApiTokens.verify`, the API's own comparison) and answers with a session cookie:

    hookstream_session = base64url(JSON {label, csrf, exp}) "." base64url(HMAC-SHA256(key, payload))

signed, HttpOnly, SameSite=Strict, Path=/, Max-Age 12 h, Secure when the request came over HTTPS
or HOOKSTREAM_DASHBOARD_COOKIE_SECURE=1 (behind a TLS-terminating proxy). The cookie names the
token's label, never the token, and a digest of the token's secret: a session whose label is no
longer among the tokens (a revoked token), or whose token's secret changed (a rotation), is refused.
Logging out revokes the session itself (kept by the dashboard until it would have expired). The
key is HOOKSTREAM_DASHBOARD_SECRET, or 32 random bytes per process (then a restart logs everyone
out, and several API replicas need the variable set to share sessions).

CSRF: each session carries a random token (`csrf`), put in the page (a <meta> for the script, a
hidden field in each form). Every POST with a session must send it back (`X-CSRF-Token` header or
`csrf` field), compared in constant time; a POST whose Origin names another host is refused too.
A request with `Authorization: Bearer <token>` carries no ambient credential, so needs no CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request

COOKIE = "hookstream_session"
MAX_AGE_S = 12 * 3600
SECRET_ENV = "HOOKSTREAM_DASHBOARD_SECRET"
SECURE_ENV = "HOOKSTREAM_DASHBOARD_COOKIE_SECURE"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    label: str
    csrf: str  # random per session: also the session's identity for a logout
    expires: int
    token: str = ""  # ApiTokens.digest of the token it was made with


class Signer:
    """Issues and reads session cookies; the key never leaves this object."""

    __slots__ = ("_key", "max_age_s")

    def __init__(self, key: bytes, max_age_s: int = MAX_AGE_S) -> None:
        if len(key) < 16:
            raise ValueError("the session key must be at least 16 bytes")
        # A key of its own for this purpose, whatever the operator gave.
        self._key = hashlib.sha256(b"hookstream-dashboard-session\x00" + key).digest()
        self.max_age_s = max_age_s

    @classmethod
    def from_secret(cls, secret: str | None) -> Signer:
        """HOOKSTREAM_DASHBOARD_SECRET (api.config.ApiConfig); None: a random key of this process."""
        return cls(secret.encode() if secret else secrets.token_bytes(32))

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, label: str, token: str = "", now: float | None = None) -> tuple[str, Session]:
        session = Session(label, secrets.token_urlsafe(32), int((now or time.time()) + self.max_age_s), token)
        payload = _b64(orjson.dumps({"l": session.label, "c": session.csrf, "e": session.expires, "t": token}))
        return f"{payload}.{self._mac(payload)}", session

    def read(self, value: str | None, now: float | None = None) -> Session | None:
        if not value or len(value) > 4096:
            return None
        payload, _, mac = value.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            data = orjson.loads(_unb64(payload))
            session = Session(str(data["l"]), str(data["c"]), int(data["e"]), str(data.get("t", "")))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > (now or time.time()) else None


def cookie_secure(request: Request, always: bool = False) -> bool:
    """`always`: HOOKSTREAM_DASHBOARD_COOKIE_SECURE=1 (behind a TLS-terminating proxy)."""
    return request.url.scheme == "https" or always


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(presented.encode(), session.csrf.encode())  # type: ignore[union-attr]


def same_origin(request: Request) -> bool:
    """No Origin header (an old browser, a script), or one naming this host. Scheme is not compared:
    behind a TLS-terminating proxy the app sees http while the browser says https."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # `http://[`, a netloc that changes under NFKC: no origin we could be
        return False
    return origin != "null" and netloc.lower() == host.lower()
