"""Stream ids read one way everywhere: as (ms, seq), ordered as Redis orders them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.streamids import MAX_PART, group_lag, id_to_tuple


@pytest.mark.parametrize(("text", "expected"), [
    ("1700000000000-0", (1700000000000, 0)), ("1700000000000-12", (1700000000000, 12)),
    (b"1700000000000-3", (1700000000000, 3)), ("5", (5, 0)), ("0-0", (0, 0)),
    (f"{MAX_PART}-{MAX_PART}", (MAX_PART, MAX_PART)),
    ("-", (0, 0)), ("+", (MAX_PART, MAX_PART)),  # XRANGE's open ends
])
def test_ids(text: str | bytes, expected: tuple[int, int]) -> None:
    assert id_to_tuple(text) == expected


@pytest.mark.parametrize("text", [
    "", "abc", "1-", "-1", "1-2-3", "1.5-0", " 1-0", "1-0 ", "+1-0", "1_000-0", "٣-0", "(1-0",
    f"{MAX_PART + 1}-0", f"0-{MAX_PART + 1}", "1" * 21 + "-0", b"\xff-0",
])
def test_anything_else_is_a_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError, match="not a stream id"):
        id_to_tuple(text)


parts = st.integers(min_value=0, max_value=MAX_PART)


@given(a=st.tuples(parts, parts), b=st.tuples(parts, parts))
def test_order_is_numeric_not_textual(a: tuple[int, int], b: tuple[int, int]) -> None:
    first, second = id_to_tuple(f"{a[0]}-{a[1]}"), id_to_tuple(f"{b[0]}-{b[1]}")
    assert (first, second) == (a, b)
    assert id_to_tuple("-") <= first <= id_to_tuple("+")


@pytest.mark.parametrize(("reported", "last_delivered", "newest", "length", "expected"), [
    (5, "10-0", "10-0", 7, 0),  # handed the newest entry: no lag, whatever a promoted replica counts
    (5, "10-1", "10-0", 7, 0),  # the newest entry was deleted after delivery
    (0, "0-0", None, 0, 0),  # an empty stream
    (3, "9-0", "10-0", 7, 3),  # Redis's own figure while entries wait
    (40, "9-0", "10-0", 7, 7),  # never more than the stream holds
    (None, "9-0", "10-0", 7, None),  # Redis cannot tell
])
def test_group_lag(reported: int | None, last_delivered: str, newest: str | None, length: int,
                   expected: int | None) -> None:
    assert group_lag(reported, last_delivered, newest, length) == expected
