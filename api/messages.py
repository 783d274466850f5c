"""Messages: GET /v1/messages/{provider}/{message_ref} (a message's delivery timeline) and GET /v1/messages
(search by message id, phone number, provider and time range, paged by a cursor). The queries and
their reading are shared.timeline's, so the API, `hookstream message` and the dashboard agree."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api import inputs
from api.errors import ApiError, JSONResponse, invalid
from shared import timeline
from shared.settings import PROVIDERS

POOL_TIMEOUT_S = 5.0
SEARCH_PARAMS = ("ref", "phone", "provider", "since", "until", "limit", "cursor")


def _state(request: Request) -> Any:
    return request.scope["state"]


async def show(request: Request) -> Response:
    provider, ref = request.path_params["provider"], request.path_params["message_ref"]
    inputs.query(request.query_params.multi_items(), ())
    if provider not in PROVIDERS:
        raise ApiError(404, "not_found", f"no provider {provider[:40]!r}; one of {', '.join(PROVIDERS)}")
    if not timeline.storable_id(ref):
        raise ApiError(404, "not_found", "no status report of this message")
    async with _state(request)["read_pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        cur = await conn.execute(timeline.TIMELINE_SQL, (provider, ref))
        found = await cur.fetchall()
    if not found:
        raise ApiError(404, "not_found", "no status report of this message")
    steps = timeline.timeline(timeline.reports(found))
    return JSONResponse({"provider": provider, "message_ref": ref,
                         "statuses": [timeline.step_json(step) for step in steps]})


async def search(request: Request) -> Response:
    params = inputs.query(request.query_params.multi_items(), SEARCH_PARAMS)
    limit = inputs.limit_value(params.get("limit"), 50, timeline.MAX_LIMIT)
    try:
        wanted = timeline.search_of(
            ref=params.get("ref"), phone=params.get("phone"), provider=params.get("provider"),
            since=params.get("since"), until=params.get("until"), limit=limit, cursor=params.get("cursor"),
            default_region=_state(request)["settings"].default_region, providers=PROVIDERS)
        sql, args = timeline.search_sql(wanted)
    except timeline.BadQuery as exc:
        raise invalid(str(exc)) from None
    async with _state(request)["read_pool"].connection(timeout=POOL_TIMEOUT_S) as conn:
        cur = await conn.execute(sql, args)
        found = await cur.fetchall()
    items, following = timeline.page(found, limit)
    return JSONResponse({"messages": items, "next": following, "has_more": following is not None})
