"""`hookstream api [--host H] [--port P]`: the consent API with the dashboard at `/`, one process.

Its variables (HOOKSTREAM_API_TOKENS, required; HOOKSTREAM_API_HOST, HOOKSTREAM_API_PORT,
HOOKSTREAM_API_PG_POOL_SIZE, HOOKSTREAM_DASHBOARD_SECRET, HOOKSTREAM_DASHBOARD_COOKIE_SECURE) are the
API's own: `api.config.ApiConfig`.
"""

from __future__ import annotations

import argparse
import os
import sys

from api.auth import ENV as TOKENS_ENV
from api.config import ApiConfig
from api.dashboard import Dashboard
from shared.errors import ConfigError
from shared.settings import Settings


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    # Here, not at the top: the API imports prometheus_client, which `hookstream worker` must set up
    # (PROMETHEUS_MULTIPROC_DIR) before anything imports it, and every command imports this module.
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
    dashboard = Dashboard(settings, config.tokens, secret=config.dashboard_secret,
                          secure_cookie=config.dashboard_cookie_secure)
    app = create_app(settings, config.tokens, pool_size=config.pool_size, dashboard=dashboard)
    # Access log off: paths carry phone numbers. Proxy headers off, as for the ingress.
    try:
        uvicorn.run(app, host=args.host or config.host, port=args.port or config.port, loop="uvloop",
                    http="httptools", proxy_headers=False, access_log=False, server_header=False, log_config=None,
                    timeout_graceful_shutdown=10)
    finally:
        dashboard.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("api", help="serve the consent API (needs Postgres; HOOKSTREAM_API_TOKENS)")
    p.add_argument("--host", default=None, help="listen address (HOOKSTREAM_API_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="port (HOOKSTREAM_API_PORT, default 8080)")
    p.set_defaults(handler=cmd_api)
