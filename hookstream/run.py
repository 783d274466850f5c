"""`hookstream run`: the whole pipeline in the foreground until Ctrl-C.

Without HOOKSTREAM_REDIS_URL / HOOKSTREAM_DATABASE_URL it starts embedded redis-server and
PostgreSQL processes under the project's data folder (the local profile: loopback is admitted
on every provider route), applies the migrations, then runs ingress, dispatcher and workers
as child processes, and stops everything it started.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from api.config import ApiConfig
from hookstream.embedded import EmbeddedError, PostgresServer, RedisServer, free_port
from hookstream.migrate import migrate
from shared.examples import example_curl
from shared.settings import Settings

log = logging.getLogger("hookstream.run")


def data_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).resolve()


def postgres_dir(base: Path) -> Path:
    """As root, a folder the postgres user can enter (it cannot enter /root); else under `base`."""
    if os.geteuid() != 0:
        return base / "postgres"
    tag = hashlib.sha1(str(base).encode()).hexdigest()[:10]
    return Path("/var/tmp") / f"hookstream-postgres-{tag}"


def run_all(settings: Settings, api: ApiConfig, *, host: str, port: int, workers: int) -> int:
    env = dict(os.environ)  # the children's: the same variables, plus the embedded servers' URLs
    local_profile = settings.redis_url is None and not settings.redis_sentinels
    with ExitStack() as stack:
        try:
            if local_profile:
                redis = RedisServer(data_dir(settings) / "redis", port=free_port()).start()
                stack.callback(redis.stop)
                env["HOOKSTREAM_REDIS_URL"] = redis.url
                log.info("embedded redis-server on %s (data in %s)", redis.url, redis.data_dir)
            if settings.database_url is None:
                postgres = PostgresServer(postgres_dir(data_dir(settings)), port=free_port()).start()
                stack.callback(postgres.stop)
                env["HOOKSTREAM_DATABASE_URL"] = postgres.url
                log.info("embedded PostgreSQL on %s (data in %s)", postgres.url, postgres.data_dir)
        except EmbeddedError as exc:
            print(f"hookstream run: {exc}", file=sys.stderr)
            return 1
        applied = migrate(env["HOOKSTREAM_DATABASE_URL"])
        log.info("migrations applied: %s", ", ".join(applied) or "none (up to date)")
        ingress = ["ingress", "--host", host, "--port", str(port)] + (["--local-profile"] if local_profile else [])
        token = "(HOOKSTREAM_API_TOKENS)"
        if not api.tokens:  # a one-run token, printed below for the newcomer
            token = secrets.token_urlsafe(18)
            env["HOOKSTREAM_API_TOKENS"] = f"local:{token}"
        api_port = api.port
        commands = [ingress, ["dispatch"], ["worker", "-n", str(workers)],
                    ["api", "--host", host, "--port", str(api_port)]]
        children = [subprocess.Popen([sys.executable, "-m", "hookstream.cli", *c], env=env) for c in commands]
        stack.callback(stop_children, children)
        print(f"\nhookstream is running: ingress on http://{host}:{port}, {workers} worker(s). Try:\n\n"
              f"  {example_curl(port)}\n\nthen: psql {env['HOOKSTREAM_DATABASE_URL']} -c 'select * from events'\n"
              f"consent API and dashboard: http://{host}:{api_port}/ (token: {token})\n"
              "Ctrl-C stops everything.\n", flush=True)
        return _wait(children)


def _wait(children: list[subprocess.Popen[bytes]]) -> int:
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stopping:
        for child in children:
            if child.poll() is not None:
                log.error("a child process exited with code %s; stopping everything", child.returncode)
                return 1
        time.sleep(0.2)
    return 0


def stop_children(children: Iterable[subprocess.Popen[Any] | None], timeout_s: float = 20.0) -> None:
    """SIGTERM each child still running, then SIGKILL what is still there after `timeout_s` (the
    benchmarks stop their processes with it too)."""
    running = [c for c in children if c is not None and c.poll() is None]
    for child in running:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in running:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
