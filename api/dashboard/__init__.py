"""The built-in dashboard, served by `hookstream api` at `/` (README, "Dashboard").

`routes(settings, tokens)` gives its Starlette routes to mount into the API app; `PUBLIC_PATHS` is
what the API's bearer middleware must let through (these routes authenticate themselves).
"""

from api.dashboard.app import PUBLIC_PATHS, Dashboard, routes

__all__ = ["PUBLIC_PATHS", "Dashboard", "routes"]
