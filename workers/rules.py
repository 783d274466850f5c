"""Pure state rule: the monotonic delivery status (the consent rules are `shared.consent`'s).

Written so that applying the same event twice, or events in any order, leaves the same answer;
the SQL in `store.py` repeats the rule in its ON CONFLICT clause so it also holds between
concurrent workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.events import Status

# queued < sent < a terminal state; unknown never overwrites anything.
STATUS_RANK: dict[Status, int] = {
    Status.UNKNOWN: 0,
    Status.QUEUED: 1,
    Status.SENT: 2,
    Status.DELIVERED: 3,
    Status.FAILED: 3,
    Status.EXPIRED: 3,
    Status.REJECTED: 3,
}


@dataclass(frozen=True, slots=True)
class StatusPoint:
    rank: int
    order_at: datetime  # provider time, or receive time when the provider gave none
    received_at: datetime


def supersedes(new: StatusPoint, old: StatusPoint) -> bool:
    """A higher rank wins; within a rank (between terminal states too) the later time wins."""
    if new.rank != old.rank:
        return new.rank > old.rank
    return (new.order_at, new.received_at) > (old.order_at, old.received_at)

