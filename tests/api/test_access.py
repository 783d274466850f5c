"""A person's requests (export, erasure), reassigned numbers and the opt-out reach, end to end."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator

import psycopg
import pytest
import redis
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from shared import ledger
from shared.settings import Secret, Settings
from tests.api.conftest import AUTH, get_json, post_json
from tests.api.test_records import record
from tests.workers.conftest import Drain
from tests.workers.test_cm_e2e import report_query, send
from tests.workers.test_pipeline import cm_mo, post, rows
from workers.publisher import publish_pending

pytestmark = pytest.mark.integration
NUMBER = "+31612345678"
# Every notation of the number contains its national significant number.
NEEDLE = "612345678"


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return dataclasses.replace(settings, erasure_key=Secret("erasure-key-0123456789abcdef"))


@pytest.fixture
def people(keyed: Settings, tokens: ApiTokens, clean: psycopg.Connection) -> Iterator[TestClient]:
    with TestClient(create_app(keyed, tokens), headers=AUTH) as client:
        yield client


def history(ingress_client: TestClient, people: TestClient, drain: Drain) -> None:
    """The person in every table: replies, a status, a dead letter, an import, a deactivation."""
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("START", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("Stop texting me", ref="b"),
                                             "timeUtc": "2025-09-03T09:00:00"})
    send(ingress_client, "GET", "/webhooks/cm/status", query=report_query(
        reference="ref-1", sent="2025-09-03T08:00:00", received="2025-09-03T08:00:02", to="0031612345678",
        statuscode="0", errorcode="", errordescription=""))
    post(ingress_client, "/webhooks/cm/mo", b'{"from": "0031612345678", "body": ')  # a dead letter
    drain()
    post_json(people, "/v1/consent/records", {"records": [record("web-1", at="2025-09-01T10:00:00Z", scope="4000",
                                                                 evidence={"ip": "203.0.113.9", "text": "Jan"})]})
    post_json(people, "/v1/consent/deactivations", {"subjects": [NUMBER], "since": "2025-01-01", "source": "file"})


def found_in_postgres(db: psycopg.Connection) -> list[str]:
    """Every table (partitions through their parent), as text and every bytea column as bytes."""
    hits = []
    tables = [name for (name,) in db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
        " AND c.relkind IN ('r', 'p') AND NOT c.relispartition")]
    for table in tables:
        if db.execute(f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s",  # type: ignore[arg-type]
                      (f"%{NEEDLE}%",)).fetchone()[0]:  # type: ignore[index]
            hits.append(table)
        for (column,) in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s"
                                    " AND data_type = 'bytea'", (table,)).fetchall():
            if db.execute(f"SELECT count(*) FROM {table} WHERE position(%s::bytea IN {column}) > 0",  # type: ignore
                          (NEEDLE.encode(),)).fetchone()[0]:  # type: ignore[index]
                hits.append(f"{table}.{column}")
    return hits


def found_in_redis(client: redis.Redis) -> list[str]:
    hits = []
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"stream":
            values = [v for _, fields in client.xrange(key) for v in fields.values()]
        elif kind == b"hash":
            values = list(client.hgetall(key).values())
        elif kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind in (b"set", b"zset"):
            values = list(client.smembers(key)) if kind == b"set" else client.zrange(key, 0, -1)
        else:
            values = []
        if any(NEEDLE.encode() in v for v in values):
            hits.append(key.decode())
    return hits


def test_export_holds_everything(people: TestClient, ingress_client: TestClient, drain: Drain) -> None:
    history(ingress_client, people, drain)
    data = get_json(people, f"/v1/subjects/{NUMBER}/export")
    assert data["subject"] == NUMBER
    assert {r["scope"] for r in data["consent"]} == {"3669", "4000"}
    assert [c["source"] for c in data["changes"]] == ["keyword", "keyword", "import"]
    assert data["changes"][1]["inbound_text"] == "Stop texting me" and data["changes"][1]["hash"]
    assert len(data["events"]) == 3 and len(data["statuses"]) == 1
    assert data["records"][0]["evidence"]["ip"] == "203.0.113.9" and len(data["deactivations"]) == 1
    table = list(csv.reader(io.StringIO(people.get(f"/v1/subjects/{NUMBER}/export?format=csv").text)))
    assert table[0] == ["table", "row", "field", "value"]
    assert ["changes", "2", "inbound_text", "Stop texting me"] in table
    assert get_json(people, "/v1/subjects/+4512345678/export", status=404)["error"] == "not_found"
    assert get_json(people, f"/v1/subjects/{NUMBER}/export?format=xml", status=422)["error"] == "invalid"


def test_erasure_everywhere_and_still_suppressed(people: TestClient, ingress_client: TestClient, drain: Drain,
                                                 clean: psycopg.Connection, redis_client: redis.Redis,
                                                 keyed: Settings) -> None:
    history(ingress_client, people, drain)
    with psycopg.connect(str(keyed.database_url), autocommit=True) as conn:
        publish_pending(conn, redis_client, keyed)  # the outbound consent stream names the person too
    # A STOP the workers have not processed yet: it is erased when its batch commits.
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("STOP", ref="c", to="5000"), "timeUtc": "2025-09-03T10:00:00"})
    assert found_in_postgres(clean) and found_in_redis(redis_client)

    response = people.delete(f"/v1/subjects/{NUMBER}")
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["subject_hash"].startswith("erased:") and done["requested_by"] == "alice"
    counts = done["counts"]
    assert counts["events"] == 3 and counts["message_status"] == 1 and counts["consent_changes"] == 3
    assert counts["raw_archive"] == 4 and counts["dead_letters"] == 1 and counts["consent_records"] == 1
    assert counts["stream_entries_marked"] == 1 and counts["stream_entries_deleted"] == 4
    drain()  # the unprocessed STOP: applied, then erased after its batch committed
    assert found_in_postgres(clean) == []
    assert found_in_redis(redis_client) == []

    # Still suppressed: an erased person who had opted out is not to be texted.
    assert get_json(people, f"/v1/consent/{NUMBER}", params={"scope": "3669"})["allowed"] is False
    assert get_json(people, f"/v1/consent/{NUMBER}", params={"scope": "5000"})["allowed"] is False
    checked = post_json(people, "/v1/consent/check", {"subjects": ["0031612345678"], "scope": "3669"})
    assert checked["results"][0]["allowed"] is False
    assert post_json(people, "/v1/consent/check", {"subjects": [NUMBER]})["results"][0]["allowed"] is False
    assert ledger.verify(clean).ok
    audit = rows(clean, "SELECT requested_by, counts FROM erasures ORDER BY id")
    assert audit[0]["requested_by"] == "alice" and audit[0]["counts"]["events"] == 3
    assert [r["procedure"] for r in rows(clean, "SELECT procedure FROM consent_ledger_log")] == ["erasure", "erasure"]
    again = people.delete(f"/v1/subjects/{NUMBER}").json()  # idempotent: nothing left, audited again
    assert again["repeated"] is True and again["subject_hash"] == done["subject_hash"]


def test_erasure_needs_its_key(api: TestClient) -> None:
    assert api.delete(f"/v1/subjects/{NUMBER}").status_code == 503


def test_a_reassigned_number_is_stale_until_a_new_opt_in(people: TestClient, ingress_client: TestClient,
                                                         drain: Drain) -> None:
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("START", ref="a"), "timeUtc": "2025-09-03T08:00:00"})
    drain()
    assert get_json(people, f"/v1/consent/{NUMBER}", params={"scope": "3669"})["state"] == "opted_in"
    done = post_json(people, "/v1/consent/deactivations", {"subjects": ["0031 6 12345678", "+4512345678"],
                                                           "since": "2025-10-01T00:00:00Z", "source": "reassigned"})
    assert done == {"recorded": 2, "stale": 1}
    answer = get_json(people, f"/v1/consent/{NUMBER}", params={"scope": "3669"})
    assert (answer["state"], answer["allowed"]) == ("stale", False)
    for body in ({"subjects": [NUMBER], "scope": "3669"}, {"subjects": [NUMBER]}):
        assert post_json(people, "/v1/consent/check", body)["results"][0] == {
            "subject": NUMBER, "allowed": False, "state": "stale"}
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("START", ref="b"), "timeUtc": "2025-10-02T08:00:00"})
    drain()
    assert get_json(people, f"/v1/consent/{NUMBER}", params={"scope": "3669"})["state"] == "opted_in"
    assert post_json(people, "/v1/consent/check", {"subjects": [NUMBER]})["results"][0]["allowed"] is True
    error = post_json(people, "/v1/consent/deactivations", {"subjects": ["xct7jy"], "since": "2025-10-01",
                                                            "source": "file"}, status=422)
    assert error["error"] == "invalid"


def test_opt_out_reach_all(keyed: Settings, tokens: ApiTokens, clean: psycopg.Connection,
                           ingress_client: TestClient, drain: Drain, worker_context: object) -> None:
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("START", ref="a", to="4000"), "timeUtc": "2025-09-03T08:00:00"})
    drain()
    object.__setattr__(worker_context, "settings", dataclasses.replace(keyed, opt_out_reach="all"))
    post(ingress_client, "/webhooks/cm/mo", {**cm_mo("STOP", ref="b"), "timeUtc": "2025-09-03T09:00:00"})
    drain()
    with TestClient(create_app(keyed, tokens), headers=AUTH) as client:
        assert get_json(client, f"/v1/consent/{NUMBER}", params={"scope": "4000"})["state"] == "opted_out"
    change = rows(clean, "SELECT scope, reach, outcome FROM consent_changes ORDER BY id")[-1]
    assert change == {"scope": "*", "reach": "all", "outcome": "opt_out"}
