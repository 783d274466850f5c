"""Deciding a review item from the page: the API's own code path (`api.queries.decide`, the function
behind `POST /v1/consent/review/{event_id}`), so the decision, the consent change and its audit row
(`consent_changes.decided_by` = the label of the token that logged in) are exactly the API's.

`Decider` is the seam: the dashboard calls `decide(event_id, decision, label, pool)`; tests or a
future API refactor can hand `Dashboard(decide=...)` another function with the same meaning.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import psycopg

DECISIONS = ("opt_out", "dismiss")


class Refused(Exception):
    """A decision the API would refuse: status, code and a sentence for the person at the page."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


Decider = Callable[[str, str, str, Any], Awaitable[dict[str, Any]]]


def check_input(event_id: str, decision: str) -> None:
    """The API's input rules (api/app.py review_decide and api/inputs.decision_request)."""
    if decision not in DECISIONS:
        raise Refused(422, "invalid", f"decision must be one of {', '.join(DECISIONS)}")
    if not 1 <= len(event_id) <= 512 or "\x00" in event_id:
        raise Refused(422, "invalid", "event_id must be 1 to 512 characters, without NUL")


def api_decider(database_url: str) -> Decider:
    """Decide through `api.queries.decide` on the API's pool when mounted in the API app (`pool`
    from its lifespan state), otherwise on a connection of its own."""

    async def decide(event_id: str, decision: str, label: str, pool: Any) -> dict[str, Any]:
        from api import queries

        check_input(event_id, decision)
        try:
            if pool is not None:
                async with pool.connection(timeout=5.0) as conn:
                    made = await queries.decide(conn, event_id, decision, label)
            else:
                async with await psycopg.AsyncConnection.connect(database_url, autocommit=True,
                                                                 connect_timeout=5) as conn:
                    made = await queries.decide(conn, event_id, decision, label)
        except queries.NotInQueue:
            raise Refused(404, "not_found", "no possible_opt_out event has this id") from None
        except queries.Conflict as exc:
            raise Refused(409, "conflict", f"this event was decided already: {exc.decision} by {exc.decided_by}",
                          decision=exc.decision, decided_by=exc.decided_by) from None
        except queries.CannotApply as exc:
            raise Refused(422, "invalid", str(exc)) from None
        return made.as_json()

    return decide
