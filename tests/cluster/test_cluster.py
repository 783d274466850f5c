"""hookstream on a Redis Cluster (three primaries, a replica each) with RQ on a plain queue Redis.

The real ingress app appends to three shards, one per primary; the dispatcher reads every shard
through its own group and the workers write to Postgres and acknowledge on each entry's shard:
every request answered 200 is committed exactly once. The status report, the metrics, a dry-run
replay and the consent change stream see the shards.
"""

from __future__ import annotations

import io
import json

import psycopg
import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient

from hookstream.embedded import RedisServer
from ingress.app import create_app
from shared import reports
from shared.shards import slot
from tests.cluster.conftest import Pipeline, cluster_settings
from tests.cluster.servers import RedisClusterGroup
from workers import publisher
from workers.context import normalize_context
from workers.normalize import normalize_entries
from workers.replay import Selection, replay

pytestmark = pytest.mark.integration

REQUESTS = 90


def cm_mo(i: int) -> bytes:
    text = ("STOP", "hello", "START")[i % 3]
    return json.dumps({"reference": f"cl-{i}", "from": f"+3161000{i % 7:04d}", "to": "3669", "body": text,
                       "groupings": ["", "", ""]}).encode()


def test_every_acknowledged_request_is_committed_once_across_the_shards(
        cluster: RedisClusterGroup, queue_server: RedisServer, database_url: str, db: psycopg.Connection,
        pipeline_of: type[Pipeline]) -> None:
    settings = cluster_settings(cluster, queue_server, database_url)
    pipeline = pipeline_of(settings)
    shards = pipeline.dispatcher.shards
    assert len(shards) == 3, "by default, one shard per primary"
    assert len({cluster.primary_of(s.stream) for s in shards}) == 3, "each shard on a primary of its own"
    assert [slot(s.stream) for s in shards] == [slot(s.inflight_key) for s in shards]

    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        for i in range(REQUESTS):
            response = client.post("/webhooks/cm/mo", content=cm_mo(i), headers={"content-type": "application/json"})
            assert response.status_code == 200, response.text
        assert client.get("/readyz").status_code == 200
    lengths = [int(pipeline.stream.xlen(s.stream)) for s in shards]
    assert sum(lengths) == REQUESTS and all(lengths), f"traffic lands on every shard: {lengths}"

    pipeline.drain()
    raw = pipeline.entries()
    expected = {e.dedupe_key for entry in normalize_entries(raw, normalize_context(settings)) for e in entry.events}
    keys = [row[0] for row in db.execute("SELECT dedupe_key FROM events")]
    assert len(keys) == len(set(keys)) == len(expected) == REQUESTS
    assert set(keys) == expected
    assert not db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]  # type: ignore[index]

    # What operators see: each shard and the total.
    report = reports.status(settings, pipeline.stream, db, queue_redis=pipeline.queue)
    assert not report["errors"], report["errors"]
    assert [s["stream_length"] for s in report["shards"]] == lengths
    assert (report["stream_length"], report["lag"], report["pending"]) == (REQUESTS, 0, 0)
    pipeline.dispatcher.observe_stream()
    text = generate_latest(pipeline.dispatcher.metrics.registry).decode()
    for shard in shards:
        assert f'hookstream_stream_length{{shard="{shard.label}"}} {float(lengths[shard.index])}' in text

    # A replay reads every shard; the consent change stream publishes on the cluster (WATCH + MULTI on one slot).
    summary = replay(pipeline.worker, Selection(), dry_run=True, out=io.StringIO())
    assert summary["entries"] == REQUESTS
    with psycopg.connect(database_url, autocommit=True) as conn:
        published = publisher.publish_pending(conn, pipeline.stream, settings)
    changes = db.execute("SELECT count(*) FROM consent_changes").fetchone()[0]  # type: ignore[index]
    assert published == changes > 0
    assert pipeline.stream.xlen(publisher.stream_key(settings)) == changes
