"""Receipt expiry: a message whose latest status is still queued or sent longer than its provider's
HOOKSTREAM_RECEIPT_EXPIRY becomes `expired` with the reason `no_receipt`, hookstream's decision.
"Longer" is measured on our clock, from when its latest report was received, not from the
provider's time: a report that arrives late (a provider's retries, a replay) is news, and a
provider's clock or a naive time must not expire a message the moment its report lands.

The decision is written where a report would be: message_status (the current state) and
status_history (decided_by 'hookstream', no provider status, no raw record). It takes the rank of
`sent`, not of a provider's terminal states, with the sweep's time as its order: by the monotonic
rule (workers/rules.py, the ON CONFLICT … WHERE of workers/store.py) a real delivered/failed receipt
that arrives later still wins, and so does a `sent` the provider reports after the sweep, while a
stale queued/sent report from before it changes nothing.

Set-based and bounded: each round expires at most `batch` messages per provider, oldest first, in
one statement (message_status_expiry_pending), rows a worker holds skipped (SKIP LOCKED) until the
next round. The dispatcher runs it from its upkeep table (workers/upkeep.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from shared import connections
from shared.events import Status
from workers.rules import STATUS_RANK

log = logging.getLogger("hookstream.expiry")

BATCH = 5000
NO_RECEIPT = "no_receipt"  # the normalized reason of hookstream's own expiry
# Below every terminal state a provider reports: a late receipt supersedes hookstream's guess.
EXPIRED_RANK = STATUS_RANK[Status.SENT]

SWEEP_SQL = """
WITH due AS (
    SELECT provider, message_ref, recipient FROM message_status
    WHERE provider = %(provider)s AND status IN ('queued', 'sent') AND received_at < %(cutoff)s
    ORDER BY received_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED
), expired AS (
    UPDATE message_status m SET status = 'expired', status_rank = %(rank)s, provider_status = NULL,
        provider_reason = NULL, reason = %(reason)s, status_at = NULL, order_at = %(now)s, received_at = %(now)s,
        event_key = 'expiry:' || m.provider || ':' || m.message_ref || ':' || m.recipient || ':' || %(stamp)s,
        updated_at = now()
    FROM due WHERE (m.provider, m.message_ref, m.recipient) = (due.provider, due.message_ref, due.recipient)
    RETURNING m.event_key, m.provider, m.message_ref, m.recipient
)
INSERT INTO status_history (event_key, provider, message_ref, recipient, status, status_rank, reason, order_at,
                            received_at, decided_by)
SELECT event_key, provider, message_ref, recipient, 'expired', %(rank)s, %(reason)s, %(now)s, %(now)s, 'hookstream'
FROM expired ON CONFLICT DO NOTHING
"""


def sweep(conn: psycopg.Connection[Any], expiry_s: Mapping[str, int], now: datetime | None = None, *,
          batch: int = BATCH) -> dict[str, int]:
    """One round: per provider (an expiry of 0 turns it off), at most `batch` messages expired in a
    transaction of their own. Returns the messages expired per provider."""
    now = now or datetime.now(UTC)
    done: dict[str, int] = {}
    for provider, seconds in sorted(expiry_s.items()):
        if seconds <= 0:
            continue
        with conn.transaction():
            cur = conn.execute(SWEEP_SQL, {"provider": provider, "cutoff": now - timedelta(seconds=seconds),
                                           "batch": batch, "rank": EXPIRED_RANK, "reason": NO_RECEIPT, "now": now,
                                           "stamp": f"{now.timestamp():.6f}"})
            done[provider] = max(cur.rowcount, 0)
    if any(done.values()):
        log.info("receipt expiry: %s", ", ".join(f"{p} {n}" for p, n in done.items() if n))
    return done


def sweep_url(database_url: str, expiry_s: Mapping[str, int]) -> None:
    """`sweep` on a connection of its own; trouble is logged, never raised (it runs again later)."""
    try:
        with connections.connect(database_url, connections.Role.DISPATCHER) as conn:
            sweep(conn, expiry_s)
    except psycopg.Error as exc:
        log.warning("receipt expiry failed, will retry: %s", type(exc).__name__)
