"""POST /v1/consent/records: consent collected elsewhere, through the rules replies go through."""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from shared import ledger
from tests.api.conftest import get_json, post_json
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, post, rows

pytestmark = pytest.mark.integration


def record(rid: str, state: str = "opted_in", at: str = "2025-09-03T10:00:00Z", subject: str = "+31612345678",
           scope: str = "3669", **extra: Any) -> dict[str, Any]:
    return {"id": rid, "subject": subject, "scope": scope, "state": state, "occurred_at": at, "source": "web_form",
            **extra}


def test_an_import_is_a_change_with_its_evidence(api: TestClient, clean: psycopg.Connection) -> None:
    evidence = {"text": "Yes, text me offers", "version": "form-3", "url": "https://example.com/join",
                "ip": "203.0.113.9", "user_agent": "Mozilla/5.0", "reference": "crm-42"}
    done = post_json(api, "/v1/consent/records", {"records": [record("r1", subject="0031 6 1234 5678",
                                                                       evidence=evidence)]})
    assert (done["records"], done["imported"], done["repeated"], done["changes"]) == (1, 1, 0, 1)
    assert get_json(api, "/v1/consent/+31612345678", params={"scope": "3669"})["state"] == "opted_in"
    change = rows(clean, "SELECT * FROM consent_changes")[0]
    assert (change["source"], change["import_id"], change["actor"], change["provider"], change["event_key"]) == (
        "import", done["import_id"], "alice", "import", "import:r1")
    assert change["evidence"] == {"record_id": "r1", "source": "web_form", **evidence}
    stored = rows(clean, "SELECT subject, imported_by, evidence FROM consent_records")[0]
    assert (stored["subject"], stored["imported_by"], stored["evidence"]) == ("+31612345678", "alice", evidence)
    assert ledger.verify(clean).ok


def test_idempotent_by_id_and_all_or_nothing(api: TestClient, clean: psycopg.Connection) -> None:
    first = {"records": [record("a"), record("b", subject="+31687654321")]}
    post_json(api, "/v1/consent/records", first)
    again = post_json(api, "/v1/consent/records", first)  # a retry: nothing new
    assert (again["imported"], again["repeated"], again["changes"]) == (0, 2, 0)
    clash = post_json(api, "/v1/consent/records", {"records": [record("c", subject="+4512345678"),
                                                               record("a", state="opted_out")]}, status=409)
    assert clash["error"] == "conflict" and clash["ids"] == ["a"]
    assert [r["id"] for r in rows(clean, "SELECT id FROM consent_records ORDER BY id")] == ["a", "b"]  # no "c"
    assert len(rows(clean, "SELECT id FROM consent_changes")) == 2


@pytest.mark.parametrize("body, detail", [
    ({"records": []}, "non-empty"),
    ({"records": [record("x", at="2025-09-03T10:00:00")]}, "offset"),
    ({"records": [record("x", at="2999-01-01T00:00:00Z")]}, "future"),
    ({"records": [record("x", state="maybe")]}, "state"),
    ({"records": [record("x", subject="12")]}, "short code"),
    ({"records": [record("x", evidence={"mood": "good"})]}, "unknown field"),
    ({"records": [record("x"), record("x", scope="4000")]}, "twice"),
    ({"records": [{"id": "x"}]}, "missing"),
    ({"records": [record("x")], "more": 1}, "one field"),
])
def test_bad_records_are_refused_whole(body: dict[str, Any], detail: str, api: TestClient,
                                       clean: psycopg.Connection) -> None:
    error = post_json(api, "/v1/consent/records", body, status=422)
    assert detail in error["detail"]
    assert rows(clean, "SELECT id FROM consent_records") == []


def test_too_many_records(api: TestClient) -> None:
    error = post_json(api, "/v1/consent/records", {"records": [record(str(i)) for i in range(10_001)]}, status=422)
    assert "too many" in error["detail"]


# Steps: ("reply", text, time) through the webhook and a worker, or ("import", state, time) through the API.
# Every order of arrival must end in the same state: the latest by its own time wins.
STOP_AFTER_OPT_IN = [("import", "opted_in", "10:00"), ("reply", "STOP", "10:05")]
OPT_IN_AFTER_STOP = [("reply", "STOP", "10:05"), ("import", "opted_in", "10:10"), ("import", "opted_out", "09:00")]
CASES = ([(steps, "opted_out") for steps in itertools.permutations(STOP_AFTER_OPT_IN)]
         + [(steps, "opted_in") for steps in itertools.permutations(OPT_IN_AFTER_STOP)])


def test_imports_and_replies_in_every_order(api: TestClient, ingress_client: TestClient, drain: Drain,
                                            clean: psycopg.Connection) -> None:
    for n, (steps, expected) in enumerate(CASES):
        subject = f"+316123450{n:02d}"
        for i, (kind, what, at) in enumerate(steps):
            when = f"2025-09-03T{at}:00"
            if kind == "reply":
                post(ingress_client, "/webhooks/cm/mo", {**cm_mo(what, sender=subject, ref=f"{n}-{i}"), "timeUtc": when})
                drain()
            else:
                post_json(api, "/v1/consent/records", {"records": [record(f"{n}-{i}", what, when + "Z", subject)]})
        answer = get_json(api, f"/v1/consent/{subject}", params={"scope": "3669"})
        assert answer["state"] == expected, (steps, answer)
        assert answer["allowed"] is (expected == "opted_in")
    assert ledger.verify(clean).ok
