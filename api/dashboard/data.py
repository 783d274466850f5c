"""What the dashboard shows, read from Postgres and Redis: one function per section, each returning
plain JSON-ready dicts. The page, its partials and its JSON endpoints all render these.

Sources (the README's "Dashboard", "What it shows" says the same for operators):

- Flow, the operational numbers: `shared.reports.status`, the report `hookstream status --json`
  prints, read by the same function, so the numbers are the same.
- Flow, the per-minute chart: events and dead letters per minute of `received_at` (our receive
  time at the ingress) over the last 60 minutes, by provider and outcome. The outcome is what the
  request became in Postgres: an event of kind `inbound`, `status`, `event` or `consent`, or a
  `dead_letter` (one that was not requeued). These are rows, not HTTP requests: a request that is
  refused at the ingress (403/401/413/503) stores nothing and is not here (Grafana has those).
- Deliverability: the view `deliverability_daily` through `shared.reports.deliverability` (current
  status per message, so a message counts once), totals and rates by `shared.reports`, as `hookstream stats`.
- Consent: `consent_changes` per UTC day of `occurred_at` (the person's time), by new state; the
  review queue is the view `consent_review`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from redis import Redis

from shared import reports
from shared.display import render_bytes
from shared.reports import first_line
from shared.settings import Settings

Row = dict[str, Any]
Conn = psycopg.Connection[Any]

FLOW_MINUTES = 60
DAYS = 14
OUTCOMES = ("inbound", "status", "event", "consent", "dead_letter")
FINAL = reports.FINAL  # delivered, failed, expired, rejected
REVIEW_SHOWN = 50
DEAD_LETTERS_SHOWN = 5

WINDOW_SQL = "SELECT date_trunc('minute', now()) - make_interval(mins => %s) AS start, now() AS now"
# events_received_at (received_at) serves the range; dead letters are few (an index on last_seen only).
# date_bin (PostgreSQL 14+) on the window's own whole-minute origin: the same minutes as date_trunc,
# without its time-zone arithmetic per row.
FLOW_SQL = """
SELECT provider, kind AS outcome, date_bin('1 minute', received_at, %(start)s) AS minute, count(*) AS n
FROM events WHERE received_at >= %(start)s
GROUP BY 1, 2, 3
UNION ALL
SELECT coalesce(provider, 'unknown'), 'dead_letter', date_bin('1 minute', coalesce(received_at, first_seen), %(start)s),
       count(*)
