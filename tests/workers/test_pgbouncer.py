"""The workers' write path, the consent API and the dashboard through a real PgBouncer in transaction mode.

PgBouncer runs from an ini written here, on a free port, in front of the session's PostgreSQL (trust
authentication on loopback, as the embedded server is set up), with ONE server connection for the
database: every client transaction shares it, so anything that leans on a session — a prepared
statement above all — breaks at once. The pools made by shared.connections turn prepared statements
off (prepare_threshold=None); the last test shows that this is what it takes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from api.dashboard.app import CACHE_TTL_S, DATA_PATHS, PARTIAL_PATHS, Dashboard
from hookstream.embedded import free_port
from shared import connections
from shared.record import RawRecord
from shared.settings import Settings
from tests.api.conftest import AUTH, TOKENS
from tests.dashboard import conftest as dashboard
from tests.workers.conftest import Drain
from workers.batch import write_with_retry
from workers.context import normalize_context
from workers.normalize import Entry, normalize_entry

pytestmark = pytest.mark.integration
IN_CI = bool(os.environ.get("CI"))

INI = """\
[databases]
postgres = host={host} port={port} dbname=postgres pool_size=1

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 100
ignore_startup_parameters = extra_float_digits
"""


def pgbouncer_binary() -> str:
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and Path(candidate).exists():
            return candidate
    if IN_CI:
        pytest.fail("pgbouncer is missing; .ci/run installs the Debian package pgbouncer")
    pytest.skip("pgbouncer is not installed here (apt-get install -y pgbouncer); CI installs it")


@pytest.fixture(scope="module")
def bouncer_url(database_url: str) -> Iterator[str]:
    """PgBouncer refuses to run as root: as root, it runs as the postgres user, as PostgreSQL does."""
    binary = pgbouncer_binary()
    server = urlsplit(database_url)
    folder = Path(tempfile.mkdtemp(prefix="hookstream-pgbouncer-"))
    listen = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(INI.format(host=server.hostname, port=server.port, listen=listen,
                                                     folder=folder))
    prefix = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        for name in ("users.txt", "pgbouncer.ini"):
            shutil.chown(folder / name, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with (folder / "pgbouncer.log").open("wb") as log:
        proc = subprocess.Popen([*prefix, binary, str(folder / "pgbouncer.ini")], stdout=log, stderr=log)
    url = f"postgresql://postgres@127.0.0.1:{listen}/postgres"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert proc.poll() is None, (folder / "pgbouncer.log").read_text()
                assert time.monotonic() < deadline, (folder / "pgbouncer.log").read_text()
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def admin(url: str, command: str) -> list[dict[str, object]]:
    """PgBouncer's own console (the `pgbouncer` database): SHOW POOLS, SHOW STATS …"""
    with psycopg.connect(url.rsplit("/", 1)[0] + "/pgbouncer", autocommit=True,
                         prepare_threshold=None) as conn, conn.cursor() as cur:
        cur.execute(command)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def stop(number: str, ref: str) -> Entry:
    body = json.dumps({"reference": ref, "from": number, "to": "3669", "body": "STOP", "groupings": ["", "", ""]})
    record = RawRecord("cm", "mo", "POST", b"", "application/json", {}, "127.0.0.1", int(time.time() * 1000),
                       body.encode())
    entry = normalize_entry(f"{int(time.time() * 1000)}-{ref}", record.to_fields(), normalize_context(Settings()))
    assert entry.dead_reason is None and entry.events
    return entry


def test_workers_and_the_api_through_pgbouncer_in_transaction_mode(bouncer_url: str,
                                                                   db: psycopg.Connection) -> None:
    numbers = [f"+3161234{i:04d}" for i in range(20)]
    with connections.worker_pool(bouncer_url, 2) as pool:
        assert pool.kwargs["prepare_threshold"] is None
        first = [stop(n, f"a{i}") for i, n in enumerate(numbers)]
        write_with_retry(pool, first, budget_s=10)
        write_with_retry(pool, first, budget_s=10)  # a redelivery: the unique keys, through the pooler
        write_with_retry(pool, [stop(n, f"b{i}") for i, n in enumerate(numbers)], budget_s=10)
        for _ in range(10):  # above psycopg's default threshold: a prepared statement would show here
            write_with_retry(pool, [stop(numbers[0], "c")], budget_s=10)
    assert db.execute("SELECT count(*) FROM consent WHERE state = 'opted_out'").fetchone() == (len(numbers),)
    assert db.execute("SELECT count(*) FROM consent_changes").fetchone() == (len(numbers),)

    settings = Settings(database_url=bouncer_url)
    with TestClient(create_app(settings, ApiTokens.parse(TOKENS)), headers=AUTH) as api:
        for _ in range(8):
            found = api.get(f"/v1/consent/{numbers[0]}")
            assert found.status_code == 200 and found.json()["state"] == "opted_out"
        checked = api.post("/v1/consent/check", json={"subjects": numbers})
        assert checked.status_code == 200 and {r["state"] for r in checked.json()["results"]} == {"opted_out"}
        assert api.get("/v1/consent/changes").json()["changes"]
        assert api.get("/readyz").text == "ready"

    pools = {row["database"]: row for row in admin(bouncer_url, "SHOW POOLS")}
    assert pools["postgres"]["pool_mode"] == "transaction"
    stats = {row["database"]: row for row in admin(bouncer_url, "SHOW STATS")}
    assert int(stats["postgres"]["total_xact_count"]) > 20  # it all went through PgBouncer
    servers = [row for row in admin(bouncer_url, "SHOW SERVERS") if row["database"] == "postgres"]
    assert len(servers) == 1  # over one server connection


