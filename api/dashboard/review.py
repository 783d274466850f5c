"""Deciding a review item from the page: the API's own code path (`api.review`, the checks and the
refusals behind `POST /v1/consent/review/{event_id}`), so the decision, the consent change and its
audit row (`consent_changes.decided_by` = the label of the token that logged in) are exactly the API's,
and so is every refusal (an `ApiError`: status, code, detail).

`Decider` is the seam: the dashboard calls `decide(event_id, decision, label, pool)`; tests can hand
`Dashboard(decide=...)` another function with the same meaning.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from api import review
from shared import connections
from shared.consent import REACH_SCOPE

Decider = Callable[[str, str, str, Any], Awaitable[dict[str, Any]]]


def check_input(event_id: str, decision: str) -> None:
    """The API's input rules, for a form's two fields."""
    review.check_decision(decision)
    review.check_event_id(event_id)


def api_decider(database_url: str, reach: str = REACH_SCOPE) -> Decider:
    """Decide through `api.review.decide` on the API's pool when mounted in the API app (`pool` from
    its lifespan state), otherwise on a connection of its own."""

    async def decide(event_id: str, decision: str, label: str, pool: Any) -> dict[str, Any]:
        check_input(event_id, decision)
        if pool is not None:
            async with pool.connection(timeout=5.0) as conn:
                made = await review.decide(conn, event_id, decision, label, reach)
        else:
            async with await connections.connect_async(database_url, connections.Role.API) as conn:
                made = await review.decide(conn, event_id, decision, label, reach)
        return made.as_json()

    return decide
