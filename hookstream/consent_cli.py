"""`hookstream consent verify`: check every subject's hash chain of consent changes.

Exit status 0 when every chain holds, 1 when one is broken (the first broken link of each broken
chain is printed), 2 when Postgres cannot be reached.
"""

from __future__ import annotations

import argparse
import sys

import orjson
import psycopg

from shared import connections, ledger
from shared.settings import Settings


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    try:
        with connections.connect(settings.database_url_or_default(), connections.Role.CLI) as conn:
            verdict = ledger.verify(conn, limit=args.limit)
    except psycopg.OperationalError as exc:
        print(f"hookstream consent verify: postgres unavailable: {type(exc).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps({"ok": verdict.ok, "subjects": verdict.subjects, "changes": verdict.changes,
                            "broken": [link.as_json() for link in verdict.broken]}).decode())
    elif verdict.ok:
        print(f"ok: {verdict.changes} change(s) in {verdict.subjects} chain(s), every link holds")
    else:
        print(f"BROKEN: {len(verdict.broken)} chain(s) of {verdict.subjects}; first broken link of each:")
        for link in verdict.broken:
            print(f"  {link.describe()}")
    return 0 if verdict.ok else 1


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("consent", help="the consent ledger: verify its hash chains")
    sub = p.add_subparsers(dest="consent_command", required=True)
    v = sub.add_parser("verify", help="check every subject's chain of consent changes; exit 1 if one is broken")
    v.add_argument("--json", action="store_true", help="machine-readable")
    v.add_argument("--limit", type=_positive, default=100, help="broken chains to report, default 100")
    v.set_defaults(handler=cmd_verify)
