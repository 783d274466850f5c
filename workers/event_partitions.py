"""The events' partitions (and the status history's, alike past its own retention): one per ISO week
of received_at, two weeks made ahead, dropped whole past
HOOKSTREAM_EVENTS_RETENTION (the rules: workers/partitions.py).

Why weeks: at 300 events/s a week is ~180 million rows, a day ~26 million. Thirteen months are 57
weekly partitions against ~400 daily ones, and every query that cannot prune by received_at (a
number's lookup, the review queue) opens and probes each partition's index: 57 probes and locks
stay cheap to plan and run, 400 do not. Retention moves in steps of a week, which 13 months allow.
"""

from __future__ import annotations

from workers.partitions import TimePartitions

WEEKS_AHEAD = 2
EVENTS = TimePartitions("events", days=7, ahead=WEEKS_AHEAD, default="events_default")
# The table an online conversion fills before it becomes `events`: its partitions have their final names.
EVENTS_NEXT = TimePartitions("events_next", days=7, ahead=WEEKS_AHEAD, default="events_next_default", prefix="events")
# Every report of a message (hookstream/migrations/010_status_history.sql): weeks like events, past
# HOOKSTREAM_STATUS_HISTORY_RETENTION.
STATUS_HISTORY = TimePartitions("status_history", days=7, ahead=WEEKS_AHEAD, default="status_history_default")
