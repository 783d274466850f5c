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

from hookstream import api, consent_cli, dead_letters, stats, status
from shared import logs
from shared.errors import ConfigError
from shared.settings import PROVIDERS, Settings

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
    applied = migrate(settings.database_url_or_default(), settings.archive_retention_s, settings.events_retention_s)
    log.info("migrations applied: %s", ", ".join(applied) or "none (up to date)")
    return 0


def cmd_dispatch(settings: Settings, args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from shared.connections import dispatcher_redis
    from workers.dispatch import Dispatcher
    from workers.metrics import DispatchMetrics, serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    redis = dispatcher_redis(settings)
    metrics = DispatchMetrics(CollectorRegistry())
    serve(args.metrics_port, metrics.registry)
    Dispatcher(settings, redis, metrics=metrics).run(stop)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    # Before anything imports prometheus_client: every worker process writes its metrics to files
    # in this folder, and this process serves their sum.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        folder = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hookstream-metrics-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    from workers.metrics import serve
    from workers.worker import run_workers

    serve(args.metrics_port)
    return run_workers(settings, processes=args.processes or settings.workers or 1, burst=args.burst)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from shared.errors import ParseError
    from shared.times import parse_moment
    from workers.context import WorkerContext
    from workers.replay import Selection, replay

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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hookstream", description="Webhook ingestion pipeline for SMS providers.")
    sub = top.add_subparsers(dest="command", required=True)
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
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (0: none)")
    p.set_defaults(handler=cmd_dispatch)

    p = sub.add_parser("worker", help="process batches (RQ workers)")
    p.add_argument("-n", "--processes", type=int, help="worker processes (HOOKSTREAM_WORKERS, default 1)")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (0: none)")
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("replay", help="re-process part of the raw stream (or archive) through the current code")
    p.add_argument("--since",
                   help="ISO-8601 time (UTC without an offset), today, yesterday, or an age: 90m, 2h, 7d, 1w")
    p.add_argument("--until", help="the same forms as --since (exclusive)")
    p.add_argument("--from-id", help="first stream id (inclusive)")
    p.add_argument("--to-id", help="last stream id (inclusive)")
    p.add_argument("--provider", choices=PROVIDERS)
    p.add_argument("--feed")
    p.add_argument("--from-archive", action="store_true", help="read the Postgres raw archive, not the stream")
    p.add_argument("--dry-run", action="store_true", help="count what would change, write nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_replay)

    # Each command module adds its own subcommand.
    for command in (status, dead_letters, stats, api, consent_cli):
        command.register(sub)

    p = sub.add_parser("run", help="run everything; embedded Redis and Postgres when no URLs are set")
    p.add_argument("--host", help="ingress listen address (HOOKSTREAM_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="ingress port (HOOKSTREAM_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (HOOKSTREAM_WORKERS, default 2)")
    p.set_defaults(handler=cmd_run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"hookstream: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, mask=not settings.log_phones)
    if getattr(args, "metrics_port", 0) is None:
        args.metrics_port = settings.worker_metrics_port if args.command == "worker" else settings.dispatch_metrics_port
    return int(args.handler(settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
