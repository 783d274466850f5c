"""`hookstream run` as a newcomer runs it (a subprocess, its own data folder and ports): the banner
once everything is up, the commands finding its servers, Ctrl-C stopping every part in dependency
order with one line each and no registration left behind, the same ports and token after a
restart, and `make clean`'s removal of everything it made. Nothing of it open to another local user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Worker

from hookstream import local_state
from hookstream.embedded import RedisServer, _pg_bin, free_port, port_is_free, redis_user
from hookstream.run import postgres_dir, redis_dir

pytestmark = pytest.mark.integration

PARTS = ["ingress", "dispatcher", "workers", "api", "redis-server", "PostgreSQL"]


class Run:
    """One `hookstream run` in `folder`, its output in a file."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.out = folder / f"run-{time.monotonic_ns()}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "hookstream.cli", "run", "--workers", "2"],
                                         cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.out.read_text()

    def wait_for_banner(self, timeout_s: float = 150) -> str:
        deadline = time.monotonic() + timeout_s
        while "Ctrl-C stops everything" not in self.text():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.2)
        return self.text()

    def interrupt(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        self.proc.send_signal(sig)
        return self.proc.wait(120), self.text()

    def command(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.env.items() if k != "HOOKSTREAM_DATA_DIR"}
        return subprocess.run([sys.executable, "-m", "hookstream.cli", *args], cwd=cwd or self.folder, env=env,
                              capture_output=True, text=True, timeout=120)


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A data folder of its own, the variables of a newcomer's shell (no server URL) and free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKSTREAM_", "PROMETHEUS_"))}
    env.update(HOOKSTREAM_PORT=str(free_port()), HOOKSTREAM_API_PORT=str(free_port()),
               HOOKSTREAM_WORKER_METRICS_PORT="0", HOOKSTREAM_DISPATCH_METRICS_PORT="0")
    tmp_path.chmod(0o755)  # as a home folder would be: the data folder's own mode is what protects it
    yield tmp_path, env
    try:
        local_state.clean(tmp_path / ".data")
    except SystemExit:
        pass


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *args], capture_output=True, text=True, cwd="/",
                          timeout=30)


def another_user_is_shut_out(data: Path, state: local_state.LocalState) -> None:
    """What another local user can do with a running local profile: nothing."""
    for path in [data, *data.rglob("*"), postgres_dir(data), redis_dir(data)]:
        mode = path.lstat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    for path in (data / "local.json", data / "secrets" / "database_url", postgres_dir(data) / "cluster" / "PG_VERSION"):
        assert as_nobody("cat", str(path)).returncode != 0
    assert as_nobody("touch", str(data / "planted")).returncode != 0
    # Redis and Postgres refuse a client without the password, over TCP and over the socket
    ping = as_nobody("redis-cli", "-p", str(state.redis_port), "ping")
    assert "NOAUTH" in ping.stdout + ping.stderr
    psql = _pg_bin("psql")
    tcp = as_nobody(psql, "-w", "-h", "127.0.0.1", "-p", str(state.postgres_port), "-U", "postgres", "-c", "select 1")
    assert tcp.returncode != 0 and "password" in tcp.stderr, tcp.stderr
    unix = as_nobody(psql, "-w", "-h", str(postgres_dir(data)), "-p", str(state.postgres_port), "-U", "postgres",
                     "-c", "select 1")
    assert unix.returncode != 0, unix.stderr


def stop_lines(text: str) -> list[str]:
    return [line.removeprefix("stopped ").split(" (")[0] for line in text.splitlines() if line.startswith("stopped ")]


def test_first_hour(profile: tuple[Path, dict[str, str]]) -> None:
    folder, env = profile
    data = folder / ".data"
    run = Run(folder, env)
    try:
        text = run.wait_for_banner()
        state = local_state.load(data)
        assert state is not None and state.pid == run.proc.pid
        banner = (data / "banner.txt").read_text()
        assert banner.strip() in text  # printed once everything is up, and kept in the data folder
        assert f"export HOOKSTREAM_DATABASE_URL_FILE={data / 'secrets' / 'database_url'}" in banner
        assert f"export HOOKSTREAM_REDIS_URL_FILE={data / 'secrets' / 'redis_url'}" in banner
        assert "bin/hookstream status" in banner
        assert state.postgres_password not in text and state.redis_password not in text
        assert f"token: {state.api_token}" in banner

        # The commands find the servers by themselves, from the folder make run ran in
        status = run.command("status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["workers"] == 2 and report["errors"] == []
        sent = run.command("send-test", "cm", "mo", "--text", "STOP")
        assert sent.returncode == 0 and "-> 200" in sent.stdout, sent.stdout + sent.stderr
        # ... and from anywhere else with the exported variables of the banner
        exported = subprocess.run(
            [sys.executable, "-m", "hookstream.cli", "dead-letters", "list"], cwd="/", capture_output=True, text=True,
            env={**env, "HOOKSTREAM_DATABASE_URL_FILE": str(data / "secrets" / "database_url"),
                 "HOOKSTREAM_REDIS_URL_FILE": str(data / "secrets" / "redis_url")}, timeout=60)
        assert exported.returncode == 0, exported.stderr
        if os.geteuid() == 0:
            another_user_is_shut_out(data, state)
    finally:
        code, text = run.interrupt()
    assert code == 0, text
    assert stop_lines(text) == PARTS, text
    assert "Traceback" not in text
    assert text.rstrip().endswith("stopped PostgreSQL")
    assert local_state.load(data).pid is None  # type: ignore[union-attr]

    # No worker registration outlives the run: Redis alone, on the same data, knows none
    redis_server = RedisServer(redis_dir(data), port=state.redis_port, password=state.redis_password,
                               user=redis_user()).start()
    try:
        client = redis.Redis.from_url(redis_server.url)
        assert Worker.all(connection=client) == []
        assert client.xlen("hookstream:raw") == 1  # and the request sent above is still there (AOF)
        client.close()
    finally:
        redis_server.stop()

    # A restart keeps the ports, passwords and token
    again = Run(folder, env)
    try:
        again.wait_for_banner()
        assert local_state.load(data) == local_state.LocalState(**{**vars(state), "pid": again.proc.pid})
        report = json.loads(again.command("status", "--json").stdout)
        assert report["workers"] == 2 and report["stream_length"] == 1
    finally:
        code, text = again.interrupt(signal.SIGTERM)  # as systemd or docker stop it
    assert code == 0 and stop_lines(text) == PARTS and "Traceback" not in text, text

    # make clean removes it all, the servers' folders outside the data folder included
    made = [data, postgres_dir(data), redis_dir(data)]
    assert all(path.exists() for path in made)
    result = subprocess.run([sys.executable, "-m", "hookstream.local_state", "clean", str(data)],
                            capture_output=True, text=True, cwd=Path(__file__).parents[2], check=True)
    assert not any(path.exists() for path in made), result.stdout


def test_commands_say_what_to_export_when_nothing_runs(tmp_path: Path) -> None:
    if not (port_is_free(6379) and port_is_free(5432)):
        pytest.skip("a Redis or a PostgreSQL listens on its default port here: the command would find it")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKSTREAM_")}
    env["HOOKSTREAM_REDIS_URL_FILE"] = ""
    result = subprocess.run([sys.executable, "-m", "hookstream.cli", "status"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60,
                            env={**env, "HOOKSTREAM_DATA_DIR": str(tmp_path / ".data")})
    assert result.returncode == 1
    assert "no running `make run` was found" in result.stderr
    assert "export HOOKSTREAM_REDIS_URL=" in result.stderr and "export HOOKSTREAM_DATABASE_URL=" in result.stderr
