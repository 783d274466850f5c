"""GET /v1/consent/changes: the audit trail as a feed, each change once, never overtaken by a commit."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from tests.api.conftest import get_json
from tests.api.feedutil import insert_change
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, mx2, post

pytestmark = pytest.mark.integration


def read_all(api: TestClient, since: str | None = None, limit: int = 2) -> tuple[list[dict[str, Any]], str]:
    """Every change after `since`, page by page; the cursor to go on with."""
    found: list[dict[str, Any]] = []
    while True:
        page = get_json(api, "/v1/consent/changes", params={"limit": limit} | ({"since": since} if since else {}))
        found += page["changes"]
        assert page["next"], page
        since = page["next"]
        if not page["has_more"]:
            return found, since


def test_each_change_once_in_pages(api: TestClient, ingress_client: TestClient, drain: Drain) -> None:
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("STOP", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    drain()
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("START", ref="b"), "timeUtc": "2025-09-03T09:00:00"})
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("STOPALL", ref="c", to="4000"), "timeUtc": "2025-09-03T10:00:00"})
    post(ingress_client, "/webhooks/mx2", mx2("optout", "2024-03-25 20:01:00"))
    drain()
    changes, cursor = read_all(api)
    summary = [(c["scope"], c["old_state"], c["new_state"], c["outcome"]) for c in changes]
    assert summary[0] == ("3669", None, "opted_out", "opt_out")  # its own, earlier transaction comes first
    assert sorted(summary[1:]) == [("*", None, "opted_out", "opt_out_all"), ("3669", "opted_out", "opted_in", "opt_in"),
                                   ("C1", None, "opted_out", "opt_out")]
    assert len(changes) == 4 and len({c["change_id"] for c in changes}) == 4
    first = changes[0]
    assert set(first) == {"change_id", "event_id", "subject", "scope", "old_state", "new_state", "outcome", "keyword",
                          "provider", "occurred_at", "received_at", "decided_by"}
    assert (first["subject"], first["keyword"], first["provider"], first["occurred_at"], first["decided_by"]) == (
        "+31612345678", "stop", "cm", "2025-09-03T08:00:00Z", None)
    assert first["event_id"].startswith("cm:inbound:")
    # The same webhooks again (a provider retry): no new change; the cursor has nothing new.
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("STOP", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    drain()
    assert read_all(api, cursor)[0] == []
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("START", ref="d", to="4000"), "timeUtc": "2025-09-03T11:00:00"})
    drain()
    later, _ = read_all(api, cursor)
    assert [(c["scope"], c["new_state"]) for c in later] == [("4000", "opted_in")]


def test_a_change_committed_after_a_later_numbered_one_is_not_skipped(api: TestClient, database_url: str,
                                                                      clean: psycopg.Connection) -> None:
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        early = insert_change(first, "k-early")  # lower id, transaction still open
        late = insert_change(second, "k-late", subject="+4587654321")
        second.commit()  # the higher id commits first
        assert early < late
        visible = clean.execute("SELECT id FROM consent_changes").fetchall()
        assert visible == [(late,)]  # an id cursor at `late` now would skip `early` for ever
        page = get_json(api, "/v1/consent/changes")
        assert page["changes"] == []  # held back until the older transaction is done
        cursor = page["next"]
        first.commit()
    changes, cursor = read_all(api, cursor)
    assert [c["change_id"] for c in changes] == [early, late]
    assert read_all(api, cursor)[0] == []


def test_a_rolled_back_change_never_appears(api: TestClient, database_url: str, clean: psycopg.Connection) -> None:
    with psycopg.connect(database_url) as gone:
        insert_change(gone, "k-gone")
        # Another subject: a writer of the same subject waits for the first (its chain's lock).
        kept = insert_change(clean, "k-kept", subject="+4587654321")
        gone.rollback()
    assert [c["change_id"] for c in read_all(api)[0]] == [kept]


@pytest.mark.parametrize("query", ["since=nope", "since=c1.", "since=c1.%%%", "since=c1.YWJj", "limit=0", "limit=1001",
                                   "limit=-1", "limit=1.5", "after=c1.MC4w", "limit=1&limit=2"])
def test_bad_feed_parameters(query: str, api: TestClient) -> None:
    error = get_json(api, f"/v1/consent/changes?{query}", status=422)
    assert error["error"] == "invalid" and error["detail"]
