"""The helpers every provider module shares, checked against the library forms they replace."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.providers.base import FORM_TYPE, query_params, text_or_none
from tests.providers.util import record


def reference_params(query: bytes, body: bytes = b"", content_type: str = "") -> dict[str, str]:
    """What query_params returned when it ran parse_qsl over a Latin-1 view of the bytes."""

    def text(value: str) -> str:
        raw = value.encode("latin-1")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("iso-8859-15")

    def pairs(data: bytes) -> list[tuple[str, str]]:
        return parse_qsl(data.decode("latin-1"), keep_blank_values=True, encoding="latin-1")

    found = pairs(query) + (pairs(body) if content_type == FORM_TYPE and body else [])
    params: dict[str, str] = {}
    for key, value in found:
        params.setdefault(text(key), text(value))
    return params


@pytest.mark.parametrize("query", [
    b"", b"&", b"&&a=1&&", b"a", b"a=", b"=b", b"=", b"a=1&a=2", b"a=1=2", b"a+b=c+d", b"a%20b=%2B%3d",
    b"m=%E9t%E9", b"m=%C3%A9t%C3%A9", b"m=\xe9t\xe9", b"m=%zz%4", b"m=%%41", b"m=%\xe941", b"m=%4\xe9",
    b"numero=33612345678&date_reception=2025-03-25+09%3A52%3A17&statut=11&smsID=S1&refClient=r",
    b"m=%A4%BD", b"m=%F0%9F%98%80", b"m=%ED%A0%80", b"k%00=v%00",
])
def test_listed_queries_parse_as_parse_qsl(query: bytes) -> None:
    assert query_params(record("smsmode", "mo", query=query, method="GET", content_type="")) == reference_params(query)


@given(query=st.binary(max_size=40) | st.text(alphabet="ab=&+%2AFz\xe9\u20ac", max_size=30).map(str.encode),
       body=st.text(alphabet="ab=&+%2AF\xe9", max_size=20).map(str.encode),
       content_type=st.sampled_from(["", FORM_TYPE, "text/plain"]))
def test_any_bytes_parse_as_parse_qsl(query: bytes, body: bytes, content_type: str) -> None:
    rec = record("smsmode", "mo", body, query=query, content_type=content_type)
    assert query_params(rec) == reference_params(query, body, content_type)


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("  ", None), (" a ", "a"), (12, "12"), (1.5, "1.5"), (True, "true"), ({}, None),
    ([], None),
])
def test_text_or_none(value: object, expected: str | None) -> None:
    assert text_or_none(value) == expected
