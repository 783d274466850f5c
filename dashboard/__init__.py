"""The built-in dashboard, served by `hookstream api` at `/` (README, "Dashboard").

    from dashboard import PUBLIC_PATHS, routes
    routes(settings, tokens)  # -> list of Starlette routes; PUBLIC_PATHS: what the API's bearer
                              #    middleware must let through (these routes authenticate themselves)
"""

from dashboard.app import PUBLIC_PATHS, Dashboard, routes

__all__ = ["PUBLIC_PATHS", "Dashboard", "routes"]
