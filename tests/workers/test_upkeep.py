"""The dispatcher's upkeep: the scheduler on a fake clock, the trim rule as a pure function, then the
chores against real Redis and PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import time

import psycopg
import pytest
import redis

from hookstream.embedded import free_port
from shared.settings import Settings
from tests.workers.test_dispatch import append
from workers.dispatch import Dispatcher
from workers.upkeep import (
    ARCHIVE_EVERY_S,
    EVENTS_PARTITIONS_EVERY_S,
    EVIDENCE_RETENTION_EVERY_S,
    FLOW_HISTORY_EVERY_S,
    KEYS_RETENTION_EVERY_S,
    PUBLISH_EVERY_S,
    RECEIPT_EXPIRY_EVERY_S,
    STATUS_RETENTION_EVERY_S,
    TRIM_EVERY_S,
    ConsentFeed,
    Row,
    Schedule,
    Upkeep,
    table,
    trim,
    trim_cutoff,
    trim_floor,
)

integration = pytest.mark.integration


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Calls:
    """Tasks that note their name when they run."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def task(self, name: str, *, fails: bool = False) -> object:
        def run() -> None:
            self.ran.append(name)
            if fails:
                raise ConnectionError(name)

        return run


# -- the scheduler ---------------------------------------------------------------------------------------


def test_every_row_is_due_at_once_and_runs_in_table_order() -> None:
    calls = Calls()
    schedule = Schedule([Row(1.0, calls.task("a")), Row(60.0, calls.task("b")), Row(3600.0, calls.task("c"))],
                        FakeClock(0.0))  # a monotonic clock may start near 0
    assert schedule.run_due() == 3
    assert calls.ran == ["a", "b", "c"]


def test_a_row_runs_again_once_its_interval_has_passed() -> None:
    calls, clock = Calls(), FakeClock(100.0)
    schedule = Schedule([Row(1.0, calls.task("often")), Row(60.0, calls.task("rarely"))], clock)
    schedule.run_due()
    ran = {}
    for clock.now in (100.5, 101.0, 101.9, 102.0, 159.9, 160.0):
        calls.ran.clear()
        schedule.run_due()
        ran[clock.now] = list(calls.ran)
    assert ran == {100.5: [], 101.0: ["often"], 101.9: [], 102.0: ["often"], 159.9: ["often"],
                   160.0: ["rarely"]}, "intervals count from a row's last run, not on a grid"


def test_a_failing_task_waits_its_interval_and_the_rows_after_it_run_next_turn() -> None:
    calls, clock = Calls(), FakeClock(0.0)
    schedule = Schedule([Row(10.0, calls.task("fails", fails=True)), Row(10.0, calls.task("next"))], clock)
    with pytest.raises(ConnectionError):
        schedule.run_due()
    assert calls.ran == ["fails"]
    clock.now = 0.1
    assert schedule.run_due() == 1 and calls.ran == ["fails", "next"], "not retried at every turn of the loop"
    clock.now = 10.0
    with pytest.raises(ConnectionError):
        schedule.run_due()


def test_the_table_of_the_dispatcher() -> None:
    calls = Calls()
    reclaim, observe = calls.task("reclaim"), calls.task("observe")
    settings = Settings(visibility_timeout_s=60)
    rows = table(settings, redis.Redis(), ConsentFeed(settings, redis.Redis()), reclaim=reclaim, observe=observe)
    assert [row.every_s for row in rows] == [15.0, 15.0, TRIM_EVERY_S, PUBLISH_EVERY_S, ARCHIVE_EVERY_S,
                                             EVENTS_PARTITIONS_EVERY_S, EVENTS_PARTITIONS_EVERY_S,
                                             KEYS_RETENTION_EVERY_S,
                                             STATUS_RETENTION_EVERY_S, EVIDENCE_RETENTION_EVERY_S,
                                             RECEIPT_EXPIRY_EVERY_S, FLOW_HISTORY_EVERY_S]
    assert rows[0].task is reclaim and rows[1].task is observe
    short = table(dataclasses.replace(settings, visibility_timeout_s=1), redis.Redis(),
                  ConsentFeed(settings, redis.Redis()), reclaim=reclaim, observe=observe)
    assert short[0].every_s == 1.0, "at most one reclaim a second"


