"""The consent keyword engine against optout.md: every §7 example, plus normalization edge cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import keywords
from shared.events import Outcome
from shared.keywords import KeywordPolicy, Match, classify, normalize

POLICY = KeywordPolicy.default()

OUT, ALL, IN, HELP = Outcome.OPT_OUT, Outcome.OPT_OUT_ALL, Outcome.OPT_IN, Outcome.HELP
MAYBE, NONE = Outcome.POSSIBLE_OPT_OUT, Outcome.NONE

# optout.md §7: (number, message, leased keywords, outcome).
EXAMPLES: list[tuple[int, str, frozenset[str], Outcome]] = [
    (1, "STOP", frozenset(), OUT),
    (2, "STOP!!!", frozenset(), OUT),
    (3, "🛑 STOP 🛑", frozenset(), OUT),
    (4, "ＳＴＯＰ", frozenset(), OUT),
    (5, "STOP\u200b", frozenset(), OUT),
    (6, "Stop please", frozenset(), OUT),
    (7, "Please stop", frozenset(), OUT),
    (8, "Stop. Thank you", frozenset(), OUT),
    (9, "Stop texting me", frozenset(), OUT),
    (10, "STOP 12345", frozenset(), OUT),
    (11, "REVOKE", frozenset(), OUT),
    (12, "Opt out", frozenset(), OUT),
    (13, "OPT-OUT", frozenset(), OUT),
    (14, "Cancel", frozenset(), OUT),
    (15, "please cancel", frozenset(), OUT),
    (16, "STOPALL", frozenset(), ALL),
    (17, "STOP ALL messages please", frozenset(), ALL),
    (18, "unsubscribe all", frozenset(), ALL),
    (19, "START", frozenset(), IN),
    (20, "Unstop", frozenset(), IN),
    (21, "YES", frozenset(), IN),
    (22, "Yes please", frozenset(), NONE),
    (23, "HELP", frozenset(), HELP),
    (24, "Can you help me with my order?", frozenset(), NONE),
    (25, "Cancel my appointment", frozenset(), NONE),
    (26, "Stopwatch", frozenset(), NONE),
    (27, "stop sending me these", frozenset(), MAYBE),
    (28, "don't stop", frozenset(), MAYBE),
    (29, "Stop by the store at 5", frozenset(), MAYBE),
    (30, "We have got to STOP this bill!", frozenset(), MAYBE),
    (31, "I want to unsubscribe", frozenset(), MAYBE),
    (32, "STOP START", frozenset(), MAYBE),
    (33, "STOPPP", frozenset(), MAYBE),
    (34, "Stpo", frozenset(), MAYBE),
    (35, "S T O P", frozenset(), MAYBE),
    (36, "No", frozenset(), NONE),
    (37, "Leave me alone", frozenset(), NONE),
    (38, "", frozenset(), NONE),
    (38, " \t\r\n\u00a0\u3000 ", frozenset(), NONE),
    (39, "👍", frozenset(), NONE),
    (40, "ARRÊT", frozenset(), OUT),
    (41, "arrêt svp", frozenset(), OUT),
    (42, "STOP SMS", frozenset(), OUT),
    (43, "Stop au 36180", frozenset(), OUT),
    (44, "Aide", frozenset(), HELP),
    (45, "Oui", frozenset(), NONE),
    (46, "Arrêt de bus en travaux", frozenset(), MAYBE),
    (47, "UIT", frozenset(), OUT),
    (48, "Ik wil stoppen met deze berichten", frozenset(), MAYBE),
    (49, "Stopp bitte", frozenset(), OUT),
    (50, "Bitte keine SMS mehr", frozenset(), NONE),
    (51, "foo stop", frozenset({"foo"}), OUT),
    (52, "stop foo", frozenset({"foo"}), OUT),
    (53, "foo stop all", frozenset({"foo"}), ALL),
    (54, "foo hello world", frozenset({"foo"}), NONE),
    (55, "foo", frozenset({"foo"}), NONE),
    (56, "foo start", frozenset({"foo"}), IN),
    (57, "SPORT STOP", frozenset({"sport"}), OUT),
    (58, "BAJA", frozenset(), OUT),
    (59, "La temperatura baja", frozenset(), NONE),
    (60, "ANNULLA", frozenset(), OUT),
]


def test_every_section_7_example_is_listed() -> None:
    assert sorted({n for n, *_ in EXAMPLES}) == list(range(1, 61))


@pytest.mark.parametrize(("text", "leased", "outcome"), [e[1:] for e in EXAMPLES],
                         ids=[f"#{n} {text!r}" for n, text, *_ in EXAMPLES])
def test_optout_md_examples(text: str, leased: frozenset[str], outcome: Outcome) -> None:
    assert classify(text, POLICY, leased).outcome is outcome


MORE: list[tuple[str, Outcome]] = [
    ("Arrête", OUT),  # accent on a second keyword form
    ("ARRETT", OUT),
    ("désabonner", OUT),
    ("Stop\u00a0please", OUT),  # NBSP
    ("STOP\n", OUT),
    ("\ufeffS\u200dT\u00adOP\u200e", OUT),  # BOM, ZWJ, soft hyphen, bidi mark
    ("STOP\ufe0f", OUT),  # variation selector
    ("sToP", OUT),
    ("𝐒𝐓𝐎𝐏", OUT),  # math bold
    ("ⓈⓉⓄⓅ", OUT),  # circled
    ("ﬆop", OUT),  # ligature
    ("ѕтор", NONE),  # Cyrillic look-alike is not folded
    ("Stop 36180 svp merci", OUT),
    ("Stop s'il vous plaît", OUT),  # a four-token filler is one unit
    ("Stop, por favor", OUT),
    ("AFMELD", OUT),  # Danish
    ("STOPP", OUT),  # Norwegian/German: a keyword, not a near-miss of STOP
    ("stoppen", OUT),  # Dutch, distinctive
    ("optout", OUT),
    ("opt out now please", OUT),
    ("I want to opt out", MAYBE),  # a two-token distinctive keyword inside a sentence
    ("unsubscibe", MAYBE),  # one edit, 6+ letters
    ("stooop", MAYBE),
    ("s-t-o-p", MAYBE),
    ("stop stop", OUT),
    ("stop stop all", MAYBE),  # two different keywords (`stop`, `stop all`)
    ("stop please now ok thanks", OUT),  # four filler units
    ("stop please now ok thanks merci", MAYBE),  # five: not rule 2, but STOP is distinctive
    ("cancel please now ok thanks merci", NONE),
    ("help stop", MAYBE),
    ("help please", HELP),
    ("yes yes", IN),
    ("remove me", OUT),
    ("Stop it!", MAYBE),
    ("foo stop", MAYBE),  # without a leased keyword `foo` is just a word
    ("end", OUT),
    ("The end", NONE),
    ("stop all", ALL),
    ("all", NONE),
    ("thank you", NONE),
    ("stp", NONE),  # filler only (s'te plaît)
    ("Stopwatch", NONE),
    ("12345", NONE),
]


@pytest.mark.parametrize(("text", "outcome"), MORE, ids=[repr(t) for t, _ in MORE])
def test_more_messages(text: str, outcome: Outcome) -> None:
    assert classify(text, POLICY).outcome is outcome


def test_none_text() -> None:
    assert classify(None, POLICY) == Match(Outcome.NONE, rule="empty")


@pytest.mark.parametrize(("text", "expected"), [
    ("STOP!!!", ["stop"]),
    ("ARRÊT", ["arret"]),
    ("ＳＴＯＰ ３６１８０", ["stop", "36180"]),
    ("Straße", ["strasse"]),
    ("Ærø  Ø", ["ærø", "ø"]),
    ("s'il vous plaît", ["s", "il", "vous", "plait"]),
    ("OPT-OUT_now", ["opt", "out", "now"]),
    ("a\u200bb\u2060c", ["abc"]),
    ("🛑stop🛑", ["stop"]),
    ("\u00a0\u3000", []),
    ("", []),
    ("ѕтор", ["ѕтор"]),
])
def test_normalize(text: str, expected: list[str]) -> None:
    assert normalize(text) == expected


def test_match_evidence() -> None:
    assert classify("Stop. Thank you", POLICY) == Match(OUT, "stop", None, "filler", ("stop", "thank", "you"))
    assert classify("OPT-OUT", POLICY) == Match(OUT, "opt out", None, "exact", ("opt", "out"))
    assert classify("ARRÊT", POLICY).keyword == "arret"
    assert classify("unsubscribe all", POLICY) == Match(ALL, "unsubscribe", None, "filler", ("unsubscribe", "all"))
    assert classify("don't stop", POLICY).rule == "distinctive"
    near = classify("STOPPP", POLICY)
    assert (near.keyword, near.rule) == ("stop", "near_miss")
    assert classify("unsubscibe", POLICY).keyword == "unsubscribe"
    assert classify("Cancel my appointment", POLICY) == Match(NONE, None, None, "none", ("cancel", "my", "appointment"))


def test_leased_keyword_is_reported() -> None:
    assert classify("foo stop", POLICY, frozenset({"foo"})) == Match(OUT, "stop", "foo", "exact", ("foo", "stop"))
    assert classify("stop foo", POLICY, frozenset({"foo"})).leased_keyword == "foo"
    assert classify("FÔO Stop", POLICY, frozenset({"fôo"})).outcome is OUT  # leased forms are normalized too
    assert classify("foo", POLICY, frozenset({"foo"})) == Match(NONE, None, "foo", "none", ("foo",))
    assert classify("stop", POLICY, frozenset({"foo"})).leased_keyword is None


def test_policy_without_a_keyword() -> None:
    policy = POLICY.without("remove", "TD")
    assert classify("remove", POLICY).outcome is OUT
    assert classify("remove", policy).outcome is NONE
    assert classify("td please", policy).outcome is NONE
    assert classify("stop", policy).outcome is OUT
    assert "remove" not in policy.keywords and "remove" in POLICY.keywords


def test_policy_without_a_distinctive_keyword() -> None:
    policy = POLICY.without("Désabonner")
    assert "desabonner" not in policy.distinctive
    assert classify("je veux me désabonner", POLICY).outcome is MAYBE
    assert classify("je veux me désabonner", policy).outcome is NONE


def test_policy_with_keywords() -> None:
    policy = POLICY.with_keywords({"Afslut": OUT, "Begynd": IN}, distinctive=True)
    assert classify("AFSLUT tak", policy) == Match(OUT, "afslut", None, "filler", ("afslut", "tak"))
    assert classify("jeg vil afslutte", policy).outcome is NONE
    assert classify("jeg vil afslut nu", policy).outcome is MAYBE
    assert classify("begynd", policy).outcome is IN
    assert classify("afslut", POLICY).outcome is NONE
    redefined = POLICY.with_keywords({"stop": OUT})  # redefined without distinctive=True
    assert classify("don't stop", redefined).outcome is NONE
    exact = POLICY.with_keywords({"oui": IN}, exact_only=True)
    assert (classify("Oui", exact).outcome, classify("oui merci", exact).outcome) == (IN, NONE)


def test_policy_is_immutable_and_normalized() -> None:
    policy = KeywordPolicy({"ARRÊT": OUT, "Opt-Out": OUT}, distinctive=frozenset({"arrêt"}))
    assert dict(policy.keywords) == {"arret": OUT, "opt out": OUT}
    assert policy.distinctive == frozenset({"arret"})
    with pytest.raises(TypeError):
        policy.keywords["stop"] = OUT  # type: ignore[index]
    with pytest.raises(AttributeError):
        policy.fillers = frozenset()  # type: ignore[misc]
    assert KeywordPolicy.default() == POLICY
    assert hash(KeywordPolicy.default()) == hash(POLICY)


def test_policy_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        KeywordPolicy({"!!!": OUT})
    with pytest.raises(ValueError):
        KeywordPolicy({"stop": OUT}, distinctive=frozenset({"halt"}))


@settings(max_examples=300, deadline=None)
@given(st.text(), st.frozensets(st.text(max_size=5), max_size=2))
def test_classify_never_raises(text: str, leased: frozenset[str]) -> None:
    match = classify(text, POLICY, leased)
    assert isinstance(match.outcome, Outcome)
    assert match.tokens == tuple(normalize(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["stop", "STOP", "please", "all", "start", "x", "s", "36180", " ", "!", "é"])))
def test_classify_never_raises_on_keyword_soup(words: list[str]) -> None:
    assert isinstance(classify(" ".join(words), POLICY).outcome, Outcome)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70), st.frozensets(st.sampled_from(["foo", "bar"]), max_size=2))
def test_a_remembered_verdict_is_the_verdict(text: str, leased: frozenset[str]) -> None:
    policy = KeywordPolicy.default()
    assert classify(text, policy, leased) == classify(text, policy, leased) == keywords._classify(text, policy, leased)


def test_each_policy_remembers_its_own_verdicts() -> None:
    assert classify("halt", POLICY).outcome is Outcome.NONE
    assert classify("halt", POLICY.with_keywords({"halt": Outcome.OPT_OUT})).outcome is Outcome.OPT_OUT
    assert classify("halt", POLICY).outcome is Outcome.NONE
