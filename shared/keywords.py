"""Keyword engine (stub: being written)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import Outcome


@dataclass(frozen=True, slots=True)
class Match:
    outcome: Outcome
    keyword: str | None = None
    leased_keyword: str | None = None


@dataclass(frozen=True, slots=True)
class KeywordPolicy:
    @classmethod
    def default(cls) -> "KeywordPolicy":
        return cls()


def classify(text: str | None, policy: KeywordPolicy, leased: frozenset[str] = frozenset()) -> Match:
    return Match(Outcome.NONE)
