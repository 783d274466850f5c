"""Reading requests: strict, pure, every refusal a 4xx with a reason (never a 500).

400: the body could not be read as JSON. 422: it was read but is wrong (types, unknown fields,
limits, values). Unknown query parameters are refused too: a typo such as `?scop=` must not
quietly turn a scoped question into another one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from api.errors import ApiError, bad_request, invalid
from api.subjects import MAX_SCOPE_CHARS

MAX_SUBJECTS = 100_000
MAX_BODY_BYTES = 8 * 1024 * 1024  # 100,000 subjects of up to 64 characters fit comfortably
DECISIONS = ("opt_out", "dismiss")


def parse_json(body: bytes) -> Any:
    if not body:
        raise bad_request("the body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None


def _object(data: Any, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise invalid(f"the body must be a JSON object with {', '.join(allowed)}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        named = ", ".join(repr(k)[:60] for k in unknown[:10])
        raise invalid(f"unknown field(s): {named}; allowed: {', '.join(allowed)}")
    return data


def text_value(value: Any, where: str, maximum: int) -> str:
    """A string field, stripped: 1 to `maximum` characters and no NUL (nothing stored can hold one)."""
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string")
    text = value.strip()
    if not text or len(text) > maximum:
        raise invalid(f"{where} must be 1 to {maximum} characters")
    if "\x00" in text:
        raise invalid(f"{where} contains a NUL character")
    return text


def known_fields(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """422 naming the first few fields of `data` outside `allowed`."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise invalid(f"{where}: unknown field(s) {', '.join(repr(k)[:40] for k in unknown[:5])};"
                      f" allowed: {', '.join(allowed)}")


def scope_value(value: Any, where: str = "scope") -> str | None:
    return None if value is None else text_value(value, where, MAX_SCOPE_CHARS)


@dataclass(frozen=True, slots=True)
class CheckRequest:
    subjects: list[str]
    scope: str | None


def check_request(data: Any) -> CheckRequest:
    body = _object(data, ("subjects", "scope"))
    subjects = body.get("subjects")
    if not isinstance(subjects, list):
        raise invalid("subjects must be a list of strings")
    if len(subjects) > MAX_SUBJECTS:
        raise invalid(f"too many subjects: {len(subjects)} (at most {MAX_SUBJECTS} per call)")
    wrong = next((i for i, s in enumerate(subjects) if not isinstance(s, str)), None)
    if wrong is not None:
        raise invalid(f"subjects[{wrong}] is not a string")
    return CheckRequest(subjects, scope_value(body.get("scope")))


def decision_request(data: Any) -> str:
    body = _object(data, ("decision",))
    decision = body.get("decision")
    if decision not in DECISIONS:
        raise invalid(f"decision must be one of {', '.join(DECISIONS)}")
    return str(decision)


def query(params: Sequence[tuple[str, str]], allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string's (name, value) pairs, each allowed name at most once."""
    found: dict[str, str] = {}
    for name, value in params:
        if name not in allowed:
            raise invalid(f"unknown query parameter {name[:60]!r}; allowed: {', '.join(allowed) or 'none'}")
        if name in found:
            raise invalid(f"query parameter {name!r} given twice")
        found[name] = value
    return found


def limit_value(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= maximum:
        raise invalid(f"limit must be a whole number from 1 to {maximum}")
    return int(raw)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the body is larger than {limit} bytes")
