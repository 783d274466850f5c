"""A review decision on a `possible_opt_out` event: its input rules and the one mapping of what
`queries.decide` refuses to the answer a client gets.

Both ways in use it: `POST /v1/consent/review/{event_id}` (api/app.py) and the dashboard's review
form (api/dashboard/review.py), so a decision is checked, made and refused the same way in both.
"""

from __future__ import annotations

from api import queries
from api.errors import ApiError, invalid
from api.inputs import DECISIONS
from shared.consent import REACH_SCOPE

MAX_EVENT_ID_CHARS = 512


def check_event_id(event_id: str) -> None:
    if not 1 <= len(event_id) <= MAX_EVENT_ID_CHARS or "\x00" in event_id:
        raise invalid(f"event_id must be 1 to {MAX_EVENT_ID_CHARS} characters, without NUL")


def check_decision(decision: str) -> None:
    """For a form field; a JSON body is read by `inputs.decision_request`, with the same rule."""
    if decision not in DECISIONS:
        raise invalid(f"decision must be one of {', '.join(DECISIONS)}")


async def decide(conn: queries.Conn, event_id: str, decision: str, label: str,
                 reach: str = REACH_SCOPE) -> queries.Decision:
    """`queries.decide`, its refusals as ApiError: 404 not in the queue, 409 decided already, 422
    nothing the decision could apply to."""
    try:
        return await queries.decide(conn, event_id, decision, label, reach)
    except queries.NotInQueue:
        raise ApiError(404, "not_found", "no possible_opt_out event has this id") from None
    except queries.Conflict as exc:
        raise ApiError(409, "conflict", f"this event was decided already: {exc.decision}",
                       decision=exc.decision, decided_by=exc.decided_by) from None
    except queries.CannotApply as exc:
        raise invalid(str(exc)) from None
