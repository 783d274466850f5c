"""`hookstream message show PROVIDER REF` (a message's delivery timeline) and `hookstream message search`
(by message id, phone number, provider and time range). The queries and their reading are
shared.timeline's, as the API's and the dashboard's.

Exit status 0 with an answer, 1 when nothing matched (or the input is wrong), 2 when Postgres cannot
be reached.
"""

from __future__ import annotations

import argparse
import sys

import orjson
import psycopg

from shared import connections, timeline
from shared.settings import PROVIDERS, Settings
from shared.times import MOMENT_FORMS


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    try:
        with connections.connect(settings.database_read_url_or_default(), connections.Role.CLI) as conn:
            found = conn.execute(timeline.TIMELINE_SQL, (args.provider, args.ref)).fetchall()
    except psycopg.OperationalError as exc:
        print(f"hookstream message show: postgres unavailable: {type(exc).__name__}", file=sys.stderr)
        return 2
    steps = timeline.timeline(timeline.reports(found))
    if args.json:
        print(orjson.dumps({"provider": args.provider, "message_ref": args.ref,
                            "statuses": [timeline.step_json(step) for step in steps]}).decode())
    elif not steps:
        print(f"no status report of {args.provider} message {args.ref!r}", file=sys.stderr)
    else:
        recipient = None
        for step in steps:
            if step.report.recipient != recipient:
                recipient = step.report.recipient
                print(f"{args.provider} {args.ref} to {recipient or '(recipient not given)'}:"
                      "  provider time / received / status / reason / provider's words / outcome")
            print(timeline.step_line(step))
    return 0 if steps else 1


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    try:
        wanted = timeline.search_of(ref=args.ref, phone=args.phone, provider=args.provider, since=args.since,
                                    until=args.until, limit=args.limit, cursor=args.cursor,
                                    default_region=settings.default_region, providers=PROVIDERS)
        sql, params = timeline.search_sql(wanted)
    except timeline.BadQuery as exc:
        print(f"hookstream message search: {exc}", file=sys.stderr)
        return 1
    try:
        with connections.connect(settings.database_read_url_or_default(), connections.Role.CLI) as conn:
            found = conn.execute(sql, params).fetchall()
    except psycopg.OperationalError as exc:
        print(f"hookstream message search: postgres unavailable: {type(exc).__name__}", file=sys.stderr)
        return 2
    items, following = timeline.page(found, args.limit)
    if args.json:
        print(orjson.dumps({"messages": items, "next": following, "has_more": following is not None}).decode())
        return 0
    for item in items:
        print(f"{item['received_at']}  {item['provider']:10} {item['message_ref']}  {item['recipient'] or '-'}"
              f"  {item['status']} {item['reason'] or ''}".rstrip())
    if following:
        print(f"more: --cursor {following}")
    return 0 if items else 1


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= timeline.MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"not a whole number from 1 to {timeline.MAX_LIMIT}: {text!r}")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("message", help="one message's delivery timeline, or search messages")
    sub = p.add_subparsers(dest="message_command", required=True)
    s = sub.add_parser("show", help="every status report of a message, which one is current and why")
    s.add_argument("provider", choices=PROVIDERS, help="the provider that sent the message")
    s.add_argument("ref", help="the provider's message id")
    s.add_argument("--json", action="store_true", help="machine-readable, as the API answers")
    s.set_defaults(handler=cmd_show)
    f = sub.add_parser("search", help="messages by id, phone number, provider and time, newest first")
    f.add_argument("--ref", help="the provider's message id")
    f.add_argument("--phone", help="a phone number in any notation (parsed as the ingress does)")
    f.add_argument("--provider", choices=PROVIDERS, help="only this provider's messages")
    f.add_argument("--since", help=f"received from this time: {MOMENT_FORMS}")
    f.add_argument("--until", help="received before this time: the same forms")
    f.add_argument("--limit", type=_limit, default=50, help=f"rows per page, 1 to {timeline.MAX_LIMIT} (default 50)")
    f.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    f.add_argument("--json", action="store_true", help="machine-readable, as the API answers")
    f.set_defaults(handler=cmd_search)
