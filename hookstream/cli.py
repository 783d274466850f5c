"""The `hookstream` command: one subcommand per process, settings from the environment."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import psycopg
import redis.exceptions

from hookstream import api, consent_cli, dead_letters, local_state, message, send_test, stats, status
from shared import logs
from shared.errors import ConfigError
from shared.reports import first_line
from shared.settings import PROVIDERS, Settings
from shared.times import MOMENT_FORMS

log = logging.getLogger("hookstream")


def cmd_ingress(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from ingress.app import create_app

    if args.local_profile:
        settings = dataclasses.replace(settings, local_profile=True)
    app = create_app(settings, freeze_gc=True)
    # proxy_headers off: the ingress does its own trusted-proxy walk. Access log off: query strings
    # carry phone numbers and texts.
    host, port = args.host or settings.host or "0.0.0.0", args.port or settings.port
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", proxy_headers=False,
                access_log=False, server_header=False, log_config=None, timeout_graceful_shutdown=10)
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from hookstream.migrate import migrate, plan

    if args.plan:
        print("\n".join(plan(settings.database_url_or_default(), settings.archive_retention_s,
                              settings.events_retention_s)))
        return 0
    applied = migrate(settings.database_url_or_default(), settings.archive_retention_s, settings.events_retention_s,
                      status_history_retention_s=settings.status_history_retention_s)
    log.info("migrations applied: %s", ", ".join(applied) or "none (up to date)")
    return 0


def cmd_dispatch(settings: Settings, args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from shared.connections import Role, dispatcher_redis, queue_client
    from workers.dispatch import Dispatcher
    from workers.metrics import DispatchMetrics, serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    redis = dispatcher_redis(settings)
    metrics = DispatchMetrics(CollectorRegistry())
    serve(args.metrics_port, metrics.registry, settings.metrics_allowed_ips)
    Dispatcher(settings, redis, queue_redis=queue_client(settings, Role.DISPATCHER, redis), metrics=metrics).run(stop)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    # Before anything imports prometheus_client: every worker process writes its metrics to files
    # in this folder, and this process serves their sum.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        folder = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hookstream-metrics-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    from workers.metrics import serve
    from workers.worker import run_workers

    serve(args.metrics_port, allowed=settings.metrics_allowed_ips)
    return run_workers(settings, processes=args.processes or settings.workers or 1, burst=args.burst)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from shared.errors import ParseError
    from shared.times import parse_moment
    from workers.context import WorkerContext
    from workers.replay import Selection, replay

    if not (args.all or args.since or args.until or args.from_id or args.to_id):
        print("hookstream replay: no range given: that would re-process the whole stream (or archive)."
              " Give --since/--until or --from-id/--to-id, or --all to mean it", file=sys.stderr)
        return 2
    try:
        selection = Selection(
            since=parse_moment(args.since) if args.since else None,
            until=parse_moment(args.until) if args.until else None,
            from_id=args.from_id, to_id=args.to_id, provider=args.provider, feed=args.feed,
        )
    except ParseError as exc:
        print(f"hookstream replay: {exc}", file=sys.stderr)
        return 2
    ctx = WorkerContext.open(settings)
    try:
        summary = replay(ctx, selection, from_archive=args.from_archive, dry_run=args.dry_run)
    finally:
        ctx.close()
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        width = max(len(name) for name in summary)
        print("\n".join(f"{name.replace('_', ' '):<{width}}  {value}" for name, value in summary.items()))
    return 1 if summary["failed_jobs"] else 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from api.config import ApiConfig
    from hookstream.run import run_all

    try:
        api = ApiConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"hookstream run: configuration error: {exc}", file=sys.stderr)
        return 2
    return run_all(settings, api, host=args.host or settings.host or "127.0.0.1", port=args.port or settings.port,
                   workers=args.workers or settings.workers or 2)


# The variables each command reads, shown under its --help. Every command also reads the logging
# ones; a secret variable may instead name a file (HOOKSTREAM_<NAME>_FILE).
CONNECTIONS = ("HOOKSTREAM_REDIS_URL, HOOKSTREAM_DATABASE_URL (unset: the running `make run`'s servers, found"
               " through HOOKSTREAM_DATA_DIR, default .data), HOOKSTREAM_REDIS_SENTINELS,"
               " HOOKSTREAM_REDIS_SENTINEL_SERVICE, HOOKSTREAM_KEY_PREFIX")
LOGGING = "HOOKSTREAM_LOG_LEVEL, HOOKSTREAM_LOG_PHONES"
VARIABLES = {
    "ingress": "HOOKSTREAM_REDIS_URL, HOOKSTREAM_REDIS_SENTINELS, HOOKSTREAM_KEY_PREFIX, HOOKSTREAM_HOST,"
               " HOOKSTREAM_PORT, HOOKSTREAM_<P>_ALLOWED_IPS, HOOKSTREAM_<P>_TOKEN (P: CM, SMSMODE, MX2,"
               " GATEWAYAPI), HOOKSTREAM_TRUSTED_PROXIES, HOOKSTREAM_GATEWAYAPI_SECRET,"
               " HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET, HOOKSTREAM_GATEWAYAPI_FALLBACK_IPS,"
               " HOOKSTREAM_GATEWAYAPI_DNS_REFRESH, HOOKSTREAM_METRICS_ALLOWED_IPS, HOOKSTREAM_MAX_BODY_BYTES,"
               " HOOKSTREAM_APPEND_REPLICAS, HOOKSTREAM_APPEND_REPLICA_TIMEOUT_MS, HOOKSTREAM_STREAM_RETENTION",
    "migrate": "HOOKSTREAM_DATABASE_URL, HOOKSTREAM_ARCHIVE_RETENTION, HOOKSTREAM_EVENTS_RETENTION",
    "dispatch": f"{CONNECTIONS}, HOOKSTREAM_DISPATCH_METRICS_PORT, HOOKSTREAM_METRICS_ALLOWED_IPS,"
                " HOOKSTREAM_BATCH_SIZE, HOOKSTREAM_BATCH_WAIT_MS, HOOKSTREAM_MAX_INFLIGHT_BATCHES,"
                " HOOKSTREAM_VISIBILITY_TIMEOUT, HOOKSTREAM_JOB_TIMEOUT, HOOKSTREAM_MAX_DELIVERIES,"
                " HOOKSTREAM_STREAM_RETENTION and the retention variables of its chores",
    "worker": f"{CONNECTIONS}, HOOKSTREAM_WORKERS, HOOKSTREAM_WORKER_METRICS_PORT, HOOKSTREAM_METRICS_ALLOWED_IPS,"
              " HOOKSTREAM_PG_POOL_SIZE, HOOKSTREAM_DEFAULT_REGION, HOOKSTREAM_GATEWAYAPI_KEYWORDS,"
              " HOOKSTREAM_JOB_TIMEOUT, HOOKSTREAM_RESULT_TTL, HOOKSTREAM_FAILURE_TTL, HOOKSTREAM_DEDUPE_HORIZON",
    "replay": f"{CONNECTIONS}, HOOKSTREAM_BATCH_SIZE (page size), HOOKSTREAM_MAX_INFLIGHT_BATCHES,"
              " HOOKSTREAM_JOB_TIMEOUT",
    "status": CONNECTIONS,
    "dead-letters": CONNECTIONS,
    "stats": f"{CONNECTIONS}, HOOKSTREAM_DATABASE_READ_URL",
    "api": "HOOKSTREAM_API_TOKENS (required), HOOKSTREAM_API_HOST, HOOKSTREAM_API_PORT, HOOKSTREAM_API_PG_POOL_SIZE,"
           " HOOKSTREAM_DASHBOARD_SECRET, HOOKSTREAM_DASHBOARD_COOKIE_SECURE, HOOKSTREAM_DATABASE_URL,"
           " HOOKSTREAM_DATABASE_READ_URL, HOOKSTREAM_REDIS_URL, HOOKSTREAM_PORT (the ingress's, for the dashboard)",
    "send-test": "HOOKSTREAM_PORT (the ingress's), HOOKSTREAM_<P>_TOKEN, HOOKSTREAM_GATEWAYAPI_SECRET,"
                 " HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET, HOOKSTREAM_TRUSTED_PROXIES (to send CM's address in"
                 " X-Forwarded-For)",
    "run": "everything the other commands read; without HOOKSTREAM_REDIS_URL / HOOKSTREAM_DATABASE_URL it starts"
           " its own servers: HOOKSTREAM_DATA_DIR (default .data) holds their data, the state file local.json"
           " (ports, passwords, token: kept across restarts), secrets/, logs/ and banner.txt",
}


def _describe(command: str, p: argparse.ArgumentParser) -> None:
    p.epilog = (f"Reads {VARIABLES.get(command, CONNECTIONS)}; and {LOGGING}. A secret variable may instead"
                " name a file: HOOKSTREAM_<NAME>_FILE.")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hookstream", description="Webhook ingestion pipeline for SMS providers.",
        epilog="`make run` starts everything locally; the other commands then find its servers by themselves."
               " `hookstream COMMAND --help` lists a command's options and the variables it reads.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Options left out are the settings' (HOOKSTREAM_HOST, HOOKSTREAM_PORT, HOOKSTREAM_WORKERS), read
    # in main with the rest; then each command's own default.
    p = sub.add_parser("ingress", help="serve the webhook endpoints (needs only Redis)")
    p.add_argument("--host", help="listen address (HOOKSTREAM_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (HOOKSTREAM_PORT, default 8000)")
    p.add_argument("--local-profile", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_ingress)

    p = sub.add_parser("migrate", help="apply the Postgres migrations (and convert events online)")
    p.add_argument("--plan", action="store_true", help="print what it would do, change nothing")
    p.set_defaults(handler=cmd_migrate)
    p = sub.add_parser("dispatch", help="read the stream and enqueue batches")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port (HOOKSTREAM_DISPATCH_METRICS_PORT, default 9102; 0: none)")
    p.set_defaults(handler=cmd_dispatch)

    p = sub.add_parser("worker", help="process batches (RQ workers)")
    p.add_argument("-n", "--processes", type=int, help="worker processes (HOOKSTREAM_WORKERS, default 1)")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port (HOOKSTREAM_WORKER_METRICS_PORT, default 9101; 0: none)")
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("replay", help="re-process part of the raw stream (or archive) through the current code")
    p.add_argument("--since", help=f"from this time (inclusive): {MOMENT_FORMS}")
    p.add_argument("--until", help="to this time (exclusive): the same forms as --since")
    p.add_argument("--from-id", help="first stream id (inclusive), such as 1717200000000-0")
    p.add_argument("--to-id", help="last stream id (inclusive)")
    p.add_argument("--all", action="store_true", help="replay everything: needed when no range is given")
    p.add_argument("--provider", choices=PROVIDERS, help="only this provider's entries")
    p.add_argument("--feed", help="only this feed (mo, status, events, rest, webhook: the route's last part)")
    p.add_argument("--from-archive", action="store_true", help="read the Postgres raw archive, not the stream")
    p.add_argument("--dry-run", action="store_true", help="count what would change, write nothing")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(handler=cmd_replay)

    # Each command module adds its own subcommand.
    for command in (status, dead_letters, stats, api, send_test, consent_cli, message):
        command.register(sub)

    p = sub.add_parser("run", help="run everything; embedded Redis and Postgres when no URLs are set")
    p.add_argument("--host", help="ingress and API listen address (HOOKSTREAM_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="ingress port (HOOKSTREAM_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (HOOKSTREAM_WORKERS, default 2)")
    p.set_defaults(handler=cmd_run)
    for name, command_parser in sub.choices.items():
        _describe(name, command_parser)
    return top


NEEDS_SERVERS = frozenset({"dispatch", "worker", "replay", "status", "dead-letters", "stats", "api", "migrate",
                           "message"})


def find_local_profile(command: str, environ: dict[str, str] | os._Environ[str]) -> Path | None:
    """With no URL set, a command uses the running `make run`'s servers: their URLs go into
    `environ` (the command's own, never printed). Returns the data folder they came from."""
    if command not in NEEDS_SERVERS:
        return None
    found, folder = local_state.discover(environ, Path.cwd(), Path(sys.prefix))
    environ.update(found)
    return folder if found else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    found = find_local_profile(args.command, os.environ)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"hookstream: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, mask=not settings.log_phones)
    if getattr(args, "metrics_port", 0) is None:
        args.metrics_port = settings.worker_metrics_port if args.command == "worker" else settings.dispatch_metrics_port
    try:
        code = int(args.handler(settings, args) or 0)
    except (redis.exceptions.ConnectionError, psycopg.OperationalError) as exc:
        # A server that does not answer is a line and a hint, never a traceback.
        print(f"hookstream {args.command}: {first_line(exc)}", file=sys.stderr)
        code = 1
    if code == 1 and found is None and args.command in NEEDS_SERVERS and not any(
            local_state.url_is_set(os.environ, name) for name in local_state.URL_VARIABLES):
        print(f"hookstream {args.command}: {local_state.hint(os.environ, Path.cwd(), Path(sys.prefix))}",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
