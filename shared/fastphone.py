"""A faster, equal phone parse for the one form that dominates provider traffic: `+` and digits.

Why: `phonenumbers.parse` costs ~13 µs a number, mostly in generic work (RFC 3966 contexts,
extensions, Unicode digits, vanity letters) that a string of ASCII digits never needs: 100,000
subjects spent 1.3 s there in the API's bulk check, and a worker meets a new number in most
webhooks. `shared.phones` and `api.subjects` both use it. This runs the steps `parse` runs
for `+<ASCII digits>` with no region — country code, national prefix, lengths, Italian leading
zeros — then the same length test and E.164 formatting as `shared.phones._parse`: 3–4× faster.

It uses private functions of phonenumbers, so it is enabled only for the version it was checked
against (VERIFIED_VERSION); any other version falls back to phonenumbers (slower, same answers).
tests/shared/test_phones.py and tests/api/test_units.py compare it with the phonenumbers path on
random and listed inputs; after a phonenumbers upgrade, run them with the new version and update
VERIFIED_VERSION.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import phonenumberutil as pu
from phonenumbers.phonemetadata import PhoneMetadata

VERIFIED_VERSION = "9.0.43"
ENABLED = phonenumbers.__version__ == VERIFIED_VERSION

_KEEP_UNSTRIPPED = (pu.ValidationResult.TOO_SHORT, pu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
                    pu.ValidationResult.INVALID_LENGTH)
_POSSIBLE = (pu.ValidationResult.IS_POSSIBLE, pu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY)
_MIN_NSN, _MAX_NSN = 2, 17  # phonenumbers' _MIN_LENGTH_FOR_NSN, _MAX_LENGTH_FOR_NSN


def e164_from_digits(digits: str) -> str | None:
    """What `normalize_phone("+" + digits)` gives when it parses; None when it does not.

    `digits`: ASCII digits only (the caller checks). The steps of `phonenumbers.parse` for that
    input, then `is_possible_number` (the length test against the same metadata) and E.164
    formatting (`+`, country code, national significant number — which, with its Italian leading
    zeros, is exactly the digits left here), without building a PhoneNumber.
    """
    if len(digits) <= _MIN_NSN:  # parse: not viable / too short after the `+`
        return None
    country_code, rest = pu._extract_country_code(digits)
    if country_code == 0:  # parse: invalid country code
        return None
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, pu.region_code_for_country_code(country_code))
    if metadata is None or len(rest) < _MIN_NSN:
        return None
    _, stripped, _ = pu._maybe_strip_national_prefix_carrier_code(rest, metadata)
    length = pu._test_number_length(stripped, metadata)
    if length not in _KEEP_UNSTRIPPED:
        rest = stripped
    elif stripped != rest:
        length = pu._test_number_length(rest, metadata)
    if not _MIN_NSN <= len(rest) <= _MAX_NSN or length not in _POSSIBLE:
        return None
    return f"+{country_code}{rest}"


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
