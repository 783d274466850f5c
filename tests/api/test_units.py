"""The pure parts: subjects, scopes, answers against the workers' rule, cursors, the command line."""

from __future__ import annotations

import argparse
import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import cursor
from api.answers import Row, answer, winner
from api.config import ApiConfig
from api.subjects import InvalidSubject, classify, scope_forms
from hookstream.api import cmd_api, register
from shared import fastphone, phones
from shared.consent import OPTED_IN, OPTED_OUT, ConsentRow, effective
from shared.erasure import keyed_hash, notations
from shared.errors import ConfigError
from shared.feed import Position
from shared.phones import normalize_phone
from shared.settings import Settings

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("raw, region, value, phone", [
    ("+31612345678", None, "+31612345678", True),
    ("0031612345678", None, "+31612345678", True),
    ("31612345678", None, "+31612345678", True),
    ("+31 (0)6 1234 5678", None, "+31612345678", True),
    ("06 12345678", "NL", "+31612345678", True),
    ("0612345678", None, "0612345678", False),
    ("3669", None, "3669", False),
    ("xct7jy", None, "xct7jy", False),
    ("+12", None, "+12", False),
    ("+0123456789", None, "+0123456789", False),
    ("  +4587654321 ", None, "+4587654321", True),
])
def test_classify(raw: str, region: str | None, value: str, phone: bool) -> None:
    found = classify(raw, region)
    assert (found.value, found.phone) == (value, phone)
    assert (found.reason is None) == phone


@pytest.mark.parametrize("raw", ["", "   ", "x" * 65, "+316\x0012345678"])
def test_subjects_that_cannot_be_looked_up(raw: str) -> None:
    with pytest.raises(InvalidSubject):
        classify(raw, None)


digits = st.text(alphabet="0123456789", min_size=1, max_size=16)
numbers = st.one_of(digits, digits.map("+".__add__), digits.map("00".__add__), digits.map(lambda d: f"+{d[:2]} {d[2:]}"),
                    st.text(max_size=20))


@given(raw=numbers, region=st.sampled_from([None, "NL", "FR", "US"]))
def test_a_subject_is_what_the_workers_store(raw: str, region: str | None) -> None:
    """Whatever the notation, the value looked up is exactly normalize_phone's (the workers' subject)."""
    try:
        found = classify(raw, region)
    except InvalidSubject:
        return
    assert found.value == normalize_phone(raw.strip(), region)
    assert found.phone == (found.value.startswith("+") and found.value[1:].isdigit() and found.reason is None)


def test_scope_forms() -> None:
    assert scope_forms("3669", None) == ["3669"]
    assert scope_forms(" C1 ", None) == ["C1"]
    assert scope_forms("003197010203040", None) == ["003197010203040", "+3197010203040"]
    assert scope_forms("451204/foo", None) == ["451204/foo"]


def row(scope: str, state: str, minutes: int) -> Row:
    at = T0 + timedelta(minutes=minutes)
    return Row(scope, state, at, at, None, "cm", f"{scope}:{state}:{minutes}")


def test_the_deciding_row_follows_the_workers_rule() -> None:
    """winner() names the row whose state `shared.consent.effective` answers, for every combination."""
    options = [None] + [(state, m) for state in (OPTED_IN, OPTED_OUT) for m in (0, 1, 2)]
    for own, star in itertools.product(options, repeat=2):
        own_row = row("3669", *own) if own else None
        star_row = row("*", *star) if star else None
        expected = effective(ConsentRow(own_row.state, own_row.confirmed_at, own_row.changed_at) if own_row else None,
                             ConsentRow(star_row.state, star_row.confirmed_at, star_row.changed_at) if star_row else None)
        found = winner([own_row, star_row])
        assert (found.state if found else "unknown") == expected, (own, star)
        scoped = answer("+31612345678", [r for r in (own_row, star_row) if r], ["3669"])
        assert scoped.state == expected and scoped.allowed == (expected != OPTED_OUT)


def test_without_a_scope_any_opt_out_wins() -> None:
    rows = [row("3669", OPTED_IN, 5), row("4000", OPTED_OUT, 1), row("5000", OPTED_OUT, 3)]
    found = answer("+31612345678", rows, None)
    assert (found.state, found.allowed, found.deciding) == (OPTED_OUT, False, rows[2])
    assert [s for s, _, _ in found.scopes] == ["3669", "4000", "5000"]
    # A later `*` opt-in (not something the workers write today, but the rule allows it) reopens all.
    reopened = answer("+31612345678", rows + [row("*", OPTED_IN, 9)], None)
    assert (reopened.state, reopened.allowed) == (OPTED_IN, True)
    assert answer("+31612345678", [], None).as_json()["state"] == "unknown"


@given(txid=st.integers(0, 2**64 - 1), change=st.integers(0, 2**63 - 1))
def test_feed_cursor_round_trip(txid: int, change: int) -> None:
    assert cursor.decode(cursor.encode(Position(txid, change))) == Position(txid, change)
    assert Position.decode(Position(txid, change).encode()) == Position(txid, change)


@pytest.mark.parametrize("raw", ["", "c1", "c1.", "c2.MC4w", "c1.!!", "c1.MC4wLjA", "c1." + "A" * 80, "r1.MA"])
def test_bad_feed_cursors(raw: str) -> None:
    with pytest.raises(cursor.BadCursor):
        cursor.decode(raw)


