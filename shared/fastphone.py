"""A faster, equal phone parse for the one form that dominates provider traffic: `+` and digits.

Why: `phonenumbers.parse` costs ~13 µs a number, mostly in generic work (RFC 3966 contexts,
extensions, Unicode digits, vanity letters) that a string of ASCII digits never needs: 100,000
subjects spent 1.3 s there in the API's bulk check, and a worker meets a new number in most
webhooks. `shared.phones` and `api.subjects` both use it. This runs the steps `parse` runs
for `+<ASCII digits>` with no region — country code, national prefix, lengths, Italian leading
zeros — then the same length test and E.164 formatting as `shared.phones._parse`.

What a step needs from a country's metadata is looked up once per country, not once per number
(the metadata, its national prefix pattern compiled, the length test's answer for each length),
and phonenumbers' own prefix stripping runs only when that pattern matches: ~1 µs a number.

It uses private functions of phonenumbers, so it is enabled only for the version it was checked
against (VERIFIED_VERSION); any other version falls back to phonenumbers (slower, same answers).
tests/shared/test_phones.py and tests/api/test_units.py compare it with the phonenumbers path on
random and listed inputs; after a phonenumbers upgrade, run them with the new version and update
VERIFIED_VERSION.
"""

from __future__ import annotations

import re
from functools import cache

import phonenumbers
from phonenumbers import phonenumberutil as pu
from phonenumbers.phonemetadata import PhoneMetadata

VERIFIED_VERSION = "9.0.43"
ENABLED = phonenumbers.__version__ == VERIFIED_VERSION

_KEEP_UNSTRIPPED = (pu.ValidationResult.TOO_SHORT, pu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
                    pu.ValidationResult.INVALID_LENGTH)
_POSSIBLE = (pu.ValidationResult.IS_POSSIBLE, pu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY)
_MIN_NSN, _MAX_NSN = 2, 17  # phonenumbers' _MIN_LENGTH_FOR_NSN, _MAX_LENGTH_FOR_NSN
# Country calling codes spelled as digits. `_extract_country_code` tries the first 1, 2, then 3
# digits (its _MAX_LENGTH_COUNTRY_CODE) as a number: on ASCII digits with no leading 0, looking the
# same prefix up as text is the same test.
_CODES = {str(code): code for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}
_CODE_LENGTHS = (1, 2, 3)


@cache
def _country(country_code: int) -> tuple[PhoneMetadata | None, re.Pattern[str] | None]:
    """The country's metadata and its national prefix pattern (None: nothing to strip)."""
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, pu.region_code_for_country_code(country_code))
    prefix = metadata.national_prefix_for_parsing if metadata is not None else None
    return metadata, re.compile(prefix) if prefix else None


@cache
def _length_test(country_code: int, length: int) -> int:
    """`_test_number_length` for any national number of `length` digits: it reads only the length."""
    metadata, _ = _country(country_code)
    if metadata is None:  # not asked: e164_from_digits stops before
        return pu.ValidationResult.INVALID_LENGTH
    return pu._test_number_length("0" * length, metadata)


@cache
def _possible_lengths(country_code: int) -> frozenset[int]:
    """The national number lengths that pass both length tests below as they are."""
    return frozenset(length for length in range(_MIN_NSN, _MAX_NSN + 1)
                     if _length_test(country_code, length) in _POSSIBLE)


def e164_from_digits(digits: str) -> str | None:
    """What `normalize_phone("+" + digits)` gives when it parses; None when it does not.

    `digits`: ASCII digits only (the caller checks). The steps of `phonenumbers.parse` for that
    input, then `is_possible_number` (the length test against the same metadata) and E.164
    formatting (`+`, country code, national significant number — which, with its Italian leading
    zeros, is exactly the digits left here), without building a PhoneNumber.
    """
    if len(digits) <= _MIN_NSN or digits[0] == "0":  # parse: too short after the `+`; no code starts with 0
        return None
    for size in _CODE_LENGTHS:
        country_code = _CODES.get(digits[:size])
        if country_code is not None:
            break
    else:  # parse: invalid country code
        return None
    rest = digits[size:]
    metadata, prefix = _country(country_code)
    if metadata is None:
        return None
    if prefix is None or not prefix.match(rest):
        # Nothing to strip (most numbers): the length tests alone decide, and the E.164 form is the
        # input's own digits (the code's digits are the prefix found above).
        return "+" + digits if len(rest) in _possible_lengths(country_code) else None
    if len(rest) < _MIN_NSN:
        return None
    _, stripped, _ = pu._maybe_strip_national_prefix_carrier_code(rest, metadata)
    length = _length_test(country_code, len(stripped))
    if length not in _KEEP_UNSTRIPPED:
        rest = stripped
    elif stripped != rest:
        length = _length_test(country_code, len(rest))
    if not _MIN_NSN <= len(rest) <= _MAX_NSN or length not in _POSSIBLE:
        return None
    return f"+{country_code}{rest}"


SEPARATORS = " -.()/"  # what normalize_phone drops before reading a number


def without_separators(text: str) -> str:
    """`text` without SEPARATORS; `str.translate` costs ~0.37 µs even when there is none to drop."""
    for separator in SEPARATORS:
        if separator in text:
            text = text.replace(separator, "")
    return text


def digits_of(compact: str) -> str | None:
    """The digits `normalize_phone` would parse as `+<digits>` with no region, for an input
    (already stripped of ` -.()/`) that has only ASCII digits there; None for every other form."""
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    elif len(compact) >= 8 and not compact.startswith("0"):
        digits = compact
    else:
        return None
    return digits if digits.isascii() and digits.isdigit() else None
