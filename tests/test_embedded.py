"""The servers `make run` starts: the system's when installed (Debian's packages), otherwise the
`servers` extra's wheels in the virtualenv; neither says exactly how to get them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from hookstream import embedded
from hookstream.embedded import EmbeddedError, PostgresServer, RedisServer
from hookstream.migrate import migrate

HINT = "apt-get install -y redis-server postgresql"


def test_missing_redis_server_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(embedded, "WHEELS", {})
    with pytest.raises(EmbeddedError, match="redis-server not found") as refused:
        RedisServer(tmp_path).start()
    assert HINT in str(refused.value) and ".[servers]" in str(refused.value)
    assert not embedded.servers_found()


def test_missing_postgres_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(embedded, "PG_BIN_DIRS", (str(tmp_path),))
    monkeypatch.setattr(embedded, "WHEELS", {})
    with pytest.raises(EmbeddedError, match="PostgreSQL server binaries not found") as refused:
        PostgresServer(tmp_path / "pg").start()
    assert HINT in str(refused.value)


def test_the_system_servers_come_before_the_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    system = shutil.which("redis-server", path=embedded._system_path())
    if system is None:
        pytest.skip("no redis-server outside the virtualenv here")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{embedded._system_path()}")  # an activated venv
    assert embedded.redis_binary() == system


@pytest.mark.integration
def test_the_servers_extra_runs_the_pipeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine with only Python: the wheels' redis-server and PostgreSQL, with passwords, migrated."""
    if embedded._wheel_bin("redis", "redis-server") is None or embedded._wheel_bin("postgres", "initdb") is None:
        pytest.skip("the servers extra is not installed (pip install -e '.[servers]')")
    monkeypatch.setattr(embedded, "PG_BIN_DIRS", ())
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None if name in (
        "redis-server", "initdb", "pg_ctl", "postgres") else "/usr/bin/" + name)
    assert embedded.redis_binary().startswith(str(Path(sys.prefix).resolve()))
    redis_server = RedisServer(tmp_path / "redis", password="redis-pw-0123456789").start()
    postgres = PostgresServer(password="pg-pw-0123456789", durable=False)
    try:
        postgres.start()
        client = redis.Redis.from_url(redis_server.url)
        assert client.ping() and client.info("server")["redis_version"].startswith("6.")
        client.close()
        assert "005_event_keys.sql" in migrate(postgres.url)
        with psycopg.connect(postgres.url) as conn:
            assert conn.execute("SHOW server_version").fetchone()[0].startswith("18")  # type: ignore[index]
    finally:
        redis_server.stop()
        postgres.remove()