def test_review_cursor_round_trip() -> None:
    assert cursor.decode_review(cursor.encode_review(12345)) == 12345
    for raw in ("", "r1.", "c1.MC4w", "r1.LTE"):
        with pytest.raises(cursor.BadCursor):
            cursor.decode_review(raw)


def test_register_adds_the_api_command(monkeypatch: pytest.MonkeyPatch) -> None:
    top = argparse.ArgumentParser(prog="hookstream")
    register(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(["api"])
    assert (args.command, args.host, args.port, args.handler) == ("api", None, None, cmd_api)
    args = top.parse_args(["api", "--host", "127.0.0.1", "--port", "9000"])
    assert (args.host, args.port) == ("127.0.0.1", 9000)


def test_api_config_from_the_environment() -> None:
    config = ApiConfig.from_env({"HOOKSTREAM_API_TOKENS": "a:secretsecretsecret", "HOOKSTREAM_API_PORT": "9090"})
    assert (config.port, config.host, config.pool_size, config.tokens.labels) == (9090, "0.0.0.0", 4, ("a",))
    assert ApiConfig.from_env({}).port == 8080
    with pytest.raises(ConfigError, match="HOOKSTREAM_API_PORT"):
        ApiConfig.from_env({"HOOKSTREAM_API_PORT": "http"})


def test_the_command_refuses_to_start_without_tokens(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HOOKSTREAM_API_TOKENS", raising=False)
    assert cmd_api(Settings(), argparse.Namespace(host=None, port=None)) == 2
    assert "HOOKSTREAM_API_TOKENS is not set" in capsys.readouterr().err
    monkeypatch.setenv("HOOKSTREAM_API_TOKENS", "a:x,a:y")
    assert cmd_api(Settings(), argparse.Namespace(host=None, port=None)) == 2
    assert "used twice" in capsys.readouterr().err


def slow_e164(digits: str) -> str | None:
    """phonenumbers' answer for `+digits` (asked as `00digits`, which it changes only when it parses),
    through `shared.phones._parse`: normalize_phone itself takes the fast path for these forms."""
    probe = "00" + digits
    result = phones._parse(probe, None)
    return None if result == probe else result


def test_the_fast_path_is_on_for_the_verified_phonenumbers() -> None:
    """Off (normalize_phone for everything: slower, same answers) after an upgrade: re-run the
    equality tests below with the new version, then update fastphone.VERIFIED_VERSION."""
    import phonenumbers

    assert fastphone.ENABLED, f"phonenumbers {phonenumbers.__version__} is not {fastphone.VERIFIED_VERSION}"


def test_the_fast_path_equals_normalize_phone_for_every_country_code() -> None:
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

    rng = random.Random(5)
    checked = 0
    for code in sorted(COUNTRY_CODE_TO_REGION_CODE):
        for _ in range(40):
            tail = "".join(rng.choice("0123456789") for _ in range(rng.randrange(0, 16)))
            if rng.random() < 0.3:
                tail = "0" * rng.randrange(1, 3) + tail  # national prefixes and Italian leading zeros
            digits = f"{code}{tail}"
            assert fastphone.e164_from_digits(digits) == slow_e164(digits), digits
            checked += 1
    for _ in range(5000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(0, 20)))
        assert fastphone.e164_from_digits(digits) == slow_e164(digits), digits
    assert checked > 8000


@given(digits=st.text(alphabet="0123456789", max_size=20))
def test_the_fast_path_equals_normalize_phone(digits: str) -> None:
    assert fastphone.e164_from_digits(digits) == slow_e164(digits)


@pytest.mark.parametrize("raw", ["+1 800 FLOWERS", "+٣١٦١٢٣٤٥٦٧٨", "00 31 6 1234 5678", "0031abc", "+", "00", "+0",
                                 "12345678", "+310612345678", "+4402012345678", "+390612345678", "+5491112345678"])
def test_forms_outside_the_fast_path_fall_back_to_normalize_phone(raw: str) -> None:
    try:
        found = classify(raw, None)
    except InvalidSubject:
        return
    assert found.value == normalize_phone(raw.strip(), None)


def test_erasure_hash_and_notations() -> None:
    hashed = keyed_hash("k", "+31612345678")
    assert hashed.startswith("erased:") and len(hashed) == len("erased:") + 64
    assert hashed != keyed_hash("other key", "+31612345678") and "612345678" not in hashed
    assert notations("+31612345678") == ["+31612345678", "31612345678", "0031612345678", "%2B31612345678",
                                         "%2b31612345678", "0612345678"]
    assert notations("xct7jy") == ["xct7jy"]


def test_the_erasure_key_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-a-file\n")
    settings = Settings.from_env({"HOOKSTREAM_ERASURE_KEY_FILE": str(tmp_path / "key"),
                                  "HOOKSTREAM_OPT_OUT_REACH": "all"})
    assert settings.erasure_key is not None and settings.erasure_key.values == ("from-a-file",)
    assert settings.opt_out_reach == "all"
    with pytest.raises(ConfigError, match="HOOKSTREAM_OPT_OUT_REACH"):
        Settings.from_env({"HOOKSTREAM_OPT_OUT_REACH": "everyone"})
