"""The API process's own settings, read from its variables (the shared Settings object is not the
API's to extend): HOOKSTREAM_API_TOKENS (required), HOOKSTREAM_API_HOST (0.0.0.0),
HOOKSTREAM_API_PORT (8080), HOOKSTREAM_API_PG_POOL_SIZE (4), and its dashboard's
HOOKSTREAM_DASHBOARD_SECRET (unset: a key of the process) and HOOKSTREAM_DASHBOARD_COOKIE_SECURE
(`1`: Secure cookies over plain HTTP). The `hookstream api` command (hookstream/api.py) reads them
with `ApiConfig.from_env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from api.auth import ApiTokens
from api.dashboard.session import SECRET_ENV, SECURE_ENV
from shared.errors import ConfigError
from shared.settings import with_secret_files

DEFAULT_PORT = 8080
DEFAULT_POOL_SIZE = 4


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"{name}={raw!r} must be a whole number from {low} to {high}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    tokens: ApiTokens
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    pool_size: int = DEFAULT_POOL_SIZE
    dashboard_secret: str | None = field(default=None, repr=False)
    dashboard_cookie_secure: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiConfig:
        env = with_secret_files(env)  # HOOKSTREAM_API_TOKENS_FILE, HOOKSTREAM_DASHBOARD_SECRET_FILE
        return cls(
            tokens=ApiTokens.from_env(env),
            host=env.get("HOOKSTREAM_API_HOST", "").strip() or "0.0.0.0",
            port=_int(env, "HOOKSTREAM_API_PORT", DEFAULT_PORT, 1, 65535),
            pool_size=_int(env, "HOOKSTREAM_API_PG_POOL_SIZE", DEFAULT_POOL_SIZE, 1, 100),
            dashboard_secret=env.get(SECRET_ENV, "").strip() or None,
            dashboard_cookie_secure=env.get(SECURE_ENV, "").strip() == "1",
        )
