"""Consent keyword engine: inbound SMS text → an Outcome (optout.md §1 rules, §2 table, §3 normalization).

Pure and fast: a policy precomputes its lookup tables once, so classify() is one normalization
pass plus a few set/dict lookups per token (no regex, no per-keyword loop on the hot path).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import groupby
from types import MappingProxyType

from shared.events import Outcome

# The version of the default keyword policy, recorded on every consent change it decided: raise it
# whenever a keyword, a filler or a matching rule changes, so that evidence names the rules applied.
POLICY_VERSION = "1"
MAX_FILLER_UNITS = 4  # §1 rule 2
OPT_OUTS = frozenset({Outcome.OPT_OUT, Outcome.OPT_OUT_ALL})
# Characters each translate table remembers (a key is one code point: only their number needs a
# bound). Real traffic uses a few hundred (GSM-7, accented Latin, emoji) to a few thousand (the
# ~3,500 common Chinese characters); texts walking through all of Unicode (1.1 million code points,
# ~245 MB if all were kept) empty a full table and start again. Full, a table holds ~1.5 MB.
CHAR_MEMO_ENTRIES = 8192
# Texts a policy remembers the verdict of (emptied when full): replies repeat (STOP, Yes, Stop please),
# and matching one costs 2–12 µs (a near-miss search is the dearest). Only short texts are kept:
# a verdict holds the text's tokens, up to ~3 kB for 64 characters of one-letter words in a
# non-Latin script, so a full memo holds ~6 MB at most (tests/shared/test_memory_bounds.py).
MATCH_MEMO_ENTRIES = 2048
MATCH_MEMO_MAX_CHARS = 64


class _CharMap(dict[int, str | None]):
    """A str.translate table filled on first sight of each character: Unicode is too big to prebuild.
    Emptied when it holds CHAR_MEMO_ENTRIES characters; a lookup that finds the character never
    pays for the check."""

    def __init__(self, rule: Callable[[str], str | None]) -> None:
        super().__init__()
        self.rule = rule

    def __missing__(self, code: int) -> str | None:
        if len(self) >= CHAR_MEMO_ENTRIES:
            self.clear()
        self[code] = value = self.rule(chr(code))
        return value


def _format_char(c: str) -> str | None:
    return None if unicodedata.category(c) == "Cf" or "\ufe00" <= c <= "\ufe0f" else c


def _token_char(c: str) -> str | None:
    cat = unicodedata.category(c)
    return None if cat == "Mn" else c if cat[0] in "LN" else " "


_DROP_FORMAT = _CharMap(_format_char)
_TOKEN_CHARS = _CharMap(_token_char)


def normalize(text: str) -> list[str]:
    """§3 steps 2–7, in order, so that every way a phone can send `ARRÊT` / `ＳＴＯＰ` is one token."""
    text = unicodedata.normalize("NFKC", text).translate(_DROP_FORMAT).casefold()
    return unicodedata.normalize("NFD", text).translate(_TOKEN_CHARS).split()


def _phrase(text: str) -> str:
    """A configured phrase in stored form (`OPT-OUT` → `opt out`), so config is written like users write."""
    phrase = " ".join(normalize(text))
    if not phrase:
        raise ValueError(f"keyword phrase {text!r} has no letters or digits")
    return phrase


def _phrases(texts: Iterable[str]) -> frozenset[str]:
    return frozenset(_phrase(t) for t in texts)


def _collapse(word: str) -> str:
    """`stooop` → `stop`: repeated letters collapse (§1 rule 3 near-miss)."""
    return "".join(ch for ch, _ in groupby(word))


def _one_edit(a: str, b: str) -> bool:
    """Damerau–Levenshtein distance exactly 1 (substitution, insertion, deletion or adjacent swap)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) > len(b):
        return a[i + 1:] == b[i:]
    if len(a) < len(b):
        return a[i:] == b[i + 1:]
    swapped = a[i + 1:i + 2] == b[i:i + 1] and a[i:i + 1] == b[i + 1:i + 2] and a[i + 2:] == b[i + 2:]
    return a[i + 1:] == b[i + 1:] or swapped


