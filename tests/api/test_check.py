"""The bulk check: one set-based query, answers in input order, agreeing with the single lookups."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from starlette.testclient import TestClient

from tests.api.conftest import get_json, post_json
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, post

pytestmark = pytest.mark.integration
SCOPES = ("3669", "4000", "*")


def notations(e164: str, rng: random.Random) -> str:
    """One of the common ways a sender writes the same number."""
    digits = e164[1:]
    return rng.choice([e164, "00" + digits, digits, f"+{digits[:2]} {digits[2:3]} {digits[3:7]} {digits[7:]}",
                       f"00{digits[:2]}-{digits[2:]}", f" {e164} ", f"+{digits[:2]} ({digits[2:3]}) {digits[3:]}"])


def seed_consent(db: psycopg.Connection, numbers: list[str], rng: random.Random) -> None:
    """Consent rows in bulk: each number gets 0–3 of the scopes, states and times at random,
    ties between a scope row and the `*` row included (an opt-out wins those)."""
    base = datetime(2025, 1, 1, tzinfo=UTC)
    rows = []
    for i, number in enumerate(numbers):
        for scope in rng.sample(SCOPES, rng.randrange(4)):
            at = base + timedelta(minutes=rng.randrange(5))  # few distinct times: many ties
            rows.append((number, scope, rng.choice(["opted_in", "opted_out"]), at, at, "stop", "cm", f"seed:{i}:{scope}"))
    with db.cursor() as cur:
        cur.executemany("INSERT INTO consent (subject, scope, state, changed_at, confirmed_at, keyword, provider,"
                        " event_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)


def test_bulk_agrees_with_single_lookups_on_10000_numbers(api: TestClient, ingress_client: TestClient, drain: Drain,
                                                         clean: psycopg.Connection) -> None:
    rng = random.Random(8)
    people = sorted({f"+316{rng.randrange(10**8):08d}" for _ in range(6000)})
    seed_consent(clean, people[:4000], rng)
    piped = ["+31699900001", "+31699900002", "+31699900003"]
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", sender=piped[0], to="3669", ref="a"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOPALL", sender=piped[1], to="4000", ref="b"))
    post(ingress_client, "/webhooks/cm/mo", cm_mo("STOP", sender=piped[2], to="4000", ref="c"))
    drain()
    population = people + piped
    subjects = [notations(rng.choice(population), rng) for _ in range(10_000)]  # duplicates included
    for scope in ("3669", None):
        body = {"subjects": subjects} | ({"scope": scope} if scope else {})
        results = post_json(api, "/v1/consent/check", body)["results"]
        assert len(results) == len(subjects)
        singles: dict[str, dict[str, object]] = {}
        for raw, result in zip(subjects, results):
            if result["subject"] not in singles:
                one = get_json(api, f"/v1/consent/{raw}", params={"scope": scope} if scope else None)
                singles[result["subject"]] = {"subject": one["subject"], "allowed": one["allowed"], "state": one["state"]}
            assert result == singles[result["subject"]], (raw, scope)
        states = {r["state"] for r in results}
        assert states == {"opted_in", "opted_out", "unknown"}, states
    by_subject = {r["subject"]: r for r in post_json(api, "/v1/consent/check", {"subjects": piped, "scope": "3669"})["results"]}
    assert [by_subject[p]["allowed"] for p in piped] == [False, False, True]


def test_answers_come_in_input_order_with_duplicates(api: TestClient, clean: psycopg.Connection) -> None:
    clean.execute("INSERT INTO consent (subject, scope, state, changed_at, confirmed_at, provider, event_key)"
                  " VALUES ('+31612345678', '3669', 'opted_out', now(), now(), 'cm', 'k1')")
    subjects = ["+4587654321", "0031612345678", "+31612345678", "4587654321", "31 6 12345678"]
    results = post_json(api, "/v1/consent/check", {"subjects": subjects, "scope": "3669"})["results"]
    assert results == [
        {"subject": "+4587654321", "allowed": True, "state": "unknown"},
        {"subject": "+31612345678", "allowed": False, "state": "opted_out"},
        {"subject": "+31612345678", "allowed": False, "state": "opted_out"},
        {"subject": "+4587654321", "allowed": True, "state": "unknown"},
        {"subject": "+31612345678", "allowed": False, "state": "opted_out"},
    ]
    assert post_json(api, "/v1/consent/check", {"subjects": []}) == {"results": []}


def test_known_ids_pass_and_unknown_ones_are_listed(api: TestClient, clean: psycopg.Connection) -> None:
    clean.execute("INSERT INTO consent (subject, scope, state, changed_at, confirmed_at, provider, event_key)"
                  " VALUES ('xct7jy', 'C1', 'opted_out', now(), now(), 'mx2', 'k1')")
    results = post_json(api, "/v1/consent/check", {"subjects": ["xct7jy"], "scope": "C1"})["results"]
    assert results == [{"subject": "xct7jy", "allowed": False, "state": "opted_out"}]
    error = post_json(api, "/v1/consent/check", {"subjects": ["xct7jy", "nobody", "+31612345678", "3669"]}, status=422)
    assert error["count"] == 2
    assert [(e["index"], e["subject"]) for e in error["invalid"]] == [(1, "nobody"), (3, "3669")]
    assert "short code" in error["invalid"][1]["reason"]


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, "empty"),
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[]", 422, "JSON object"),
    (b'{"subjects": "+31612345678"}', 422, "list of strings"),
    (b'{"subjects": [31612345678]}', 422, "subjects[0] is not a string"),
    (b'{"subjects": ["+31612345678"], "scope": 3669}', 422, "scope must be a string"),
    (b'{"subjects": ["+31612345678"], "scope": ""}', 422, "scope must be 1 to"),
    (b'{"subjects": ["+31612345678"], "scopes": "3669"}', 422, "unknown field"),
    (b'{"subjects": [""]}', 422, "empty subject"),
    (b'{}', 422, "list of strings"),
])
def test_bad_input_is_a_4xx_with_a_reason(body: bytes, status: int, words: str, api: TestClient) -> None:
    error = post_json(api, "/v1/consent/check", body, status=status)
    assert words in str(error), error


def test_more_than_100000_subjects_is_refused(api: TestClient) -> None:
    error = post_json(api, "/v1/consent/check", {"subjects": ["+31612345678"] * 100_001}, status=422)
    assert "at most 100000" in error["detail"]


def test_a_body_over_the_limit_is_413(api: TestClient) -> None:
    error = post_json(api, "/v1/consent/check", b"x" * (8 * 1024 * 1024 + 1), status=413)
    assert error["error"] == "too_large"
