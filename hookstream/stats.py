"""`hookstream stats [--days 14] [--provider P] [--json]`: deliverability per provider, sender and day.

Reads the `deliverability_daily` view (migration 003) through `shared.reports`, as the dashboard does: it
counts messages by their CURRENT status (message_status: one row per message and recipient), not status
reports: a message reported sent then delivered counts once, as delivered. Days are UTC dates, the window
is today and the `days - 1` before it by the database's clock. Each provider's rows come newest day
first, then a total row for the provider whose rate is recomputed from the summed counts (never an
average of daily rates).

delivery_rate = delivered / (delivered + failed + expired + rejected): messages still in flight
(sent, queued) do not lower it; null ("-") when nothing is final yet.
"""

from __future__ import annotations

import argparse
import json
from datetime import date

import psycopg

from shared import connections
from shared.display import visible
from shared.reports import COUNTS, Row, deliverability, with_totals
from shared.settings import Settings


def to_json(rows: list[Row], days: int, provider: str | None) -> str:
    """{"days", "provider", "rows": [...], "totals": [...]}: rows and totals are split, days as YYYY-MM-DD."""
    shaped = [{**r, "day": r["day"].isoformat() if isinstance(r["day"], date) else None} for r in with_totals(rows)]
    return json.dumps({"days": days, "provider": provider,
                       "rows": [r for r in shaped if r["day"] is not None],
                       "totals": [{k: v for k, v in r.items() if k not in ("sender", "day")}
                                  for r in shaped if r["day"] is None]}, indent=2)


def format_table(rows: list[Row], days: int) -> str:
    """Aligned columns; a sender the provider does not tell shows as "-", the provider's total as "(total)".
    Senders come from the providers' reports: shown through `visible`, measured after escaping."""
    if not rows:
        return f"no message statuses in the last {days} day(s)"
    head = ("provider", "sender", "day", *COUNTS, "rate")
    cells = [head] + [(visible(r["provider"]), visible(r["sender"] or "-") if r["day"] is not None else "(total)",
                       r["day"].isoformat() if r["day"] is not None else "",
                       *(str(r[k]) for k in COUNTS),
                       "-" if r["delivery_rate"] is None else f"{r['delivery_rate'] * 100:.1f}%")
                      for r in with_totals(rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    left = 3  # provider, sender, day are text; the numbers align right
    return "\n".join("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in cells)


def fetch(database_url: str, days: int, provider: str | None) -> list[Row]:
    with connections.connect(database_url, connections.Role.CLI) as conn:
        return deliverability(conn, days, provider)


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    try:
        rows = fetch(settings.database_read_url_or_default(), args.days, args.provider)  # a replica, if set
    except psycopg.Error as exc:
        print(f"hookstream stats: postgres: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
        return 1
    print(to_json(rows, args.days, args.provider) if args.json else format_table(rows, args.days))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--days must be at least 1")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("stats", help="deliverability per provider, sender and day")
    p.add_argument("--days", type=_positive, default=14, help="today and the days before it (UTC), default 14")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--json", action="store_true", help="machine-readable: rows and per-provider totals")
    p.set_defaults(handler=cmd_stats)
