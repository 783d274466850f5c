"""The dashboard's message page (/dashboard/messages): a search box and a message's timeline.

The box takes what support is given: a phone number in any notation (searched as a recipient), or
a provider's message id; with a provider chosen, the time range alone lists that provider's messages.
The queries and their reading are shared.timeline's, as the API's and `hookstream message`'s.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import psycopg
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from shared import timeline
from shared.reports import first_line
from shared.settings import PROVIDERS, Settings

PATH = "/dashboard/messages"


class Pages(Protocol):
    """What the page needs of the dashboard (api.dashboard.app.Dashboard)."""

    settings: Settings

    def authenticate(self, request: Request) -> tuple[str, Any] | None: ...
    def html(self, template: str, status_code: int = 200, **context: Any) -> Response: ...
    def reading(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...

SHOWN = 50
MAX_INPUT = 200


def _searches(q: str, provider: str | None, since: str | None, cursor: str | None,
              default_region: str | None) -> list[tuple[str, timeline.Search]]:
    """(what was searched, the search) for the box's text: as a number when it is one, always as a message id."""
    common: dict[str, Any] = {"provider": provider, "since": since, "limit": SHOWN, "cursor": cursor,
                              "default_region": default_region, "providers": PROVIDERS}
    if not q:
        return [("provider", timeline.search_of(**common))]
    found: list[tuple[str, timeline.Search]] = []
    try:
        found.append(("phone number", timeline.search_of(phone=q, **common)))
    except timeline.BadQuery:
        pass  # not a number: a message id only
    found.append(("message id", timeline.search_of(ref=q, **common)))
    return found


async def page(dash: Pages, request: Request) -> Response:
    """GET /dashboard/messages?q=&provider=&since= (search), ?provider=&ref= (a message's timeline)."""
    auth = dash.authenticate(request)
    if auth is None:
        return RedirectResponse("/login", 303)
    csrf = auth[1].csrf if auth[1] is not None else ""
    params = {k: v.strip()[:MAX_INPUT] for k, v in request.query_params.items()}
    provider = params.get("provider") or None
    form = {"q": params.get("q", ""), "provider": provider or "", "since": params.get("since", "")}
    if provider is not None and provider not in PROVIDERS:
        return dash.html("messages.html", 422, csrf=csrf, form=form, providers=PROVIDERS,
                         error=f"provider must be one of {', '.join(PROVIDERS)}")
    ref = params.get("ref")
    try:
        if ref and provider:
            steps = await run_in_threadpool(_timeline, dash, provider, ref)
            return dash.html("messages.html", 200 if steps else 404, csrf=csrf, form=form, providers=PROVIDERS,
                             message={"provider": provider, "ref": ref},
                             steps=[timeline.step_json(step) for step in steps])
        if not (form["q"] or provider):
            return dash.html("messages.html", csrf=csrf, form=form, providers=PROVIDERS)
        searches = _searches(form["q"], provider, params.get("since") or None, params.get("cursor") or None,
                             dash.settings.default_region)
        results = await run_in_threadpool(_search, dash, searches)
    except timeline.BadQuery as exc:
        return dash.html("messages.html", 422, csrf=csrf, form=form, providers=PROVIDERS, error=str(exc))
    except (PoolTimeout, psycopg.Error) as exc:
        return dash.html("messages.html", 503, csrf=csrf, form=form, providers=PROVIDERS,
                         error=f"postgres: {first_line(exc)}")
    return dash.html("messages.html", csrf=csrf, form=form, providers=PROVIDERS, results=results)


def _timeline(dash: Pages, provider: str, ref: str) -> list[timeline.Step]:
    if not timeline.storable_id(ref):
        return []  # no message has such an id: a 404, never a database error
    with dash.reading() as conn:
        return timeline.timeline(timeline.reports(conn.execute(timeline.TIMELINE_SQL, (provider, ref)).fetchall()))


def _search(dash: Pages, searches: list[tuple[str, timeline.Search]]) -> list[dict[str, Any]]:
    results = []
    with dash.reading() as conn:
        for what, search in searches:
            sql, params = timeline.search_sql(search)
            items, following = timeline.page(conn.execute(sql, params).fetchall(), search.limit)
            results.append({"what": what, "items": items, "next": following})
    return results
