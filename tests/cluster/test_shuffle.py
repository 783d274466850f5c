"""Order does not matter: the same traffic through three shards in a shuffled order, and through the
single stream in order, ends in the same rows.

The invariant (written where the ingress picks a shard, ingress/appender.py): events are keyed, a
message's status only moves forward by the provider's time, consent is ordered by the event's time.
The traffic is every provider's mix over a dozen people and messages, so that statuses of one
message and replies of one person land on different shards and are committed out of order. The
records keep their receive times (as stored by the ingress at the time), so only the order and the
shards differ; stream ids and the rows' own bookkeeping times are left out of the comparison.

What is compared: every event, every message's status, and each person's consent state. Not
compared, because they record the order in which changes were applied, with one stream as with
several workers: `consent_changes` (an opt-in older than an opt-out already applied adds no row, so
the history of a person who wrote STOP and START depends on which arrived first), and in `consent`
when the current state began (`changed_at`) and which event is named as its cause. Each run's
history still ends in its consent.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg
import pytest
import redis

import bench.payloads
from bench.payloads import records
from hookstream.embedded import RedisServer
from ingress.appender import Appender
from shared import connections
from shared.record import RawRecord
from shared.settings import Settings
from tests.cluster.conftest import Pipeline, cluster_settings
from tests.cluster.servers import RedisClusterGroup
from tests.conftest import empty_tables

pytestmark = pytest.mark.integration

RECORDS = 900
TABLES = {  # table: its order, the columns compared (None: all but ids, stream ids and bookkeeping times)
    "events": ("dedupe_key", None),
    "message_status": ("provider, message_ref, recipient", None),
    "consent": ("subject, scope", ("subject", "scope", "state")),
}
IGNORED = {"id", "stream_id", "created_at", "updated_at"}


def final_rows(db: psycopg.Connection) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for table, (order, columns) in TABLES.items():
        cur = db.cursor(row_factory=psycopg.rows.dict_row)
        rows = cur.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()  # type: ignore[arg-type]
        out[table] = [{k: v for k, v in row.items() if (k in columns if columns else k not in IGNORED)}
                      for row in rows]
    return out


def history_ends_in_consent(db: psycopg.Connection) -> bool:
    """Each person's latest consent change (by event time) left the state that `consent` holds."""
    return not db.execute(
        "SELECT 1 FROM consent c JOIN LATERAL (SELECT new_state FROM consent_changes h WHERE h.subject = c.subject"
        " AND h.scope = c.scope ORDER BY occurred_at DESC, received_at DESC LIMIT 1) last ON true"
        " WHERE last.new_state <> c.state LIMIT 1").fetchone()


def append_in_order(client: redis.Redis, stream: str, traffic: list[RawRecord]) -> None:
    pipe = client.pipeline(transaction=False)
    for record in traffic:
        pipe.xadd(stream, record.to_fields())  # type: ignore[arg-type]
    pipe.execute()


async def append_through_the_ingress_appender(settings: Settings, traffic: list[RawRecord]) -> None:
    """As the ingress does: coalesced round trips, each to the next shard in turn."""
    client = connections.ingress_redis(settings)
    shards = await connections.stream_shards_async(settings, client)
    appender = Appender(client, [s.stream for s in shards], cluster=True)
    try:
        for start in range(0, len(traffic), 25):
            await asyncio.gather(*(appender.append(r.to_fields()) for r in traffic[start:start + 25]))
    finally:
        await appender.close()
        await client.aclose()


def test_shuffled_over_three_shards_the_rows_are_those_of_one_stream_in_order(
        cluster: RedisClusterGroup, queue_server: RedisServer, redis_url: str, database_url: str,
        redis_client: redis.Redis, db: psycopg.Connection, pipeline_of: type[Pipeline],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.payloads, "PEOPLE", 12)  # a dozen people: every number recurs
    traffic = list(records(RECORDS, seed=23))

    single = Settings.from_env({"HOOKSTREAM_REDIS_URL": redis_url, "HOOKSTREAM_DATABASE_URL": database_url,
                                "HOOKSTREAM_BATCH_SIZE": "50", "HOOKSTREAM_VISIBILITY_TIMEOUT": "1"})
    one = pipeline_of(single)
    assert len(one.dispatcher.shards) == 1
    append_in_order(redis_client, single.stream, traffic)
    one.drain()
    in_order = final_rows(db)
    assert len(in_order["events"]) > RECORDS // 2 and len(in_order["consent"]) > 10, "the traffic does something"
    assert history_ends_in_consent(db)

    empty_tables(db)
    sharded = cluster_settings(cluster, queue_server, database_url, HOOKSTREAM_STREAM_SHARDS="3")
    three = pipeline_of(sharded)
    shuffled = traffic[:]
    random.Random(5).shuffle(shuffled)
    asyncio.run(append_through_the_ingress_appender(sharded, shuffled))
    assert all(three.stream.xlen(s.stream) for s in three.dispatcher.shards)
    three.drain()
    shuffled_rows = final_rows(db)
    for table in TABLES:
        assert shuffled_rows[table] == in_order[table], table
    assert history_ends_in_consent(db)
