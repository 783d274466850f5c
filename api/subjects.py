"""Subjects and scopes as the workers store them: pure, no I/O.

A subject is a phone number in any common form, normalized exactly as the workers normalize
numbers (`shared.phones.normalize_phone` with `HOOKSTREAM_DEFAULT_REGION`), so `0031612345678`,
`+31 6 12345678` and `31612345678` are one subject. Anything else is taken verbatim as an id the
workers stored (an Mx2 subscriberId, a CM channel id, a national number kept raw because no
region was set) — "a known id" is one that hookstream has stored as a subject (in consent, or as
the person of an event); that part needs the database and is decided by the queries.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from shared import fastphone
from shared.phones import SHORT_CODE_MAX_DIGITS, normalize_phone

MAX_SUBJECT_CHARS = 64
MAX_SCOPE_CHARS = 128
# Subjects a process remembers: two full bulk checks (100,000 subjects each), so a sender checking
# its list again finds it all parsed. Keys are stripped subjects of at most MAX_SUBJECT_CHARS, so a
# full memo holds ~40 MB at most (~15 MB of numbers); it is emptied when full.
MEMO_MAX = 200_000
_E164_LIKE = re.compile(r"\+\d+")
_DROP = str.maketrans("", "", fastphone.SEPARATORS)


class Subject(NamedTuple):
    """`value`: what to look up. `phone`: a valid number (always acceptable); otherwise an id that is
    acceptable only when known, and `reason` says why it is not a number. (A tuple: a bulk check
    builds 100,000, and a frozen dataclass costs twice as much to build.)"""

    value: str
    phone: bool
    reason: str | None = None


class InvalidSubject(ValueError):
    """A subject that cannot be looked up at all (empty, too long): 422 whatever the database holds."""


def classify(raw: str, default_region: str | None) -> Subject:
    text = raw.strip()
    if not text:
        raise InvalidSubject("empty subject")
    if len(text) > MAX_SUBJECT_CHARS:
        raise InvalidSubject(f"longer than {MAX_SUBJECT_CHARS} characters")
    if "\x00" in text:
        raise InvalidSubject("contains a NUL character (nothing stored can match it)")
    compact = fastphone.without_separators(text)
    digits = fastphone.digits_of(compact) if fastphone.ENABLED else None
    if digits is not None:  # `+…`, `00…` or 8+ digits: the common forms, parsed faster, same answer
        result = fastphone.e164_from_digits(digits)
        if result is not None:
            return Subject(result, True)
        return Subject(text, False, _why_not_a_number(text, default_region))
    # normalize_phone returns its input unchanged when it is not a number, and also when it is
    # already in E.164: so an E.164-looking value is asked in its `00` form, which a valid number
    # always changes (to `+…`), in one parse.
    probe = "00" + text[1:] if _E164_LIKE.fullmatch(text) else text
    result = normalize_phone(probe, default_region)
    if result is not None and result != probe:
        return Subject(result, True)
    return Subject(text, False, _why_not_a_number(text, default_region))


class Classifier:
    """`classify` for one region, remembering results (parsing a number costs ~13 µs).

    The memo's key is the subject stripped, as `classify` reads it: padding cannot make one subject
    many entries, and no key is longer than MAX_SUBJECT_CHARS (longer ones are refused, and a
    refusal is not remembered)."""

    def __init__(self, default_region: str | None, size: int = MEMO_MAX) -> None:
        self.region = default_region
        self.size = size
        self.memo: dict[str, Subject] = {}

    def __call__(self, raw: str) -> Subject:
        text = raw.strip()
        found = self.memo.get(text)
        if found is None:
            found = classify(text, self.region)  # raises InvalidSubject: not remembered
            if len(self.memo) >= self.size:
                self.memo.clear()
            self.memo[text] = found
        return found

    def many(self, raws: list[str]) -> tuple[list[Subject], list[dict[str, Any]]]:
        subjects: list[Subject] = []
        refused: list[dict[str, Any]] = []
        for index, raw in enumerate(raws):
            try:
                subjects.append(self(raw))
            except InvalidSubject as exc:
                refused.append({"index": index, "subject": raw[:80], "reason": str(exc)})
                subjects.append(Subject(raw, False))
        return subjects, refused


def _why_not_a_number(text: str, default_region: str | None) -> str:
    compact = text.translate(_DROP)
    digits = compact[1:] if compact.startswith("+") else compact
    if not digits.isdigit():
        return "not a phone number, and not an id hookstream has seen (such as an Mx2 subscriberId)"
    if compact.startswith("0") and not compact.startswith("00") and not default_region:
        return ("a national number (leading 0) needs HOOKSTREAM_DEFAULT_REGION; send it in international form "
                "(+…) instead")
    if len(digits) <= SHORT_CODE_MAX_DIGITS and not compact.startswith(("+", "00")):
        return f"a short code ({SHORT_CODE_MAX_DIGITS} digits or fewer), not a person's number"
    return "not a possible phone number"


def scope_forms(raw: str, default_region: str | None) -> list[str]:
    """The forms a scope may be stored in: as given, and normalized as the workers normalize our
    numbers (CM `to`, smsmode and GatewayAPI short codes and long numbers). Mx2 cguids and channel
    ids are stored as they came, so both are asked and the two rows, if both exist, are one scope."""
    text = raw.strip()
    normalized = normalize_phone(text, default_region) or text
    return [text] if normalized == text else [text, normalized]