def test_the_dashboard_through_pgbouncer_in_transaction_mode(bouncer_url: str, settings: Settings,
                                                             ingress_client: TestClient, drain: Drain,
                                                             db: psycopg.Connection) -> None:
    """Every section, page and partial (each read more often than psycopg's prepare threshold) and a
    review decision, with the dashboard's own pool and the API's both behind PgBouncer."""
    dashboard.send_traffic(ingress_client, drain)  # stored directly: the workers' path is tested above
    behind = dataclasses.replace(settings, database_url=bouncer_url)
    tokens = ApiTokens.parse(dashboard.TOKENS)
    before = int({row["database"]: row for row in admin(bouncer_url, "SHOW STATS")}["postgres"]["total_xact_count"])
    dash = Dashboard(behind, tokens, cache_ttl_s=dict.fromkeys(CACHE_TTL_S, 0.0), pool_timeout_s=1.0)
    try:
        with TestClient(create_app(behind, tokens, dashboard=dash), base_url="http://testserver",
                        follow_redirects=False) as web:
            csrf = dashboard.login(web)
            sections = {path: web.get(path).json() for path in DATA_PATHS}
            assert all(section["errors"] == [] for section in sections.values() if "errors" in section), sections
            for _ in range(6):
                for path in ("/", *PARTIAL_PATHS, *DATA_PATHS, "/dashboard/dead-letters"):
                    answer = web.get(path)
                    assert answer.status_code == 200, (path, answer.text[:300])
            assert sections["/dashboard/data/flow"]["per_minute"]["total"] > 0
            (letter,) = db.execute("SELECT id FROM dead_letters").fetchone() or ()
            assert web.get(f"/dashboard/dead-letters?id={letter}").status_code == 200
            item = sections["/dashboard/data/consent"]["review"]["items"][0]
            made = web.post("/dashboard/review", data={"event_id": item["event_key"], "decision": "opt_out"},
                            headers={"accept": "application/json", "x-csrf-token": csrf})
            assert made.status_code == 200, made.text
    finally:
        dash.close()
    assert db.execute("SELECT decision, decided_by FROM review_decisions").fetchall() == [("opt_out", "ops")]
    after = int({row["database"]: row for row in admin(bouncer_url, "SHOW STATS")}["postgres"]["total_xact_count"])
    assert after - before > 6 * len(DATA_PATHS)  # it all went through PgBouncer
    servers = [row for row in admin(bouncer_url, "SHOW SERVERS") if row["database"] == "postgres"]
    assert len(servers) == 1


def test_the_dispatchers_long_lived_connection_repeats_its_statements_behind_it(bouncer_url: str) -> None:
    with connections.connect(bouncer_url, connections.Role.DISPATCHER) as one, \
            connections.connect(bouncer_url, connections.Role.DISPATCHER) as two:
        for i in range(10):  # past psycopg's default threshold of 5, interleaved on the one server connection
            for conn in (one, two):
                assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)


def test_prepared_statements_break_behind_it(bouncer_url: str) -> None:
    """What prepare_threshold=None avoids: two clients preparing on the one server connection."""
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=0) as one, \
            psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=0) as two:
        one.execute("SELECT 1 + %s", (1,))
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            two.execute("SELECT 1 + %s", (1,))
        one.execute("DEALLOCATE ALL")  # leave the shared server connection as it was


def test_the_dashboards_timeout_and_time_zone_hold_in_each_read_and_only_there(bouncer_url: str) -> None:
    """Set in the read's transaction, not the session: in force for each of its statements, gone for the
    next client of the one server connection, and a failed statement ends the read without a second error."""
    with connections.dashboard_pool(bouncer_url, 2) as pool:
        for _ in range(8):  # past psycopg's prepare threshold
            with connections.dashboard_read(pool) as conn:
                assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
                assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
        with connections.dashboard_read(pool) as conn:
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
        with connections.dashboard_read(pool) as conn, pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT set_config('statement_timeout', '50', true)")  # the row's 10 s, made short
            conn.execute("SELECT pg_sleep(5)")
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as other:
        assert other.execute("SHOW statement_timeout").fetchone() == ("0",)