FROM dead_letters WHERE coalesce(received_at, first_seen) >= %(start)s AND requeued_at IS NULL
GROUP BY 1, 2, 3
"""
# What the flow section shows of the newest dead letters (read by shared.reports.dead_letter_list).
NEWEST_DEAD_KEYS = ("id", "provider", "feed", "reason", "attempts")
TODAY_SQL = "SELECT (now() AT TIME ZONE 'UTC')::date AS today"
CONSENT_SQL = """
SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, new_state, count(*) AS n
FROM consent_changes
WHERE occurred_at >= (((now() AT TIME ZONE 'UTC')::date - (%(days)s::int - 1))::timestamp AT TIME ZONE 'UTC')
GROUP BY 1, 2
"""
REVIEW_SQL = """
SELECT id, event_key, provider, subject, scope, body, keyword, occurred_at, received_at
FROM consent_review ORDER BY id LIMIT %s
"""
REVIEW_COUNT_SQL = "SELECT count(*) FROM consent_review"


# -- Flow -----------------------------------------------------------------------------------------


def minute_series(rows: Iterable[Row], start: datetime, minutes: int = FLOW_MINUTES) -> dict[str, Any]:
    """Per-minute counts shaped for the charts: every minute of the window (zeros included), one
    series per (provider, outcome), providers and outcomes in a fixed order. Pure."""
    labels = [start + timedelta(minutes=i) for i in range(minutes)]
    index = {minute: i for i, minute in enumerate(labels)}
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * minutes)
    for row in rows:
        i = index.get(row["minute"])
        if i is not None:  # a receive time past now (clock skew) falls outside the window
            counts[(row["provider"], row["outcome"])][i] += int(row["n"])
    order = {o: i for i, o in enumerate(OUTCOMES)}
    providers = sorted({p for p, _ in counts})
    series = [{"provider": p, "outcome": o, "values": v, "total": sum(v)}
              for (p, o), v in sorted(counts.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1]))]
    return {"minutes": [m.isoformat() for m in labels], "providers": providers, "series": series,
            "total": sum(s["total"] for s in series)}


def flow(settings: Settings, redis: Redis, conn: Conn | None, pg_error: str | None = None, *,
         queue_redis: Redis | None = None) -> dict[str, Any]:
    report = reports.status(settings, redis, conn, pg_error, queue_redis=queue_redis)
    out: dict[str, Any] = {"status": report, "per_minute": None, "dead_letters": None, "errors": list(report["errors"])}
    if conn is None or any(e.startswith("postgres:") for e in report["errors"]):
        return out
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            window = cur.execute(WINDOW_SQL, (FLOW_MINUTES - 1,)).fetchone()
            assert window is not None
            rows = cur.execute(FLOW_SQL, {"start": window["start"]}).fetchall()
        newest = reports.dead_letter_list(conn, DEAD_LETTERS_SHOWN)
    except psycopg.Error as exc:
        out["errors"].append(f"postgres: {first_line(exc)}")
        return out
    out["per_minute"] = minute_series(rows, window["start"])
    out["dead_letters"] = {"count": report["dead_letters"],
                           "newest": [{**{k: r[k] for k in NEWEST_DEAD_KEYS}, "last_seen": r["last_seen"].isoformat()}
                                      for r in newest]}
    return out


def no_traffic(flow_data: dict[str, Any]) -> bool:
    """Nothing ever arrived that we can see: an empty stream, no events or dead letters this hour."""
    report = flow_data["status"]
    per_minute = flow_data["per_minute"]
    return (report["stream_length"] in (0, None) and per_minute is not None and per_minute["total"] == 0
            and not report["dead_letters"])


# -- Deliverability -------------------------------------------------------------------------------


def statuses_seen(flow_data: dict[str, Any]) -> bool:
    """Whether Flow counted status reports in its last hour."""
    per_minute = flow_data.get("per_minute")
    return per_minute is not None and any(s["outcome"] == "status" and s["total"] for s in per_minute["series"])


def no_reports(deliverability_data: dict[str, Any]) -> bool:
    """Whether the deliverability section says "No delivery reports" (read without an error)."""
    return not deliverability_data.get("errors") and deliverability_data.get("total") == 0


def day_range(today: date, days: int = DAYS) -> list[date]:
    return [today - timedelta(days=days - 1 - i) for i in range(days)]


def shape_deliverability(rows: list[Row], today: date, days: int = DAYS) -> dict[str, Any]:
    """Rows of `deliverability_daily` (provider, sender, day, counts) → totals per provider, per
    (provider, sender), and per provider and day for the chart. Rates as `hookstream stats`. Pure."""
    labels = day_range(today, days)
    index = {d: i for i, d in enumerate(labels)}
    counts = [*reports.COUNTS]
    providers: list[Row] = [
        {k: v for k, v in r.items() if k not in ("sender", "day")}
        for r in reports.with_totals(rows) if r["day"] is None]
    senders: dict[tuple[str, str], Row] = {}
    daily: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        key = (row["provider"], row["sender"])
        acc = senders.setdefault(key, {"provider": row["provider"], "sender": row["sender"],
                                       **dict.fromkeys(counts, 0)})
        for k in counts:
            acc[k] += int(row[k])
        per = daily.setdefault(row["provider"], {k: [0] * days for k in FINAL})
        i = index.get(row["day"])
        if i is not None:
            for k in FINAL:
                per[k][i] += int(row[k])
    by_sender = [{**s, "delivery_rate": reports.delivery_rate(s)} for s in senders.values()]
    by_sender.sort(key=lambda s: (s["provider"], -s["total"], s["sender"]))
    return {"days": [d.isoformat() for d in labels], "by_provider": providers, "by_sender": by_sender,
            "daily": [{"provider": p, **series} for p, series in sorted(daily.items())],
            "total": sum(p["total"] for p in providers)}


def deliverability(conn: Conn, days: int = DAYS) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        today = cur.execute(TODAY_SQL).fetchone()["today"]  # type: ignore[index]
    return shape_deliverability(reports.deliverability(conn, days), today, days)


# -- Consent --------------------------------------------------------------------------------------


def shape_consent(rows: Iterable[Row], today: date, days: int = DAYS) -> dict[str, Any]:
    labels = day_range(today, days)
    index = {d: i for i, d in enumerate(labels)}
    out = {"opted_out": [0] * days, "opted_in": [0] * days}
    for row in rows:
        i = index.get(row["day"])
        if i is not None and row["new_state"] in out:
            out[row["new_state"]][i] += int(row["n"])
    return {"days": [d.isoformat() for d in labels], "opt_outs": out["opted_out"], "opt_ins": out["opted_in"],
            "total_opt_outs": sum(out["opted_out"]), "total_opt_ins": sum(out["opted_in"])}


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def review_queue(conn: Conn, limit: int = REVIEW_SHOWN) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        items = cur.execute(REVIEW_SQL, (limit,)).fetchall()
        count = cur.execute(REVIEW_COUNT_SQL).fetchone()["count"]  # type: ignore[index]
    return {"count": count, "items": [
        {**item, "occurred_at": iso(item["occurred_at"]), "received_at": iso(item["received_at"]),
         "can_opt_out": bool(item["subject"] and item["scope"])} for item in items]}


def consent(conn: Conn, days: int = DAYS) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        today = cur.execute(TODAY_SQL).fetchone()["today"]  # type: ignore[index]
        rows = cur.execute(CONSENT_SQL, {"days": days}).fetchall()
    return {**shape_consent(rows, today, days), "review": review_queue(conn)}


# -- Dead letters (the details page) -------------------------------------------------------------


def dead_letter_list(conn: Conn, limit: int = 100) -> list[Row]:
    return reports.dead_letter_list(conn, limit)


def dead_letter(conn: Conn, letter_id: int) -> Row | None:
    """One dead letter, its query and body as the CLI's `show` prints them: text escaped, or hex."""
    row = reports.dead_letter(conn, letter_id)
    if row is None:
        return None
    for name in ("query", "body"):
        kind, shown = render_bytes(bytes(row[name]))
        row[name] = {"kind": kind, "text": shown, "size": len(row[name])}
    return row


