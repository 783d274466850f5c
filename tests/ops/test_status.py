"""`hookstream status` against real Redis, RQ and Postgres: its numbers are the servers' numbers."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import psycopg
import pytest
import redis
from rq import SimpleWorker
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from shared import reports
from shared.settings import Settings
from tests.ops.conftest import Cli
from tests.workers.conftest import Drain, run_workers
from tests.workers.test_pipeline import cm_mo, post, rows
from workers import jobs
from workers.dispatch import Dispatcher, make_queue

pytestmark = pytest.mark.integration


def report_of(cli: Cli, settings: Settings) -> tuple[int, dict[str, Any]]:
    code, out = cli(settings, "status", "--json")
    return code, json.loads(out)


def table_of(cli: Cli, settings: Settings) -> tuple[int, dict[str, str]]:
    """The text table as {label: value}, labels and values split on the alignment gap."""
    code, out = cli(settings, "status")
    pairs = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines()]
    return code, {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def test_before_anything_exists_everything_is_zero(settings: Settings, redis_client: redis.Redis,
                                                   db: psycopg.Connection, cli: Cli) -> None:
    code, report = report_of(cli, settings)
    assert code == 0
    assert list(report) == list(reports.KEYS)
    assert report == {
        "stream": "hookstream:raw", "stream_length": 0, "stream_oldest_age_s": None, "group": "hookstream:workers",
        "group_exists": False, "lag": 0, "pending": 0, "pending_oldest_age_s": None, "pending_oldest_idle_s": None,
        "queue": "hookstream", "queue_depth": 0, "replay_queue": "hookstream-replay", "replay_queue_depth": 0,
        "workers": 0, "failed_jobs": 0, "dead_letters": 0, "events_per_minute": {}, "window_s": 300, "errors": [],
        "shards": [{"shard": 0, "stream": "hookstream:raw", "stream_length": 0, "stream_oldest_age_s": None,
                    "group_exists": False, "lag": 0, "pending": 0, "pending_oldest_age_s": None,
                    "pending_oldest_idle_s": None}],
    }
    code, table = table_of(cli, settings)
    assert code == 0
    assert table["consumer group"] == "hookstream:workers (not created yet)"
    assert table["lag (not read yet)"] == "0" and table["oldest entry age"] == "-"


def test_a_stream_without_its_group_counts_every_entry_as_lag(ingress_client: TestClient, settings: Settings,
                                                              redis_client: redis.Redis, db: psycopg.Connection,
                                                              cli: Cli) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello", ref="2"))
    _, report = report_of(cli, settings)
    assert (report["group_exists"], report["stream_length"], report["lag"], report["pending"]) == (False, 2, 2, 0)
    Dispatcher(settings, redis_client).ensure_group()  # at id 0: both entries are still to be read
    _, report = report_of(cli, settings)
    assert (report["group_exists"], report["lag"]) == (True, 2)


def test_numbers_match_the_servers_with_a_backlog_a_queued_batch_and_a_failed_job(
    ingress_client: TestClient, drain: Drain, dispatcher: Dispatcher, settings: Settings, redis_client: redis.Redis,
    db: psycopg.Connection, cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for ref in "abc":
        post(ingress_client, "/webhooks/cm/mo", cm_mo("hello", ref=ref))
    post(ingress_client, "/webhooks/mx2", b"garbage")
    drain()  # 3 events, 1 dead letter

    for ref in "de":  # a batch whose job fails: its entries stay pending, the job is in the failed registry
        post(ingress_client, "/webhooks/cm/mo", cm_mo("hello", ref=ref))
    assert len(failing := dispatcher.read_batch(first_block_ms=1)) == 2
    dispatcher.enqueue(failing)

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("postgres said no")

    monkeypatch.setattr(jobs, "run_batch", broken)
    run_workers(settings, redis_client)
    monkeypatch.undo()

    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello", ref="f"))  # read and queued, no worker ran yet
    dispatcher.enqueue(dispatcher.read_batch(first_block_ms=1))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello", ref="g"))  # not read at all

    worker = SimpleWorker([settings.queue, settings.replay_queue], connection=redis_client, serializer=JSONSerializer)
    worker.register_birth()
    try:
        code, report = report_of(cli, settings)
        table_code, table = table_of(cli, settings)
    finally:
        worker.register_death()

    pending = redis_client.xpending(settings.stream, settings.group)
    failed = FailedJobRegistry(queue=make_queue(settings.queue, redis_client))
    assert (code, table_code, report["errors"]) == (0, 0, [])
    assert report["stream_length"] == redis_client.xlen(settings.stream) == 8
    assert report["lag"] == 1
    assert report["pending"] == pending["pending"] == 3
    assert report["queue_depth"] == 1 and report["replay_queue_depth"] == 0
    assert report["workers"] == 1
    assert report["failed_jobs"] == failed.get_job_count(cleanup=False) == 1
    dead = rows(db, "SELECT count(*) AS n FROM dead_letters WHERE requeued_at IS NULL")[0]["n"]
    assert report["dead_letters"] == dead == 1
    recent = rows(db, "SELECT count(*) AS n FROM events WHERE received_at > now() - interval '5 minutes'")[0]["n"]
    assert recent == 3 and report["events_per_minute"] == {"cm": 0.6}
    assert 0 <= report["pending_oldest_age_s"] <= report["stream_oldest_age_s"] < 60
    assert 0 <= report["pending_oldest_idle_s"] < 60
    [oldest] = redis_client.xpending_range(settings.stream, settings.group, min="-", max="+", count=1)
    assert oldest["message_id"].decode() == failing[0]

    assert table["length"] == "8" and table["lag (not read yet)"] == "1" and table["pending (not acked)"] == "3"
    assert table["hookstream"] == "1" and table["hookstream-replay"] == "0"
    assert table["workers"] == "1" and table["failed jobs"] == "1" and table["dead letters (not requeued)"] == "1"
    assert table["cm"] == "0.6"
    assert re.fullmatch(r"[\d.]+ s \(idle [\d.]+ s\)", table["oldest pending age"])


def test_postgres_unreachable_is_reported_with_the_redis_half(ingress_client: TestClient, settings: Settings,
                                                              redis_client: redis.Redis, cli: Cli,
                                                              closed_port: int) -> None:
    post(ingress_client, "/webhooks/cm/mo", cm_mo("hello"))
    broken = dataclasses.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{closed_port}/postgres")
    code, report = report_of(cli, broken)
    assert code == 1
    assert report["stream_length"] == 1 and report["lag"] == 1
    assert report["dead_letters"] is None and report["events_per_minute"] is None
    [error] = report["errors"]
    assert error.startswith("postgres: ") and str(closed_port) in error
    code, out = cli(broken, "status")
    assert code == 1 and "errors" in out and "postgres: " in out
    assert out.splitlines()[0].split() == ["stream", "hookstream:raw"] and len(out.splitlines()[0]) < 50
    assert re.search(r"dead letters \(not requeued\)\s+\?", out)


def test_redis_unreachable_is_reported_with_the_postgres_half(settings: Settings, db: psycopg.Connection, cli: Cli,
                                                              closed_port: int) -> None:
    broken = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{closed_port}/0")
    code, report = report_of(cli, broken)
    assert code == 1
    assert report["stream_length"] is None and report["pending"] is None and report["dead_letters"] == 0
    [error] = report["errors"]
    assert error.startswith("redis: ")
    code, table = table_of(cli, broken)
    assert code == 1 and table["length"] == "?" and table["oldest entry age"] == "?"
