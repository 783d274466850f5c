"""`hookstream stats` and the deliverability_daily view, fed through the ingress and the workers."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from shared.display import UNSAFE, visible
from shared.reports import with_totals
from shared.settings import Settings
from tests.ops.conftest import Cli
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import gw_dlr, post, rows

pytestmark = pytest.mark.integration

COUNTS = ("delivered", "failed", "expired", "rejected", "sent", "queued", "unknown", "total")


@pytest.fixture
def today() -> date:
    """Today (UTC) when the test starts, not when the module was collected minutes before: the
    database counts by its own today, and a run may cross midnight."""
    return datetime.now(UTC).date()


def at(day: date, hour: int = 0, second: int = 5) -> datetime:
    return datetime.combine(day, time(hour, 0, second), tzinfo=UTC)


def smsmode(msg: str, value: str, sender: str, when: datetime | None) -> dict[str, Any]:
    """A REST status report: `from` is our sender, which becomes message_status.counterpart."""
    status = {"value": value} | ({"deliveryDate": when.isoformat()} if when else {})
    return {"messageId": msg, "direction": "MT", "from": sender, "recipient": {"to": "+33612345678"}, "status": status}


def gwapi(msg: int, msisdn: int, status: str, when: datetime) -> dict[str, Any]:
    return gw_dlr(status, int(when.timestamp()), msg=msg, msisdn=msisdn)


def counts(**values: int) -> dict[str, int]:
    return {k: values.get(k, 0) for k in COUNTS[:-1]} | {"total": sum(values.values())}


def send_history(client: TestClient, drain: Drain, today: date) -> None:
    yesterday = today - timedelta(days=1)
    reports = [
        ("/webhooks/smsmode/status", smsmode("m1", "SENT", "36034", at(today, second=1))),  # then delivered: once
        ("/webhooks/smsmode/status", smsmode("m1", "DELIVERED", "36034", at(today))),
        ("/webhooks/smsmode/status", smsmode("m2", "DELIVERED", "36034", at(today))),
        ("/webhooks/smsmode/status", smsmode("m3", "UNDELIVERED", "36034", at(today))),
        ("/webhooks/smsmode/status", smsmode("m4", "SENT", "36034", at(today))),
        ("/webhooks/smsmode/status", smsmode("m9", "SCHEDULED", "36034", None)),  # no provider time: receive day
        ("/webhooks/smsmode/status", smsmode("m5", "EXPIRED", "36034", at(yesterday, 12))),
        ("/webhooks/smsmode/status", smsmode("m6", "DELIVERED", "36034", at(yesterday, 12))),
        ("/webhooks/smsmode/status", smsmode("m7", "REJECTED", "INFO", at(today))),
        ("/webhooks/smsmode/status", smsmode("m8", "WEIRD", "INFO", at(today))),
        ("/webhooks/smsmode/status", smsmode("m10", "SENT", "NOFINAL", at(yesterday, 12))),
        ("/webhooks/gatewayapi", gwapi(100, 4587654321, "DELIVERED", at(today))),
        ("/webhooks/gatewayapi", gwapi(100, 4511111111, "UNDELIVERABLE", at(today))),  # same message, 2nd recipient
        ("/webhooks/gatewayapi", gwapi(101, 4587654321, "DELIVERED", at(today, second=9))),
        ("/webhooks/gatewayapi", gwapi(101, 4587654321, "ENROUTE", at(today))),  # late: never undoes delivered
        ("/webhooks/gatewayapi", gwapi(102, 4587654321, "DELIVERED", at(yesterday, 12))),
        ("/webhooks/gatewayapi", gwapi(103, 4587654321, "DELIVERED", at(today - timedelta(days=30), 12))),
    ]
    for path, body in reports:
        post(client, path, body)
    drain()


def expected(today: date) -> list[tuple[str, str, date, dict[str, int], float | None]]:
    """The view's rows for send_history: provider, then newest day first, then sender."""
    yesterday = today - timedelta(days=1)
    return [
        ("gatewayapi", "", today, counts(delivered=2, failed=1), 0.6667),
        ("gatewayapi", "", yesterday, counts(delivered=1), 1.0),
        ("smsmode", "36034", today, counts(delivered=2, failed=1, sent=1, queued=1), 0.6667),
        ("smsmode", "INFO", today, counts(rejected=1, unknown=1), 0.0),
        ("smsmode", "36034", yesterday, counts(delivered=1, expired=1), 0.5),
        ("smsmode", "NOFINAL", yesterday, counts(sent=1), None),
    ]


TOTALS = [
    ("gatewayapi", counts(delivered=3, failed=1), 0.75),
    ("smsmode", counts(delivered=3, failed=1, expired=1, rejected=1, sent=2, queued=1, unknown=1), 0.5),
]


def test_the_view_counts_messages_by_their_current_status(ingress_client: TestClient, drain: Drain,
                                                          db: psycopg.Connection, today: date) -> None:
    send_history(ingress_client, drain, today)
    assert rows(db, "SELECT count(*) AS n FROM events WHERE kind = 'status'")[0]["n"] == 17
    view = {(r["provider"], r["sender"], r["day"]): r for r in rows(db, "SELECT * FROM deliverability_daily")}
    assert len(view) == 7  # the six above and gatewayapi 30 days ago
    for provider, sender, day, want, rate in expected(today):
        row = view[(provider, sender, day)]
        assert {k: row[k] for k in COUNTS} == want
        assert row["delivery_rate"] is None if rate is None else round(row["delivery_rate"], 4) == Decimal(str(rate))
    assert view[("gatewayapi", "", today - timedelta(days=30))]["delivered"] == 1