# -- Chart specifications (drawn by static/dashboard.js) -------------------------------------------


def flow_charts(per_minute: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One stacked-bar chart per provider: its outcomes per minute. Pure."""
    if not per_minute:
        return []
    charts = []
    for provider in per_minute["providers"]:
        series = [{"name": s["outcome"], "cls": f"o-{s['outcome']}", "values": s["values"]}
                  for s in per_minute["series"] if s["provider"] == provider]
        charts.append({"provider": provider, "spec": {"kind": "stacked", "format": "time",
                                                       "labels": per_minute["minutes"], "series": series}})
    return charts


def deliverability_charts(section: dict[str, Any]) -> list[dict[str, Any]]:
    """One stacked-bar chart per provider: final statuses per day. Pure."""
    return [{"provider": d["provider"],
             "spec": {"kind": "stacked", "format": "day", "labels": section["days"],
                      "series": [{"name": k, "cls": f"d-{k}", "values": d[k]} for k in FINAL]}}
            for d in section.get("daily", [])]


def consent_chart(section: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "grouped", "format": "day", "labels": section.get("days", []),
            "series": [{"name": "opt-outs", "cls": "c-opt_out", "values": section.get("opt_outs", [])},
                       {"name": "opt-ins", "cls": "c-opt_in", "values": section.get("opt_ins", [])}]}
