"""`from_local` reads the providers' fixed layouts itself: its answers must be strptime's. Durations and
command-line times have one grammar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.times import _layout, _read_fixed, from_local, parse_duration, parse_moment

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


# -- the one grammar of durations and command-line times ---------------------------------------

NOW = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)), ("2h", timedelta(hours=2)),
    ("7d", timedelta(days=7)), ("1w", timedelta(weeks=1)), ("2W", timedelta(weeks=2)), ("24H", timedelta(days=1)),
    ("1.5h", timedelta(minutes=90)), ("0.5d", timedelta(hours=12)), (" 30m ", timedelta(minutes=30)),
    ("2 h", timedelta(hours=2)), ("3600", timedelta(hours=1)), ("0", timedelta(0)), ("0s", timedelta(0)),
])
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", "h", "2x", "-2h", "+2h", "2hours", "2h ago", "1h30m", ".5h", "1e3", "inf", "nan", "2 h 3", "٣h",
    "9" * 30 + "w",
])
def test_durations_refuse_anything_else(text: str) -> None:
    with pytest.raises(ParseError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "expected"), [
    # ages: a duration with its unit, that long before now
    ("90s", NOW - timedelta(seconds=90)), ("15m", NOW - timedelta(minutes=15)), ("2h", NOW - timedelta(hours=2)),
    ("7d", NOW - timedelta(days=7)), ("1w", NOW - timedelta(weeks=1)), ("2W", NOW - timedelta(weeks=2)),
    ("1.5h", NOW - timedelta(minutes=90)),
    # named UTC days: their midnight
    ("today", datetime(2025, 6, 1, tzinfo=UTC)), ("yesterday", datetime(2025, 5, 31, tzinfo=UTC)),
    (" Yesterday ", datetime(2025, 5, 31, tzinfo=UTC)),
    # ISO-8601: UTC without an offset
    ("2025-05-01T10:00:00Z", datetime(2025, 5, 1, 10, tzinfo=UTC)),
    ("2025-05-01 10:00", datetime(2025, 5, 1, 10, tzinfo=UTC)),
    ("2025-05-01T12:00:00+02:00", datetime(2025, 5, 1, 10, tzinfo=UTC)),
    ("2025-05-01", datetime(2025, 5, 1, tzinfo=UTC)),
    ("20250501", datetime(2025, 5, 1, tzinfo=UTC)),  # a bare number is never an age
])
def test_moments(text: str, expected: datetime) -> None:
    assert parse_moment(text, NOW) == expected


def test_named_days_are_utc_days() -> None:
    late_in_new_york = datetime(2025, 6, 1, 23, 30, tzinfo=timezone(timedelta(hours=-4)))  # 2 June, UTC
    assert parse_moment("today", late_in_new_york) == datetime(2025, 6, 2, tzinfo=UTC)


@pytest.mark.parametrize("text", [
    "", "2h ago", "-2h", "12x", "3600", "tomorrow", "last week", "2025-13-01", "2025-05-01T25:00",
    "99999999w",  # before the year 1
])
def test_moments_refuse_anything_else(text: str) -> None:
    with pytest.raises(ParseError, match="ISO-8601|before the year 1"):
        parse_moment(text, NOW)
