"""The contract every provider module meets, and the decoding helpers they share.

A provider module exposes `NAME`, `FEEDS` and one pure function
`parse(record, ctx) -> list[Event]`; it raises `ParseError` with a reason for a record it
cannot read (the worker turns that into a dead letter). Status tables are dicts; unknown
values fall to `Status.UNKNOWN`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes
from xml.etree.ElementTree import Element

import orjson
from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from shared.errors import ParseError
from shared.events import Event
from shared.record import RawRecord

FORM_TYPE = "application/x-www-form-urlencoded"

# No provider nests its JSON deeper than five levels; orjson reads up to 1024 but writes only 254,
# so a deeper body could be parsed and then never stored. Refused at parse time: one dead letter.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True, slots=True)
class ParseContext:
    """Settings a normalizer needs; passed in, never read from the environment."""

    default_region: str | None = None


class Provider(Protocol):
    NAME: str
    FEEDS: frozenset[str]

    def parse(self, record: RawRecord, ctx: ParseContext) -> list[Event]: ...


def json_object(record: RawRecord) -> dict[str, Any]:
    """The body as a JSON object, or ParseError saying why not."""
    try:
        value = orjson.loads(record.body)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ParseError(f"body is JSON {type(value).__name__}, expected an object")
    # Fewer opening brackets than the limit cannot nest deeper than it: the walk is for the rare rest.
    if record.body.count(b"{") + record.body.count(b"[") > MAX_JSON_DEPTH and json_depth(value) > MAX_JSON_DEPTH:
        raise ParseError(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def json_depth(value: Any) -> int:
    """How deep objects and arrays nest in a parsed JSON value, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _decode(raw: bytes) -> str:
    """Percent-decoded bytes as text: UTF-8 first, ISO-8859-15 when the bytes are not UTF-8 (the
    older smsmode API is Latin-based)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("iso-8859-15")


def _add_pairs(params: dict[str, str], data: bytes) -> None:
    """`parse_qsl(keep_blank_values=True)` on the raw bytes, into `params` (the first value of a
    repeated key wins): `&` separates, the first `=` splits, `+` is a space, `%XX` a byte. On the
    bytes themselves every raw byte is kept, as parse_qsl over a Latin-1 view kept it, at about
    half the cost; each name and value is then read by `_decode`."""
    if data.isascii() and b"%" not in data:
        # Most queries: ASCII with nothing escaped, where every name and value is its own bytes as
        # text; read as one string, ~2x faster.
        for text in data.decode("ascii").replace("+", " ").split("&"):
            if text:
                name, _, value = text.partition("=")
                params.setdefault(name, value)
        return
    for field in data.split(b"&"):
        if field:
            raw_name, _, raw_value = field.replace(b"+", b" ").partition(b"=")
            params.setdefault(_decode(_unquote(raw_name)), _decode(_unquote(raw_value)))


def _unquote(raw: bytes) -> bytes:
    return unquote_to_bytes(raw) if b"%" in raw else raw


def query_params(record: RawRecord) -> dict[str, str]:
    """Query-string parameters, plus a form-encoded body; the first value of a repeated key wins."""
    params: dict[str, str] = {}
    _add_pairs(params, record.query)
    if record.mime_type == FORM_TYPE and record.body:
        _add_pairs(params, record.body)
    return params


def xml_root(record: RawRecord) -> Element:
    """The body as XML, refusing entity expansion and external references."""
    try:
        return SafeET.fromstring(record.body)
    except DefusedXmlException as exc:
        raise ParseError(f"XML refused: {type(exc).__name__}") from exc
    except SafeET.ParseError as exc:
        raise ParseError(f"body is not valid XML: {exc}") from exc


def looks_like_xml(record: RawRecord) -> bool:
    return "xml" in record.mime_type or record.body.lstrip()[:1] == b"<"


def text_or_none(value: object) -> str | None:
    """A provider scalar as text: None and "" become None, numbers become their digits."""
    if type(value) is str:  # nearly every call: first, before the isinstance checks
        return value.strip() or None
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip() if not isinstance(value, str) else value.strip()
    return text or None


def require(mapping: Mapping[str, Any], *names: str) -> None:
    """ParseError naming the first missing or empty field."""
    for name in names:
        if text_or_none(mapping.get(name)) is None:
            raise ParseError(f"required field {name!r} is missing or empty")


def lower_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Keys folded to lower case, for providers that spell a field two ways (Mx2 statusMessage)."""
    return {str(key).lower(): value for key, value in mapping.items()}