@dataclass(frozen=True, slots=True)
class KeywordPolicy:
    """The configurable data of §1–§2. Phrases are normalized on construction (`ARRÊT` is `arret`)."""

    keywords: Mapping[str, Outcome] = field(default_factory=dict, hash=False)  # phrase → category
    distinctive: frozenset[str] = frozenset()  # D: flags possible_opt_out anywhere in a message
    fillers: frozenset[str] = frozenset()  # words or phrases allowed around one keyword (rule 2)
    exact_only: frozenset[str] = frozenset()  # keywords valid only as the whole message (YES)
    all_words: frozenset[str] = frozenset({"all"})  # fillers that turn opt_out into opt_out_all
    # Derived lookup tables, built once in __post_init__.
    _starts: frozenset[str] = field(init=False, repr=False, compare=False, hash=False)
    _longest: int = field(init=False, repr=False, compare=False, hash=False)
    _compact: Mapping[str, str] = field(init=False, repr=False, compare=False, hash=False)
    _collapsed: Mapping[str, str] = field(init=False, repr=False, compare=False, hash=False)
    _swapped: Mapping[str, str] = field(init=False, repr=False, compare=False, hash=False)
    _long: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False, hash=False)
    _memo: dict[tuple[str, frozenset[str]], Match] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        keywords = {_phrase(k): Outcome(v) for k, v in self.keywords.items()}
        distinctive, all_words = _phrases(self.distinctive), _phrases(self.all_words)
        if unknown := (distinctive | _phrases(self.exact_only)) - keywords.keys():
            raise ValueError(f"distinctive/exact-only phrases that are not keywords: {sorted(unknown)}")
        fillers = _phrases(self.fillers) | all_words
        multi = [p.split() for p in (*keywords, *fillers) if " " in p]
        # Near-miss targets: opt-out keywords written without spaces (`opt out` → `optout`).
        compact: dict[str, str] = {}
        for phrase, outcome in keywords.items():
            if outcome in OPT_OUTS:
                compact.setdefault(phrase.replace(" ", ""), phrase)
        collapsed: dict[str, str] = {}
        swapped: dict[str, str] = {}
        for word, phrase in compact.items():
            collapsed.setdefault(_collapse(word), phrase)
            for i in range(len(word) - 1):
                if word[i] != word[i + 1]:
                    swapped.setdefault(word[:i] + word[i + 1] + word[i] + word[i + 2:], phrase)
        derived = {
            "keywords": MappingProxyType(keywords), "distinctive": distinctive, "fillers": fillers,
            "exact_only": _phrases(self.exact_only), "all_words": all_words,
            "_starts": frozenset(words[0] for words in multi), "_longest": max(map(len, multi), default=1),
            "_compact": MappingProxyType(compact), "_collapsed": MappingProxyType(collapsed),
            "_swapped": MappingProxyType(swapped), "_long": tuple((w, p) for w, p in compact.items() if len(w) >= 6),
            "_memo": {},
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @classmethod
    def default(cls) -> KeywordPolicy:
        """The §2 table: EN, FR, NL, DE, DA, NO, ES, IT."""
        groups = {
            Outcome.OPT_OUT: _DEFAULT_OPT_OUT, Outcome.OPT_OUT_ALL: "stopall, stop all",
            Outcome.OPT_IN: "start, unstop, subscribe, join, resume, yes, nonarret",
            Outcome.HELP: "help, info, aide, hulp, hilfe, ayuda, aiuto",
        }
        keywords = {word: outcome for outcome, words in groups.items() for word in words.split(", ")}
        distinctive, fillers = _DEFAULT_DISTINCTIVE.split(", "), _DEFAULT_FILLERS.split(", ")
        return cls(keywords, frozenset(distinctive), frozenset(fillers), frozenset({"yes"}))

    def with_keywords(self, keywords: Mapping[str, Outcome], *, distinctive: bool = False,
                      exact_only: bool = False) -> KeywordPolicy:
        """A copy with these keywords added or redefined (e.g. a scope's own opt-out word)."""
        added = {_phrase(k): v for k, v in keywords.items()}
        new = frozenset(added)
        return replace(
            self, keywords={**self.keywords, **added},
            distinctive=(self.distinctive - new) | (new if distinctive else frozenset()),
            exact_only=(self.exact_only - new) | (new if exact_only else frozenset()),
        )

    def without(self, *phrases: str) -> KeywordPolicy:
        """A copy without these keywords: the † rows (and REMOVE, TD…) can be disabled per scope."""
        gone = _phrases(phrases)
        return replace(self, keywords={k: v for k, v in self.keywords.items() if k not in gone},
                       distinctive=self.distinctive - gone, exact_only=self.exact_only - gone)

    def _phrase_at(self, tokens: tuple[str, ...], i: int) -> str:
        """The longest keyword or filler phrase starting at tokens[i], else the token itself."""
        if tokens[i] in self._starts:
            for size in range(min(self._longest, len(tokens) - i), 1, -1):
                phrase = " ".join(tokens[i:i + size])
                if phrase in self.keywords or phrase in self.fillers:
                    return phrase
        return tokens[i]

    def _near_miss(self, word: str) -> str | None:
        """The opt-out keyword `word` is a near-miss of (§1 rule 3), if any."""
        hit = self._compact.get(word) or self._collapsed.get(_collapse(word)) or self._swapped.get(word)
        return hit or next((phrase for target, phrase in self._long if _one_edit(word, target)), None)


_DEFAULT_OPT_OUT = (
    "stop, quit, end, cancel, unsubscribe, revoke, opt out, optout, unsub, remove, td, "  # EN
    "arret, arrete, arrett, desabonner, desinscrire, uit, stoppen, afmelden, "  # FR, NL
    "stopp, abmelden, abbestellen, afmeld, baja, parar, detener, cancelar, annulla"  # DE, DA, NO, ES, IT
)
_DEFAULT_DISTINCTIVE = (
    "stop, unsubscribe, revoke, opt out, optout, unsub, stopall, stop all, arret, arrete, arrett, "
    "desabonner, desinscrire, stoppen, afmelden, stopp, abmelden, abbestellen, afmeld"
)
_DEFAULT_FILLERS = (
    "please, pls, thanks, thank you, svp, stp, merci, s il vous plait, aub, alstublieft, graag, bitte, "
    "danke, tak, venligst, por favor, gracias, per favore, grazie, now, ok, "  # courtesy
    "sms, text, texts, texting, message, messages, msg, berichten, nachrichten, beskeder, mensajes, "
    "messaggi, me, us, moi, mij, mich, mig, au, all"  # messaging nouns, pronouns, French `au`
)


@dataclass(frozen=True, slots=True)
class Match:
    """The engine's verdict plus the evidence the audit ledger keeps (§6)."""

    outcome: Outcome
    keyword: str | None = None  # normalized keyword, or the near-miss target
    leased_keyword: str | None = None  # the scope's leased keyword seen in the message
    rule: str = "none"  # exact | filler | distinctive | near_miss | none | empty
    tokens: tuple[str, ...] = ()


@lru_cache(maxsize=256)
def _leased_forms(leased: frozenset[str]) -> frozenset[str]:
    return frozenset(" ".join(normalize(k)) for k in leased)


def classify(text: str | None, policy: KeywordPolicy, leased: frozenset[str] = frozenset()) -> Match:
    """Classify one inbound text (§1), given the scope's leased keywords on a shared short code.

    A verdict depends on nothing else, so the policy remembers it for short texts (MATCH_MEMO_*)."""
    if not text or len(text) > MATCH_MEMO_MAX_CHARS:
        return _classify(text, policy, leased)
    key = (text, frozenset(leased))
    found = policy._memo.get(key)
    if found is None:
        found = _classify(text, policy, leased)
        if len(policy._memo) >= MATCH_MEMO_ENTRIES:
            policy._memo.clear()
        policy._memo[key] = found
    return found


def _classify(text: str | None, policy: KeywordPolicy, leased: frozenset[str]) -> Match:
    tokens = tuple(normalize(text)) if text else ()
    if not tokens:
        return Match(Outcome.NONE, rule="empty")
    leased = _leased_forms(frozenset(leased)) if leased else frozenset()
    seen = next((t for t in tokens if t in leased), None)
    body = tokens[1:] if tokens[0] in leased else tokens  # §3 step 8
    found: list[str] = []  # keyword units, in order
    others: list[str] = []  # tokens that are neither keyword nor filler
    fillers, upgrade, i = 0, False, 0
    while i < len(body):
        phrase = policy._phrase_at(body, i)
        i += phrase.count(" ") + 1
        if phrase in policy.keywords:
            found.append(phrase)
        elif phrase in policy.fillers or phrase.isdigit() or phrase in leased:
            fillers += 1
            upgrade = upgrade or phrase in policy.all_words
        else:
            others.append(phrase)

    def verdict(outcome: Outcome, keyword: str | None, rule: str) -> Match:
        return Match(outcome, keyword, seen, rule, tokens)

    if found and not others and len(set(found)) == 1:  # one keyword, maybe repeated
        keyword = found[0]
        outcome = policy.keywords[keyword]
        if not fillers:
            return verdict(outcome, keyword, "exact")
        if fillers <= MAX_FILLER_UNITS and keyword not in policy.exact_only:
            if upgrade and outcome is Outcome.OPT_OUT:
                outcome = Outcome.OPT_OUT_ALL
            return verdict(outcome, keyword, "filler")
    hit = next((k for k in found if k in policy.distinctive), None)
    hit = hit or next((t for t in body if t in policy.distinctive), None)  # even inside another phrase
    if hit:
        return verdict(Outcome.POSSIBLE_OPT_OUT, hit, "distinctive")
    if not found and others:
        # One non-filler word (maybe repeated), or letters typed apart (`s t o p`).
        spaced = len(others) > 1 and all(len(o) == 1 for o in others)
        word = "".join(others) if spaced else others[0] if len(set(others)) == 1 else None
        if word and (target := policy._near_miss(word)):
            return verdict(Outcome.POSSIBLE_OPT_OUT, target, "near_miss")
    return verdict(Outcome.NONE, None, "none")
