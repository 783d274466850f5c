"""`hookstream dead-letters list|show|requeue|purge`: look at, retry and clean up dead letters.

Shared filters: `list <filters>` shows what requeue/purge would touch (requeued rows are handled: hidden
unless --include-requeued). requeue appends each raw record as a NEW stream entry, receive time kept, so the
pipeline runs again (with several shards, each batch of rows goes to the next shard in turn); a row gets
`requeued_at` only once Redis took its XADD, in the transaction holding its lock (SKIP LOCKED). Rows without
provider/feed are skipped. purge: nothing without --yes, nor without --all.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from redis import Redis
from redis.exceptions import RedisError

from shared import connections, reports
from shared.display import render_bytes, visible
from shared.errors import ParseError
from shared.record import RawRecord
from shared.settings import Settings
from shared.times import parse_moment

BATCH = 500
WHEN = "ISO-8601 (UTC without an offset), today, yesterday, or an age: 90m, 2h, 7d, 1w"
Row = dict[str, Any]
Conn = psycopg.Connection[Row]


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """`--since`/`--until`: the shared command-line time (`parse_moment`), its refusal told the argparse way."""
    try:
        return parse_moment(text, now)
    except ParseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def where(args: argparse.Namespace) -> tuple[str, list[Any]]:
    """The WHERE clause of the filters (IDs, provider, feed, reason, since/until, requeued state)."""
    clauses = [] if args.include_requeued else [f"requeued_at IS {'NOT ' if args.only_requeued else ''}NULL"]
    picked = [(clause, value) for clause, value in (
        ("id = ANY(%s)", list(getattr(args, "ids", None) or ()) or None), ("provider = %s", args.provider),
        ("feed = %s", args.feed), ("strpos(lower(reason), lower(%s)) > 0", args.reason),
        ("last_seen >= %s", args.since), ("last_seen < %s", args.until)) if value is not None]
    return " AND ".join(clauses + [c for c, _ in picked]) or "TRUE", [v for _, v in picked]


def record_from_row(row: Row) -> RawRecord | None:
    """The raw record as the ingress stored it, or None when the row never was a record."""
    if not row["provider"] or not row["feed"]:
        return None
    received_ms = round((row["received_at"] or row["first_seen"]).timestamp() * 1000)
    return RawRecord(provider=row["provider"], feed=row["feed"], method=row["method"] or "POST",
                     query=bytes(row["query"]), content_type=row["content_type"] or "", headers=row["headers"] or {},
                     client=row["client"] or "", received_at_ms=received_ms, body=bytes(row["body"]))


def format_list(found: list[Row], total: int) -> str:
    """One line per dead letter; the text columns through `visible` (a reason may quote the provider)."""
    line = "{:>7}  {:19}  {:24}  {:>5}  {:8}  {}".format
    lines = [line("id", "last seen (UTC)", "provider/feed", "tries", "requeued", "reason")]
    lines += [line(r["id"], f"{r['last_seen'].astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                   visible(f"{r['provider'] or '-'}/{r['feed'] or '-'}"), r["attempts"],
                   "yes" if r["requeued_at"] else "", visible((r["reason"] or "")[:80])) for r in found]
    return "\n".join(lines + [f"{total} dead letter(s) match, {len(found)} shown"])


def format_show(row: Row) -> str:
    """Every field on a line of its own through `visible`, the headers as one line of JSON; then the query
    and the body (`render_bytes`)."""
    keys = "id stream_id provider feed method reason attempts received_at first_seen last_seen requeued_at client"
    lines = [f"{k}: {visible(str(row[k]))}" for k in (*keys.split(), "content_type")]
    lines.append("headers: " + visible(orjson.dumps(row["headers"], option=orjson.OPT_SORT_KEYS).decode()))
    for name in ("query", "body"):
        kind, shown = render_bytes(bytes(row[name]))
        lines += [f"{name} ({kind}, {len(row[name])} bytes):", shown]
    return "\n".join(lines)


def requeue(conn: Conn, redis: Redis, stream: str | Sequence[str], args: argparse.Namespace) -> Counter[str]:
    """Batches of rows, each: lock → XADD in one pipeline to one stream (the shards in turn) → mark
    those Redis took → commit."""
    (clause, params), counts, last = where(args), Counter(requeued=0, skipped=0, failed=0), 0
    streams = [stream] if isinstance(stream, str) else list(stream)
    turn = 0
    while True:
        target = streams[turn % len(streams)]
        turn += 1
        with conn.transaction():
            rows = conn.execute(f"SELECT * FROM dead_letters WHERE {clause} AND id > %s ORDER BY id LIMIT %s"
                                " FOR UPDATE SKIP LOCKED", [*params, last, BATCH]).fetchall()
            if not rows:
                return counts
            last = rows[-1]["id"]
            todo = [(row["id"], rec) for row in rows if (rec := record_from_row(row)) is not None]
            skipped = sorted({row["id"] for row in rows} - {i for i, _ in todo})
            results: list[Any] = [None] * len(todo)
            if todo and not args.dry_run:
                pipe = redis.pipeline(transaction=False)
                for _, rec in todo:
                    pipe.xadd(target, rec.to_fields())
                try:
                    results = pipe.execute(raise_on_error=False)
                except RedisError as exc:  # nothing is known to be in the stream: mark nothing
                    results = [exc] * len(todo)
                done = [i for (i, _), res in zip(todo, results) if not isinstance(res, Exception)]
                conn.execute("UPDATE dead_letters SET requeued_at = now() WHERE id = ANY(%s)", (done,))
        for i in skipped:
            print(f"dead letter {i}: not a hookstream record (no provider/feed), cannot be requeued: skipped")
        failed = [str(res) for res in results if isinstance(res, Exception)]
        counts.update(requeued=len(todo) - len(failed), skipped=len(skipped), failed=len(failed))
        if failed:
            print(f"redis refused {len(failed)} record(s), left them unmarked: {'; '.join(sorted(set(failed)))}")
            return counts


def cmd_list(settings: Settings, conn: Conn, args: argparse.Namespace) -> int:
    clause, params = where(args)
    found = reports.dead_letter_list(conn, args.limit, clause, params)
    print(format_list(found, reports.dead_letter_count(conn, clause, params)))
    return 0


def cmd_show(settings: Settings, conn: Conn, args: argparse.Namespace) -> int:
    row = reports.dead_letter(conn, args.id)
    print(format_show(row) if row else f"no dead letter {args.id}")
    return 0 if row else 1


def cmd_requeue(settings: Settings, conn: Conn, args: argparse.Namespace) -> int:
    with connections.cli_redis(settings) as redis:
        counts = requeue(conn, redis, [shard.stream for shard in connections.stream_shards(settings, redis)], args)
    unmatched = bool(args.ids) and sum(counts.values()) < len(set(args.ids))
    print(f"{'would requeue' if args.dry_run else 'requeued'} {counts['requeued']}, skipped {counts['skipped']},"
          f" failed {counts['failed']}" + "; some IDs did not match (missing, filtered out, requeued)" * unmatched)
    return 1 if counts["failed"] else 0


def cmd_purge(settings: Settings, conn: Conn, args: argparse.Namespace) -> int:
    clause, params = where(args)
    if not args.yes:
        matching = reports.dead_letter_count(conn, clause, params)
        print(f"would delete {matching} dead letter(s); nothing deleted (add --yes)")
        return 1
    print(f"deleted {conn.execute(f'DELETE FROM dead_letters WHERE {clause}', params).rowcount} dead letter(s)")
    return 0


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    """Every subcommand's handler: the --all guard, the connection; trouble is one line and exit 1."""
    if getattr(args, "all", True) is False and not (where(args)[1] or args.only_requeued):
        print(f"refusing to {args.dead_letters_command} without IDs or filters: add --all to act on every match")
        return 2
    try:
        with connections.connect(settings.database_url_or_default(), connections.Role.CLI,
                                 row_factory=dict_row) as conn:
            return int(args.action(settings, conn, args))
    except (psycopg.Error, RedisError) as exc:
        print(f"hookstream dead-letters: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
        return 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sub = subparsers.add_parser("dead-letters", help="list, show, requeue or purge dead letters").add_subparsers(
        dest="dead_letters_command", required=True)
    filters = argparse.ArgumentParser(add_help=False)
    for flag, options in (("--provider", {"help": "only this provider (cm, smsmode, mx2, gatewayapi)"}),
                          ("--feed", {"help": "only this feed (mo, status, ...: the URL's last part)"}),
                          ("--reason", {"help": "substring, any case"}),
                          ("--since", {"type": parse_when, "help": f"last seen at/after: {WHEN}"}),
                          ("--until", {"type": parse_when, "help": f"last seen before: {WHEN}"})):
        filters.add_argument(flag, **options)
    state = filters.add_mutually_exclusive_group()
    state.add_argument("--include-requeued", action="store_true", help="also rows already requeued")
    state.add_argument("--only-requeued", action="store_true", help="only rows already requeued")
    p = sub.add_parser("list", parents=[filters], help="matching dead letters, newest first")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.set_defaults(handler=cmd_dead_letters, action=cmd_list)
    p = sub.add_parser("show", help="one dead letter with its headers, query and body")
    p.add_argument("id", type=int, help="the dead letter's id (first column of `list`)")
    p.set_defaults(handler=cmd_dead_letters, action=cmd_show)
    for name, action, flag in (("requeue", cmd_requeue, "--dry-run"), ("purge", cmd_purge, "--yes")):
        p = sub.add_parser(name, parents=[filters], help=f"{name} matching dead letters (IDs and/or filters)")
        p.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids (first column of `list`)")
        p.add_argument("--all", action="store_true", help="act on every match, even without IDs or filters")
        p.add_argument(flag, action="store_true", help={"--dry-run": "only count", "--yes": "really delete"}[flag])
        p.set_defaults(handler=cmd_dead_letters, action=action)