# -- the trim rule ---------------------------------------------------------------------------------------


def test_the_retention_edge_when_every_group_is_past_it() -> None:
    assert trim_floor(100_000, 60, [("90000-3", None)]) == "40000-0"


def test_entries_never_read_stay() -> None:
    assert trim_floor(100_000, 60, [("30000-3", None)]) == "30000-4"


def test_the_oldest_pending_entry_stays_and_every_group_counts() -> None:
    assert trim_floor(100_000, 60, [("90000-0", "35000-2"), ("95000-0", None)]) == "35000-2"
    assert trim_floor(100_000, 60, [("90000-0", None), ("20000-7", None)]) == "20000-8"


# -- against Redis and PostgreSQL ------------------------------------------------------------------------


@integration
def test_trimming_keeps_every_unacknowledged_entry(settings: Settings, redis_client: redis.Redis) -> None:
    settings = dataclasses.replace(settings, stream_retention_s=1)
    dispatcher = Dispatcher(settings, redis_client, name="t")
    dispatcher.ensure_group()
    old = append(redis_client, settings, 3)
    read = dispatcher.read_batch(first_block_ms=1)
    redis_client.xack(settings.stream, settings.group, read[0])  # the first is done, two are pending
    new = append(redis_client, settings, 2)  # never read yet
    time.sleep(1.1)
    assert trim_cutoff(redis_client, settings, now_ms()) == old[1], "the oldest pending entry bounds the trim"
    trim(redis_client, settings)
    left = [sid.decode() for sid, _ in redis_client.xrange(settings.stream)]
    assert set(old[1:] + new) <= set(left)
    redis_client.xack(settings.stream, settings.group, *read[1:])
    cutoff = trim_cutoff(redis_client, settings, now_ms())
    assert cutoff is not None and id_tuple(cutoff) <= id_tuple(new[0]), "entries never read are kept too"
    dispatcher.read_batch(first_block_ms=1)
    redis_client.xack(settings.stream, settings.group, *new)
    time.sleep(1.1)
    cutoff = trim_cutoff(redis_client, settings, now_ms())
    assert cutoff is not None and id_tuple(cutoff) > id_tuple(new[-1]), "all done and old: all may go"


@integration
def test_no_group_no_trim(settings: Settings, redis_client: redis.Redis) -> None:
    append(redis_client, settings, 2)
    assert trim_cutoff(redis_client, settings, now_ms()) is None and trim(redis_client, settings) == 0


@integration
def test_upkeep_runs_every_chore_on_its_own_clock(settings: Settings, redis_client: redis.Redis,
                                                  db: psycopg.Connection) -> None:
    Dispatcher(settings, redis_client).ensure_group()
    calls, clock = Calls(), FakeClock(0.0)
    with Upkeep(settings, redis_client, reclaim=calls.task("reclaim"), observe=calls.task("observe"),
                clock=clock) as upkeep:
        assert upkeep.run_due() == 12, "the trim, the consent feed, partitions and retention run for real"
        assert upkeep.feed._database is not None and not upkeep.feed._database.closed
        assert upkeep.retention._database is not None and not upkeep.retention._database.closed
        ran = {}
        for clock.now in (0.5, 1.0, TRIM_EVERY_S, ARCHIVE_EVERY_S):
            ran[clock.now] = upkeep.run_due()
    assert upkeep.feed._database is None, "closing the upkeep closes the feed's connection"
    assert upkeep.retention._database is None, "and the retention's"
    # at 1.0 and at the trim's minute: reclaim, observe, the feed, the keys' retention (every 15 s)
    assert ran == {0.5: 0, 1.0: 3, TRIM_EVERY_S: 6, ARCHIVE_EVERY_S: 11}
    assert calls.ran.count("reclaim") == calls.ran.count("observe") == 4


def test_the_consent_feed_waits_out_postgres_trouble(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    feed = ConsentFeed(settings, redis.Redis())
    with caplog.at_level(logging.WARNING, "hookstream.upkeep"):
        assert feed.publish() == 0
        assert feed.publish() == 0, "tried again at the next round"
    assert [r.getMessage() for r in caplog.records] == ["consent feed: postgres unavailable (OperationalError),"
                                                        " will retry"] * 2
    feed.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)
