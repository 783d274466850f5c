"""`make run` on a machine without the servers says exactly what to install."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hookstream import embedded
from hookstream.embedded import EmbeddedError, PostgresServer, RedisServer


def test_missing_redis_server_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EmbeddedError, match="apt-get install -y redis-server"):
        RedisServer(tmp_path).start()


def test_missing_postgres_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(embedded, "PG_BIN_DIRS", (str(tmp_path),))
    with pytest.raises(EmbeddedError, match="apt-get install -y postgresql"):
        PostgresServer(tmp_path / "pg").start()
