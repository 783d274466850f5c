"""The memos of long-lived processes stay bounded whatever they are sent.

Workers and the API remember what they parsed: phone numbers (`shared.phones`), the keyword
engine's characters (`shared.keywords`), the API's subjects (`api.subjects`). Each test feeds one
of them 100,000 hostile values in this process and bounds the growth of the process's resident
memory, measured from a baseline taken after a warm-up of the same kind of values. The same feeds
before the memos were bounded grew it by ~150 MB (long phone values), ~245 MB (all of Unicode's
code points) and ~55 MB (padded subjects).
"""

from __future__ import annotations

import gc
import random
import sys
from collections.abc import Callable, Iterator

import pytest

from api.subjects import MAX_SUBJECT_CHARS, Classifier, InvalidSubject
from shared import keywords, phones
from shared.events import Outcome
from shared.keywords import CHAR_MEMO_ENTRIES, MATCH_MEMO_ENTRIES, MATCH_MEMO_MAX_CHARS, KeywordPolicy, classify
from shared.phones import CACHE_ENTRIES, MAX_PHONE_CHARS, normalize_phone

HOSTILE = 100_000
WARM_UP = 2_000
MB = 1024 * 1024

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

_rng = random.Random(7)
# One random pool sliced at many offsets: distinct values in microseconds, not one random draw each.
_POOL = "".join(_rng.choices("0123456789+ -().abcXYZ", k=1 << 16))


def rss() -> int:
    """Resident memory of this process in bytes, after collecting garbage."""
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def growth(feed: Callable[[range], None], reset: Callable[[], None]) -> int:
    """RSS growth, in bytes, from feeding HOSTILE values after a warm-up of the same kind (which
    loads what the code loads lazily, such as phonenumbers' metadata of each country)."""
    feed(range(HOSTILE, HOSTILE + WARM_UP))
    reset()
    before = rss()
    feed(range(HOSTILE))
    return rss() - before


def text(i: int, length: int) -> str:
    """A distinct value of exactly `length` characters once stripped (digits, `+`, separators,
    letters)."""
    offset = (i * 7919) % (len(_POOL) - length)
    return f"{i:06d}{_POOL[offset:offset + length - 7]}x"


def long_values(indexes: range) -> Iterator[str]:
    """Just over the cap to a few thousand characters: never a number, never remembered."""
    return (text(i, MAX_PHONE_CHARS + 1 + i % 4000) for i in indexes)


def test_long_phone_values_are_not_remembered() -> None:
    def feed(indexes: range) -> None:
        for value in long_values(indexes):
            normalize_phone(value, "NL")

    assert growth(feed, phones._normalize.cache_clear) < 4 * MB
    assert phones._normalize.cache_info().currsize == 0


def test_the_phone_cache_holds_at_most_its_entries() -> None:
    """Values of exactly MAX_PHONE_CHARS, the largest kept: a full cache, documented as ~22 MB."""
    def feed(indexes: range) -> None:
        for i in indexes:
            normalize_phone(text(i, MAX_PHONE_CHARS), "NL")

    assert growth(feed, phones._normalize.cache_clear) < 32 * MB
    assert phones._normalize.cache_info().currsize == CACHE_ENTRIES
    assert normalize_phone(" 06 12345678 ", "NL") == "+31612345678"


def test_texts_covering_all_of_unicode_keep_the_character_tables_small() -> None:
    """Every code point of every plane once, 11–12 to a text (surrogates included: a decoded body
    can hold them); each table holds at most CHAR_MEMO_ENTRIES characters, ~1.5 MB."""
    policy = KeywordPolicy.default()
    step = -(-(sys.maxunicode + 1) // HOSTILE)  # ceiling: the texts cover every code point

    def feed(indexes: range) -> None:
        for i in indexes:
            start = (i * step) % (sys.maxunicode + 1)
            classify("".join(map(chr, range(start, min(start + step, sys.maxunicode + 1)))), policy)

    def reset() -> None:
        keywords._DROP_FORMAT.clear()
        keywords._TOKEN_CHARS.clear()

    assert growth(feed, reset) < 8 * MB
    assert len(keywords._DROP_FORMAT) <= CHAR_MEMO_ENTRIES and len(keywords._TOKEN_CHARS) <= CHAR_MEMO_ENTRIES
    assert classify("ARRÊT svp", policy).outcome is Outcome.OPT_OUT


def test_the_verdicts_a_policy_remembers_stay_few() -> None:
    """Distinct texts of the longest remembered length, each a run of one-letter words in a
    non-Latin script (the most tokens, each a string of its own); longer texts are not remembered."""
    policy = KeywordPolicy.default()
    half = MATCH_MEMO_MAX_CHARS // 2

    def feed(indexes: range) -> None:
        for i in indexes:
            classify(" ".join(chr(0x4E00 + (i * half + k) % 20_000) for k in range(half)), policy)
            classify("stop " * (MATCH_MEMO_MAX_CHARS // 5 + 1) + str(i), policy)

    assert growth(feed, policy._memo.clear) < 8 * MB
    assert len(policy._memo) <= MATCH_MEMO_ENTRIES
    assert all(len(text) <= MATCH_MEMO_MAX_CHARS for text, _ in policy._memo)
    assert classify("ARRÊT svp", policy).outcome is Outcome.OPT_OUT


def test_padded_subjects_are_one_entry_each() -> None:
    """1,000 numbers and ids, each padded 100 different ways (up to ~650 characters of whitespace),
    and ids too long to look up: one entry per subject, none for the refused."""
    classifier = Classifier(None)
    spaces = " \t\n\u00a0\u3000"

    def feed(indexes: range) -> None:
        for i in indexes:
            subject = f"+316{i % 500:08d}" if i % 2 else f"id-{i % 1000:06d}"
            pad = spaces[i % len(spaces)]
            if i % 10 == 0:
                with pytest.raises(InvalidSubject):
                    classifier(f"{pad}id-{i:06d}-{'x' * (MAX_SUBJECT_CHARS + i % 1000)}{pad}")
            else:
                classifier(pad * (i % 400) + subject + pad * (i // 400))

    assert growth(feed, classifier.memo.clear) < 4 * MB
    assert len(classifier.memo) <= 1000
    assert classifier("  +31 6 12345678\t").value == "+31612345678"
