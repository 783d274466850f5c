"""`hookstream api [--host H] [--port P]`: wired into hookstream/cli.py by `register(subparsers)`.

The API's own variables are read here (the shared Settings object is not the API's to extend):
HOOKSTREAM_API_TOKENS (required), HOOKSTREAM_API_HOST (0.0.0.0), HOOKSTREAM_API_PORT (8080),
HOOKSTREAM_API_PG_POOL_SIZE (4).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from api.auth import ENV as TOKENS_ENV
from api.auth import ApiTokens
from shared.errors import ConfigError
from shared.settings import Settings

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

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiConfig:
        return cls(
            tokens=ApiTokens.from_env(env),
            host=env.get("HOOKSTREAM_API_HOST", "").strip() or "0.0.0.0",
            port=_int(env, "HOOKSTREAM_API_PORT", DEFAULT_PORT, 1, 65535),
            pool_size=_int(env, "HOOKSTREAM_API_PG_POOL_SIZE", DEFAULT_POOL_SIZE, 1, 100),
        )


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    try:
        config = ApiConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"hookstream api: configuration error: {exc}", file=sys.stderr)
        return 2
    if not config.tokens:
        print(f"hookstream api: {TOKENS_ENV} is not set: give at least one token (label:secret, comma-separated)",
              file=sys.stderr)
        return 2
    app = create_app(settings, config.tokens, pool_size=config.pool_size)
    # Access log off: paths carry phone numbers. Proxy headers off, as for the ingress.
    uvicorn.run(app, host=args.host or config.host, port=args.port or config.port, loop="uvloop", http="httptools",
                proxy_headers=False, access_log=False, server_header=False, log_config=None,
                timeout_graceful_shutdown=10)
    return 0


def register(subparsers: Any) -> None:
    """Add `api` to the `hookstream` command's subparsers."""
    p = subparsers.add_parser("api", help="serve the consent API (needs Postgres; HOOKSTREAM_API_TOKENS)")
    p.add_argument("--host", default=None, help="listen address (HOOKSTREAM_API_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="port (HOOKSTREAM_API_PORT, default 8080)")
    p.set_defaults(handler=cmd_api)
