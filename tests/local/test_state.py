"""The local profile's state file and the secrets-from-files variables: pure, on temp folders."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from hookstream import local_state
from hookstream.embedded import EmbeddedError, owned_folder
from hookstream.local_state import LocalState
from shared.errors import ConfigError
from shared.settings import SECRET_VARIABLES, Settings, with_secret_files

STATE = LocalState(redis_port=7001, postgres_port=7002, redis_password="r" * 48, postgres_password="p" * 48,
                   api_token="t" * 32)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_saved_state_is_private_and_reads_back(tmp_path: Path) -> None:
    folder = tmp_path / ".data"
    local_state.save(folder, STATE)
    assert local_state.load(folder) == STATE
    assert mode(folder) == 0o700 and mode(folder / "local.json") == 0o600
    assert mode(folder / "secrets") == 0o700
    assert (folder / "secrets" / "database_url").read_text().strip() == STATE.database_url
    assert all(mode(p) == 0o600 for p in (folder / "secrets").iterdir())
    assert "p" * 48 not in repr(STATE) and "r" * 48 not in repr(STATE)


def test_a_state_file_planted_as_a_link_is_not_written_through(tmp_path: Path) -> None:
    folder = tmp_path / ".data"
    local_state.save(folder, STATE)
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (folder / "local.json").unlink()
    (folder / "local.json").symlink_to(target)
    local_state.save(folder, STATE)
    assert target.read_text() == "keep" and not (folder / "local.json").is_symlink()


def test_commands_find_only_a_running_profile(tmp_path: Path) -> None:
    folder = tmp_path / ".data"
    local_state.save(folder, LocalState(**{**vars(STATE), "pid": os.getpid()}))
    found, where = local_state.discover({}, tmp_path, tmp_path / "elsewhere" / ".venv")
    assert found == {"HOOKSTREAM_REDIS_URL": STATE.redis_url, "HOOKSTREAM_DATABASE_URL": STATE.database_url}
    assert where == folder
    # beside the virtualenv the command runs from, when not in this folder
    assert local_state.discover({}, Path("/"), tmp_path / ".venv")[0] == found
    # a variable that is set wins, a _FILE one too
    assert local_state.discover({"HOOKSTREAM_REDIS_URL_FILE": "/x"}, tmp_path, tmp_path)[0] == {
        "HOOKSTREAM_DATABASE_URL": STATE.database_url}
    dead = subprocess.Popen(["true"])
    dead.wait()
    local_state.save(folder, LocalState(**{**vars(STATE), "pid": dead.pid}))
    assert local_state.discover({}, tmp_path, tmp_path) == ({}, None)


def test_clean_removes_what_run_made_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / ".data"
    outside = tmp_path / "hookstream-postgres-1234"
    stranger = tmp_path / "not-ours"
    outside.mkdir()
    stranger.mkdir()
    monkeypatch.setattr(local_state, "OUTSIDE_PREFIX", str(tmp_path / "hookstream-"))
    local_state.save(folder, LocalState(**{**vars(STATE), "outside_folders": [str(outside), str(stranger)]}))
    local_state.clean(folder)
    assert not folder.exists() and not outside.exists() and stranger.exists()
    local_state.save(folder, LocalState(**{**vars(STATE), "pid": os.getppid()}))
    with pytest.raises(SystemExit, match="still uses"):
        local_state.clean(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="hands folders to the postgres user: root only")
def test_a_planted_server_folder_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "roots-own"
    victim.mkdir(mode=0o700)
    link = tmp_path / "hookstream-postgres-x"
    link.symlink_to(victim)
    with pytest.raises(EmbeddedError, match="not a folder owned by postgres"):
        owned_folder(link, "postgres")
    assert victim.stat().st_uid == 0  # not handed over
    someone = tmp_path / "hookstream-postgres-y"
    someone.mkdir()
    os.chown(someone, 65534, 65534)  # nobody's
    with pytest.raises(EmbeddedError):
        owned_folder(someone, "postgres")
    made = owned_folder(tmp_path / "hookstream-postgres-z", "postgres")
    assert made.stat().st_uid != 0 and mode(made) == 0o700
    assert owned_folder(made, "postgres") == made  # its own folder, again: accepted


def test_secrets_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis://:pw@10.0.0.5:6379/0\n")
    (tmp_path / "cm").write_text("s3cret")
    settings = Settings.from_env({"HOOKSTREAM_REDIS_URL_FILE": str(tmp_path / "url"),
                                  "HOOKSTREAM_CM_TOKEN_FILE": str(tmp_path / "cm")})
    assert settings.redis_url == "redis://:pw@10.0.0.5:6379/0"
    assert settings.tokens["cm"] is not None and settings.tokens["cm"].values == ("s3cret",)
    with pytest.raises(ConfigError, match="both set"):
        with_secret_files({"HOOKSTREAM_CM_TOKEN": "a", "HOOKSTREAM_CM_TOKEN_FILE": str(tmp_path / "cm")})
    with pytest.raises(ConfigError, match="HOOKSTREAM_CM_TOKEN_FILE"):
        with_secret_files({"HOOKSTREAM_CM_TOKEN_FILE": str(tmp_path / "missing")})
    for name in ("HOOKSTREAM_API_TOKENS", "HOOKSTREAM_DATABASE_URL", "HOOKSTREAM_GATEWAYAPI_SECRET",
                 "HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET", "HOOKSTREAM_DASHBOARD_SECRET", "HOOKSTREAM_MX2_TOKEN"):
        assert name in SECRET_VARIABLES


def test_the_api_reads_its_secrets_from_files(tmp_path: Path) -> None:
    from api.config import ApiConfig

    (tmp_path / "tokens").write_text("ops:0123456789abcdef0123\n")
    (tmp_path / "dash").write_text("d" * 32)
    config = ApiConfig.from_env({"HOOKSTREAM_API_TOKENS_FILE": str(tmp_path / "tokens"),
                                 "HOOKSTREAM_DASHBOARD_SECRET_FILE": str(tmp_path / "dash")})
    assert config.tokens.labels == ("ops",) and config.dashboard_secret == "d" * 32
