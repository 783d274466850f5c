"""The pure state rules: monotonic status and consent transitions, in every order."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from shared.consent import OPTED_IN, OPTED_OUT, ConsentRow, apply_to_row, effective
from shared.events import Status
from workers.rules import STATUS_RANK, StatusPoint, supersedes

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def point(status: Status, minute: int, received: int | None = None) -> StatusPoint:
    return StatusPoint(STATUS_RANK[status], at(minute), at(received if received is not None else minute))


@pytest.mark.parametrize(("label", "new", "old", "expected"), [
    ("sent after queued", point(Status.SENT, 2), point(Status.QUEUED, 1), True),
    ("late sent never beats delivered", point(Status.SENT, 5), point(Status.DELIVERED, 1), False),
    ("delivered beats sent", point(Status.DELIVERED, 1), point(Status.SENT, 5), True),
    ("later terminal wins", point(Status.FAILED, 3), point(Status.DELIVERED, 2), True),
    ("older terminal loses", point(Status.FAILED, 1), point(Status.DELIVERED, 2), False),
    ("unknown never overwrites", point(Status.UNKNOWN, 9), point(Status.QUEUED, 1), False),
    ("same point is no change", point(Status.SENT, 1), point(Status.SENT, 1), False),
    ("tie broken by receive time", point(Status.EXPIRED, 1, 5), point(Status.FAILED, 1, 4), True),
])
def test_supersedes(label: str, new: StatusPoint, old: StatusPoint, expected: bool) -> None:
    assert supersedes(new, old) is expected, label


def test_any_delivery_order_gives_the_same_final_status() -> None:
    points = [point(Status.QUEUED, 0), point(Status.SENT, 1), point(Status.SENT, 2), point(Status.DELIVERED, 3),
              point(Status.UNKNOWN, 4)]
    finals = set()
    for order in itertools.permutations(points + [points[1]]):
        current = order[0]
        for p in order[1:]:
            if supersedes(p, current):
                current = p
        finals.add(current)
    assert finals == {point(Status.DELIVERED, 3)}


@pytest.mark.parametrize(("label", "events", "expected"), [
    ("stop", [(OPTED_OUT, 1)], OPTED_OUT),
    ("stop then start", [(OPTED_OUT, 1), (OPTED_IN, 2)], OPTED_IN),
    ("start then an older stop arrives", [(OPTED_IN, 2), (OPTED_OUT, 1)], OPTED_IN),
    ("stop then an older start arrives", [(OPTED_OUT, 2), (OPTED_IN, 1)], OPTED_OUT),
    ("same time: opt-out wins", [(OPTED_IN, 1), (OPTED_OUT, 1)], OPTED_OUT),
    ("same time, other order", [(OPTED_OUT, 1), (OPTED_IN, 1)], OPTED_OUT),
    ("repeated stop keeps the later confirmation", [(OPTED_OUT, 1), (OPTED_OUT, 3), (OPTED_IN, 2)], OPTED_OUT),
])
def test_consent_row(label: str, events: list[tuple[str, int]], expected: str) -> None:
    row = None
    for state, minute in events:
        row = apply_to_row(row, state, at(minute)) or row
    assert row is not None and row.state == expected, label


def test_consent_is_order_independent() -> None:
    events = [(OPTED_OUT, 1), (OPTED_IN, 2), (OPTED_OUT, 3), (OPTED_IN, 4), (OPTED_OUT, 3)]
    for order in itertools.permutations(events):
        row = None
        for state, minute in order:
            row = apply_to_row(row, state, at(minute)) or row
        assert row is not None and row.state == OPTED_IN


def test_effective_scope_against_global() -> None:
    stop_all = ConsentRow(OPTED_OUT, at(2), at(2))
    assert effective(None, None) == "unknown"
    assert effective(None, stop_all) == OPTED_OUT
    assert effective(ConsentRow(OPTED_IN, at(1), at(1)), stop_all) == OPTED_OUT
    assert effective(ConsentRow(OPTED_IN, at(3), at(3)), stop_all) == OPTED_IN  # a START after STOPALL reopens its scope
    assert effective(ConsentRow(OPTED_IN, at(2), at(2)), stop_all) == OPTED_OUT
