"""How far behind the primary the consent API's reads may be, when they come from a streaming replica
(HOOKSTREAM_DATABASE_READ_URL).

An answer read from a replica is the truth as of the replica's last replayed commit. The API never
hides that: the lag is measured on the same connection BEFORE the lookup, so the data read is at
least that fresh and the lag reported never understates how old the answer may be. Every lookup and
bulk check served by a replica carries it in the LAG_HEADER (seconds), and /readyz shows it.

The lag is 0 while the replica has replayed everything it received and its WAL receiver is
connected (an idle primary sends nothing, so the age of the last replayed commit says nothing then);
otherwise it is the age of the last replayed commit: replay paused or behind, or the stream cut (then
the replica cannot know what it misses, and the age is the honest bound). None: no commit replayed yet.
"""

from __future__ import annotations

from typing import Any

import psycopg

LAG_HEADER = "Hookstream-Replica-Lag"

# pg_stat_wal_receiver has a row while the receiver runs (its details need pg_read_all_stats; the row
# itself does not). On a primary: 0.
LAG_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
         AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0
    ELSE greatest(0, extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()))
END::float8
"""


async def lag_s(conn: psycopg.AsyncConnection[Any]) -> float | None:
    cur = await conn.execute(LAG_SQL)
    row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


def shown(lag: float | None) -> str:
    """The header's value: seconds with millisecond precision, or `unknown`."""
    return "unknown" if lag is None else f"{lag:.3f}"
