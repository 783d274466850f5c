"""The outbound Redis stream: each committed change exactly once, in commit order, whatever dies."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.feed import Position
from shared.settings import Settings
from tests.api.feedutil import insert_change
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, post
from workers import publisher
from workers.publisher import cursor_key, publish_pending, stream_key

pytestmark = pytest.mark.integration
FIELDS = {"v", "change_id", "event_id", "subject", "scope", "old_state", "new_state", "outcome", "keyword", "provider",
          "occurred_at", "received_at", "decided_by"}


def published(redis_client: redis.Redis, settings: Settings) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in redis_client.xrange(stream_key(settings))]


def ids(records: list[dict[str, str]]) -> list[int]:
    return [int(r["change_id"]) for r in records]


def test_pipeline_changes_are_published_once_with_the_documented_format(
        ingress_client: Any, drain: Drain, settings: Settings, redis_client: redis.Redis, database_url: str) -> None:
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("STOP", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("START", ref="b"), "timeUtc": "2025-09-03T09:00:00"})
    drain()
    with psycopg.connect(database_url) as conn:
        assert publish_pending(conn, redis_client, settings) == 2
        assert publish_pending(conn, redis_client, settings) == 0
    stop, start = published(redis_client, settings)
    assert set(stop) == FIELDS
    assert (stop["v"], stop["subject"], stop["scope"], stop["old_state"], stop["new_state"], stop["outcome"]) == (
        "1", "+31612345678", "3669", "", "opted_out", "opt_out")
    assert (stop["keyword"], stop["provider"], stop["occurred_at"], stop["decided_by"]) == (
        "stop", "cm", "2025-09-03T08:00:00Z", "")
    assert stop["event_id"].startswith("cm:inbound:") and stop["received_at"].endswith("Z")
    assert (start["old_state"], start["new_state"]) == ("opted_out", "opted_in")
    assert Position.decode(redis_client.get(cursor_key(settings))).id == int(start["change_id"])


def test_a_publisher_that_dies_before_publishing_loses_nothing(settings: Settings, redis_client: redis.Redis,
                                                               database_url: str, clean: psycopg.Connection) -> None:
    insert_change(clean, "k1")  # committed; the publisher that should have sent it "died" (was never called)
    with psycopg.connect(database_url) as conn:
        assert publish_pending(conn, redis_client, settings) == 1
        assert publish_pending(conn, redis_client, settings) == 0
    assert [r["event_id"] for r in published(redis_client, settings)] == ["k1"]


class DiesAtExec:
    """A Redis client whose first MULTI/EXEC is lost: the publisher crashed between read and publish."""

    def __init__(self, real: redis.Redis) -> None:
        self.real = real
        self.failed = False

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self.real.pipeline(transaction=transaction)
        execute = pipe.execute

        def dying_execute(*args: Any, **kwargs: Any) -> Any:
            if not self.failed:
                self.failed = True
                pipe.reset()
                raise RedisConnectionError("connection lost")
            return execute(*args, **kwargs)

        pipe.execute = dying_execute  # type: ignore[method-assign]
        return pipe


def test_a_crash_between_reading_and_publishing_publishes_once_later(
        settings: Settings, redis_client: redis.Redis, database_url: str, clean: psycopg.Connection) -> None:
    insert_change(clean, "k1")
    insert_change(clean, "k2")
    dying = DiesAtExec(redis_client)
    with psycopg.connect(database_url) as conn:
        with pytest.raises(RedisConnectionError):
            publish_pending(conn, dying, settings)  # type: ignore[arg-type]
        assert published(redis_client, settings) == [] and redis_client.get(cursor_key(settings)) is None
        assert publish_pending(conn, redis_client, settings) == 2
        again = publish_pending(conn, redis_client, settings)
    table = clean.execute("SELECT id, txid::text, event_key FROM consent_changes ORDER BY id").fetchall()
    assert [r["event_id"] for r in published(redis_client, settings)] == ["k1", "k2"], table
    assert again == 0, table


def test_a_publisher_that_loses_the_race_publishes_nothing_twice(
        settings: Settings, redis_client: redis.Redis, redis_url: str, database_url: str, clean: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        insert_change(clean, f"k{i}")
    real_read = publisher.read_committed
    other = redis.Redis.from_url(redis_url)
    calls = {"n": 0}

    def read_then_let_the_other_publish(conn: Any, after: Position, limit: int) -> Any:
        calls["n"] += 1
        changes = real_read(conn, after, limit)
        if calls["n"] == 1:  # between our WATCH/read and our EXEC, another publisher publishes everything
            with psycopg.connect(database_url) as theirs:
                assert publish_pending(theirs, other, settings) == 5
        return changes

    monkeypatch.setattr(publisher, "read_committed", read_then_let_the_other_publish)
    with psycopg.connect(database_url) as conn:
        assert publish_pending(conn, redis_client, settings) == 0  # its EXEC failed; re-read found nothing new
    other.close()
    assert calls["n"] == 3  # ours, the other's, ours again after the WATCH failed
    assert [r["event_id"] for r in published(redis_client, settings)] == [f"k{i}" for i in range(5)]


def test_two_publishers_racing_publish_each_change_once_in_commit_order(
        settings: Settings, redis_url: str, redis_client: redis.Redis, database_url: str,
        clean: psycopg.Connection) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def publish_loop() -> None:
        try:
            with psycopg.connect(database_url) as conn, redis.Redis.from_url(redis_url) as client:
                while not stop.is_set():
                    publish_pending(conn, client, settings, limit=7)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def write_loop(worker: int) -> None:
        with psycopg.connect(database_url) as conn:
            for i in range(60):
                insert_change(conn, f"w{worker}-{i}", subject=f"+3161234{worker}{i:03d}")
                if i % 3 == 2:
                    conn.commit()  # transactions of 1–3 changes, two writers interleaving
            conn.commit()

    publishers = [threading.Thread(target=publish_loop) for _ in range(2)]
    writers = [threading.Thread(target=write_loop, args=(w,)) for w in range(2)]
    for thread in publishers + writers:
        thread.start()
    for thread in writers:
        thread.join(60)
    time.sleep(0.2)  # the racing publishers catch up with the last commits
    stop.set()
    for thread in publishers:
        thread.join(60)
    assert not errors, errors
    with psycopg.connect(database_url) as conn:  # alone now: a call that lost every race returned 0
        while publish_pending(conn, redis_client, settings):
            pass
    records = ids(published(redis_client, settings))
    in_commit_order = [row[0] for row in clean.execute("SELECT id FROM consent_changes ORDER BY txid, id")]
    assert len(in_commit_order) == 120
    assert len(records) == len(set(records)), "a change was published twice"
    assert records == in_commit_order  # each once, none missing, in commit order


def test_a_change_committed_out_of_order_is_not_skipped(settings: Settings, redis_client: redis.Redis,
                                                        database_url: str, clean: psycopg.Connection) -> None:
    with psycopg.connect(database_url) as reader, psycopg.connect(database_url) as first, \
            psycopg.connect(database_url) as second:
        early = insert_change(first, "k-early")
        late = insert_change(second, "k-late", subject="+4587654321")
        second.commit()
        assert publish_pending(reader, redis_client, settings) == 0  # `late` waits for the older transaction
        first.commit()
        assert publish_pending(reader, redis_client, settings) == 2
    assert ids(published(redis_client, settings)) == [early, late]


def test_retention_is_approximate_maxlen(settings: Settings, redis_client: redis.Redis, database_url: str,
                                         clean: psycopg.Connection) -> None:
    with clean.cursor() as cur:
        cur.execute("INSERT INTO consent_changes (event_key, subject, scope, new_state, outcome, provider, occurred_at,"
                    " received_at) SELECT 'k' || i, '+3161234' || i, '3669', 'opted_out', 'opt_out', 'cm', now(), now()"
                    " FROM generate_series(1, 600) AS i")
    with psycopg.connect(database_url) as conn:
        while publish_pending(conn, redis_client, settings, limit=100, maxlen=50):
            pass
    length = redis_client.xlen(stream_key(settings))
    assert 50 <= length < 600
    assert Position.decode(redis_client.get(cursor_key(settings))).id == 600


def test_a_garbled_cursor_is_an_error_not_a_restart(settings: Settings, redis_client: redis.Redis,
                                                    database_url: str, clean: psycopg.Connection) -> None:
    insert_change(clean, "k1")
    redis_client.set(cursor_key(settings), "garbage")
    with psycopg.connect(database_url) as conn, pytest.raises(ValueError, match="not a feed position"):
        publish_pending(conn, redis_client, settings)
    assert published(redis_client, settings) == []