def test_stats_json_rows_and_totals(ingress_client: TestClient, drain: Drain, settings: Settings,
                                    db: psycopg.Connection, cli: Cli, today: date) -> None:
    send_history(ingress_client, drain, today)
    code, out = cli(settings, "stats", "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["days"], report["provider"]) == (14, None)
    assert report["rows"] == [{"provider": p, "sender": s, "day": d.isoformat(), **c, "delivery_rate": r}
                              for p, s, d, c, r in expected(today)]
    assert report["totals"] == [{"provider": p, **c, "delivery_rate": r} for p, c, r in TOTALS]

    code, out = cli(settings, "stats", "--json", "--days", "1", "--provider", "smsmode")
    assert [(r["sender"], r["day"]) for r in json.loads(out)["rows"]] == [("36034", today.isoformat()),
                                                                          ("INFO", today.isoformat())]
    today_only = counts(delivered=2, failed=1, sent=1, queued=1, rejected=1, unknown=1)
    assert json.loads(out)["totals"] == [{"provider": "smsmode", **today_only, "delivery_rate": 0.5}]
    code, out = cli(settings, "stats", "--json", "--days", "30")  # today and the 29 days before: not 30 days ago
    assert json.loads(out)["totals"][0]["delivered"] == 3
    code, out = cli(settings, "stats", "--json", "--days", "31")
    assert json.loads(out)["totals"][0]["delivered"] == 4


def test_stats_table(ingress_client: TestClient, drain: Drain, settings: Settings, db: psycopg.Connection,
                     cli: Cli, today: date) -> None:
    send_history(ingress_client, drain, today)
    code, out = cli(settings, "stats")
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["provider", "sender", "day", *COUNTS, "rate"]
    assert lines[1] == ["gatewayapi", "-", today.isoformat(), "2", "1", "0", "0", "0", "0", "0", "3", "66.7%"]
    assert lines[3] == ["gatewayapi", "(total)", "3", "1", "0", "0", "0", "0", "0", "4", "75.0%"]
    assert lines[4] == ["smsmode", "36034", today.isoformat(), "2", "1", "0", "0", "1", "1", "0", "5", "66.7%"]
    assert lines[7] == ["smsmode", "NOFINAL", (today - timedelta(days=1)).isoformat(), "0", "0", "0", "0", "1", "0", "0", "1", "-"]
    assert lines[8] == ["smsmode", "(total)", "3", "1", "1", "1", "2", "1", "1", "10", "50.0%"]
    assert len(lines) == 9
    header_width = len(out.splitlines()[0])
    assert all(len(line) <= header_width for line in out.splitlines())  # numbers right-aligned under their heads

    code, out = cli(settings, "stats", "--provider", "nobody")
    assert (code, out.strip()) == (0, "no message statuses in the last 14 day(s)")


def test_a_senders_controls_are_escaped_in_the_table(ingress_client: TestClient, drain: Drain, settings: Settings,
                                                      cli: Cli, today: date) -> None:
    sender = "\x1b]0;pwned\x07\x1b[31mINFO\u202eevil\u2069\x9b"
    post(ingress_client, "/webhooks/smsmode/status", smsmode("m1", "DELIVERED", sender, at(today)))
    drain()
    code, out = cli(settings, "stats")
    assert code == 0 and not UNSAFE.search(out.replace("\n", ""))
    assert out.splitlines()[1].split()[:3] == ["smsmode", visible(sender), today.isoformat()]
    assert visible(sender) == "\\x1b]0;pwned\\x07\\x1b[31mINFO\\u202eevil\\u2069\\x9b"
    code, out = cli(settings, "stats", "--json")  # JSON escapes these itself (\u001b, \u202e)
    assert json.loads(out)["rows"][0]["sender"] == sender and not UNSAFE.search(out.replace("\n", ""))


def test_stats_reports_postgres_down(settings: Settings, cli: Cli, closed_port: int) -> None:
    broken = dataclasses.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{closed_port}/postgres")
    code, out = cli(broken, "stats")
    assert code == 1 and out.startswith("hookstream stats: postgres: ")


def test_days_must_be_positive(settings: Settings, cli: Cli) -> None:
    with pytest.raises(SystemExit):
        cli(settings, "stats", "--days", "0")


def test_totals_recompute_the_rate_from_counts() -> None:
    day = date(2025, 1, 1)
    base = dict.fromkeys(COUNTS, 0)
    rows_in = [{"provider": "cm", "sender": "a", "day": day, **base, "delivered": 1, "total": 1},
               {"provider": "cm", "sender": "b", "day": day, **base, "delivered": 1, "failed": 3, "total": 4}]
    out = with_totals(rows_in)
    assert [r["delivery_rate"] for r in out] == [1.0, 0.25, 0.4]  # 2 / 5, not the mean of 1.0 and 0.25
    assert out[-1]["sender"] is None and out[-1]["day"] is None and out[-1]["total"] == 5


def test_a_day_window_reads_the_index(db: psycopg.Connection) -> None:
    """The view's day filter is pushed below its GROUP BY onto the indexed expression."""
    db.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in db.execute(
        "EXPLAIN SELECT * FROM deliverability_daily WHERE day >= (now() AT TIME ZONE 'UTC')::date - 13"))
    assert "message_status_day" in plan
