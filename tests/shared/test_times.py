"""`from_local` reads the providers' fixed layouts itself: its answers must be strptime's."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.times import _layout, _read_fixed, from_local

# The provider formats (smsmode DLR and reply, Mx2) and a few others of the same kind.
FORMATS = ["%Y-%m-%d %H:%M:%S", "%d%m%Y-%H%M%S", "%Y%m%d", "%d/%m/%Y %H:%M", "%Y-%m-%dT%H:%M:%S"]


def strptime_or_none(text: str, fmt: str) -> datetime | None:
    try:
        return datetime.strptime(text, fmt)
    except ValueError:
        return None


@pytest.mark.parametrize("text, fmt", [
    ("2025-03-25 09:52:17", FORMATS[0]), ("25032025-095217", FORMATS[1]), ("2024-02-29 23:59:59", FORMATS[0]),
    ("0001-01-01 00:00:00", FORMATS[0]), ("9999-12-31 23:59:59", FORMATS[0]), ("20250325", FORMATS[2]),
])
def test_fixed_layouts_read_as_strptime(text: str, fmt: str) -> None:
    assert _read_fixed(text, fmt) == datetime.strptime(text, fmt)


@pytest.mark.parametrize("text, fmt", [
    ("2025-3-25 9:52:17", FORMATS[0]),  # strptime takes one digit; the fixed reader leaves it to strptime
    ("2025-03-25  09:52:17", FORMATS[0]),  # any run of spaces
    ("2025-02-30 09:52:17", FORMATS[0]),  # not a date
    ("2025-13-01 09:52:17", FORMATS[0]), ("0000-01-01 00:00:00", FORMATS[0]), ("2025-03-25 09:52:60", FORMATS[0]),
    ("2025-03-25t09:52:17", FORMATS[4]),  # strptime ignores the literal's case
    ("٢٠٢٥-03-25 09:52:17", FORMATS[0]),  # Unicode digits
    ("2025-03-25 09:52:17", "%Y-%m-%d %H:%M:%S.%f"), ("2025-03-25", "%Y-%m-%d %%"), ("09:52", "%H:%M"),
])
def test_other_texts_and_formats_are_left_to_strptime(text: str, fmt: str) -> None:
    assert _read_fixed(text, fmt) is None


def test_layouts_without_a_whole_date_or_with_a_repeated_field_are_not_fixed() -> None:
    assert _layout("%H:%M:%S") is None and _layout("%Y-%m-%d %Y") is None and _layout("%Y-%m-%d %Z") is None
    assert _layout("%Y-%m-%d %H:%M:%S") is not None


@given(text=st.text(alphabet="0123456789-: T/", min_size=6, max_size=21), fmt=st.sampled_from(FORMATS))
def test_the_fixed_reader_never_disagrees_with_strptime(text: str, fmt: str) -> None:
    found = _read_fixed(text, fmt)
    assert found is None or found == strptime_or_none(text, fmt)


@given(moment=st.datetimes(min_value=datetime(1000, 1, 1)), fmt=st.sampled_from(FORMATS))
def test_every_written_time_reads_back_as_strptime_reads_it(moment: datetime, fmt: str) -> None:
    text = moment.strftime(fmt)
    assert _read_fixed(text, fmt) == datetime.strptime(text, fmt)


def test_from_local_keeps_its_errors() -> None:
    with pytest.raises(ParseError, match="does not match"):
        from_local("2025-02-30 09:52:17", FORMATS[0], "Europe/Paris")
    assert from_local(" 2025-03-25 09:52:17 ", FORMATS[0], "Europe/Paris") == datetime.fromisoformat(
        "2025-03-25T08:52:17+00:00")
