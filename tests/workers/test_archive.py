"""The raw archive's partitions: made ahead by day, dropped whole after the retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from workers.archive import DAYS_AHEAD, LIST_SQL, maintain, partition_name, plan

TODAY = date(2026, 12, 1)


def test_plan_makes_the_coming_days_and_drops_the_expired_ones() -> None:
    existing = {partition_name(TODAY - timedelta(days=n)) for n in range(40)} | {"raw_archive_default"}
    create, drop = plan(existing, TODAY, retention_days=30)
    assert create == [TODAY + timedelta(days=n) for n in range(1, DAYS_AHEAD + 1)]
    assert drop == sorted(partition_name(TODAY - timedelta(days=n)) for n in range(31, 40))
    assert plan(existing | {partition_name(d) for d in create}, TODAY, 30)[0] == []


@pytest.mark.integration
def test_maintain_on_a_real_database(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        now = datetime.now(UTC)
        maintain(conn, 30 * 86400, now)  # migrate already did this: nothing new
        assert maintain(conn, 30 * 86400, now) == (0, 0)
        names = {row[0] for row in conn.execute(LIST_SQL)}
        assert partition_name(now.date()) in names and partition_name(now.date() + timedelta(days=DAYS_AHEAD)) in names
        later = now + timedelta(days=40)
        created, dropped = maintain(conn, 30 * 86400, later)
        assert created > 0 and dropped > 0
        names = {row[0] for row in conn.execute(LIST_SQL)}
        assert partition_name(now.date()) not in names and partition_name(later.date()) in names
        maintain(conn, 30 * 86400, now)  # put today's partitions back for the tests that follow
        assert partition_name(now.date()) in {row[0] for row in conn.execute(LIST_SQL)}
