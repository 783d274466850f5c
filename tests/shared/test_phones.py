"""normalize_phone takes `fastphone` for `+<digits>` forms: its answers must be phonenumbers' answers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import fastphone, phones
from shared.phones import normalize_phone

REGIONS = (None, "NL", "FR", "US")


def slow(raw: str, region: str | None) -> str | None:
    """The phonenumbers path, without the cache and the fast path."""
    return phones._parse(raw, region)


def test_the_fast_path_is_on_for_the_verified_phonenumbers() -> None:
    import phonenumbers

    assert fastphone.ENABLED, f"phonenumbers {phonenumbers.__version__} is not {fastphone.VERIFIED_VERSION}"


@pytest.mark.parametrize("raw", [
    "+31612345678", "0031612345678", "31612345678", "+31 6 1234-5678", " (+33) 6.12.34.56.78 ", "33612345678",
    "0612345678", "3669", "451204", "1234567", "12345678", "+", "00", "+0", "", "   ", "+1 800 FLOWERS",
    "+٣١٦١٢٣٤٥٦٧٨", "00٣١٦١٢٣٤٥٦٧٨", "0031abc", "+310612345678", "+4402012345678",
    "+390612345678", "+5491112345678", "InfoSMS",
    "+" + "9" * 300, "00" + "1" * 30,
])
@pytest.mark.parametrize("region", REGIONS)
def test_listed_forms_answer_as_phonenumbers(raw: str, region: str | None) -> None:
    phones._normalize.cache_clear()
    assert normalize_phone(raw, region) == slow(raw, region)


def test_random_numbers_of_every_form_answer_as_phonenumbers() -> None:
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

    rng = random.Random(11)
    codes = sorted(COUNTRY_CODE_TO_REGION_CODE)
    for _ in range(6000):
        digits = f"{rng.choice(codes)}{'0' * rng.randrange(0, 2)}" + "".join(
            rng.choice("0123456789") for _ in range(rng.randrange(0, 14)))
        raw = rng.choice(["+", "00", "", "+ ", "00 "]) + digits
        region = rng.choice(REGIONS)
        assert normalize_phone(raw, region) == slow(raw, region), (raw, region)


@given(raw=st.text(alphabet="+0123456789 -.()/a٣", max_size=22), region=st.sampled_from(REGIONS))
def test_any_text_answers_as_phonenumbers(raw: str, region: str | None) -> None:
    assert phones._normalize.__wrapped__(raw, region) == slow(raw, region)


def test_values_longer_than_the_cap_are_not_numbers_and_are_not_remembered() -> None:
    phones._normalize.cache_clear()
    padded = " " * 100 + "+31 6 12345678" + "\t" * 100  # a number, however padded
    assert normalize_phone(padded) == "+31612345678"
    spread = "+31" + " " * (phones.MAX_PHONE_CHARS - 11) + "612345678"  # too long once stripped
    assert normalize_phone(f" {spread} ") == spread == slow(spread, None)
    assert normalize_phone("x" * 10_000) == "x" * 10_000
    assert phones._normalize.cache_info().currsize == 1  # the padded number, stripped
    assert normalize_phone(" " * 10_000) is None
