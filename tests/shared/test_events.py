"""`amend` is `dataclasses.replace` for an Event, and Event's `__init__` the one dataclasses writes, only faster."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, datetime
from operator import attrgetter

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


# The class dataclasses would make of Event's fields, with its own generated `__init__`.
TWIN = dataclasses.make_dataclass(
    "Twin", [(f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
             for f in dataclasses.fields(Event)], frozen=True, slots=True)
VALUES = attrgetter(*(f.name for f in dataclasses.fields(Event)))


def test_event_init_takes_the_parameters_and_defaults_of_the_dataclass_init() -> None:
    ours, theirs = inspect.signature(Event.__init__).parameters, inspect.signature(TWIN.__init__).parameters
    assert list(ours) == list(theirs)
    for name, param in ours.items():
        if name != "payload":  # a default factory: both use a sentinel object of their own
            assert (param.default, param.kind) == (theirs[name].default, theirs[name].kind), name


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Event)][4:])
def test_event_init_stores_every_field_as_the_dataclass_init(name: str) -> None:
    required = ("cm", "mo", Kind.INBOUND, "cm:inbound:1")
    assert VALUES(Event(*required, **{name: "x"})) == VALUES(TWIN(*required, **{name: "x"}))
    positional = (*required, *range(len(dataclasses.fields(Event)) - 4))
    assert VALUES(Event(*positional)) == VALUES(TWIN(*positional))


def test_events_stay_frozen_and_get_a_payload_of_their_own() -> None:
    first, second = Event("cm", "mo", Kind.INBOUND, "k"), Event("cm", "mo", Kind.INBOUND, "k")
    assert first == second and first.payload == {} and first.payload is not second.payload
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.body = "STOP"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Event("cm", "mo", Kind.INBOUND)  # type: ignore[call-arg]
