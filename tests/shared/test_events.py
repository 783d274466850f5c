"""`amend` is `dataclasses.replace` for an Event, only faster."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from shared.events import Event, Kind, Outcome, Status, amend

EVENT = Event("cm", "mo", Kind.INBOUND, "cm:inbound:1", payload={"a": 1}, phone="+31612345678", body="STOP",
              occurred_at=datetime(2025, 1, 1, tzinfo=UTC), status=Status.SENT, scope="3669")


def test_amend_changes_the_fields_named_and_keeps_the_rest() -> None:
    changes = {"body": "hi", "outcome": Outcome.OPT_OUT, "keyword": "stop", "consent": None, "scope": None}
    assert amend(EVENT, **changes) == dataclasses.replace(EVENT, **changes)
    assert amend(EVENT) == EVENT and amend(EVENT) is not EVENT


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Event)])
def test_amend_reaches_every_field(name: str) -> None:
    assert getattr(amend(EVENT, **{name: "x"}), name) == "x"


def test_amend_refuses_a_field_events_do_not_have() -> None:
    with pytest.raises(KeyError):
        amend(EVENT, colour="red")
