"""Errors as JSON: `{"error": <code>, "detail": <reason>}` and the status that goes with them."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """A request the API refuses, with the status and a reason a client can act on."""

    def __init__(self, status: int, code: str, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


def bad_request(detail: str, **extra: Any) -> ApiError:
    """The body or a parameter could not be read at all (not JSON, not UTF-8)."""
    return ApiError(400, "bad_request", detail, **extra)


def invalid(detail: str, **extra: Any) -> ApiError:
    """Read, but wrong: types, unknown fields, limits, a subject that is neither a number nor a known id."""
    return ApiError(422, "invalid", detail, **extra)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, code: str, detail: str | None = None, headers: dict[str, str] | None = None,
                   **extra: Any) -> Response:
    body: dict[str, Any] = {"error": code}
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)
