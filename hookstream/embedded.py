"""Local redis-server and PostgreSQL processes for `hookstream run` and the test suite.

PostgreSQL refuses to run as root: as root, its folders are made where the `postgres` user can
enter them and `initdb`/`pg_ctl` run through `runuser -u postgres`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
REDIS_MISSING = "redis-server not found. Install it with: sudo apt-get install -y redis-server"
PG_MISSING = "PostgreSQL server binaries not found. Install them with: sudo apt-get install -y postgresql"


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"server exited with code {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedError(f"nothing listens on port {port} after {timeout_s}s")


@dataclass
class RedisServer:
    """A redis-server with AOF on (appendfsync as the shipped config), in its own folder."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = "always"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedError(REDIS_MISSING)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
            "--maxmemory-policy", "noeviction", "--protected-mode", "no", "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _pg_bin(name: str) -> str:
    for folder in PG_BIN_DIRS:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise EmbeddedError(PG_MISSING)
    return found


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL cluster on a loopback port with trust authentication."""

    data_dir: Path | None = None  # None: a fresh temp folder the postgres user can enter
    port: int = field(default_factory=free_port)
    durable: bool = True  # False turns fsync off (tests)
    _made_temp: bool = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
        prefix = ["runuser", "-u", "postgres", "--"] if _is_root() else []
        return subprocess.run(prefix + args, cwd="/tmp", check=check, capture_output=True)

    def _prepare_dir(self) -> Path:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="hookstream-pg-"))
            self._made_temp = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _is_root():
            shutil.chown(self.data_dir, "postgres", "postgres")
            os.chmod(self.data_dir, 0o700)
        return self.data_dir

    def start(self) -> PostgresServer:
        data = self._prepare_dir()
        cluster = data / "cluster"
        if not (cluster / "PG_VERSION").exists():
            try:
                self._run([_pg_bin("initdb"), "-D", str(cluster), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                           "--no-locale"])
            except subprocess.CalledProcessError as exc:
                raise EmbeddedError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
        options = f"-p {self.port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        result = self._run([_pg_bin("pg_ctl"), "-D", str(cluster), "-o", options, "-l", str(data / "postgres.log"),
                            "-w", "-t", "60", "start"], check=False)
        if result.returncode != 0:
            log = (data / "postgres.log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedError(f"PostgreSQL did not start: {result.stderr.decode(errors='replace')}{tail}")
        _wait_for_port(self.port, 30)
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.data_dir is None:
            return
        cluster = self.data_dir / "cluster"
        if (cluster / "postmaster.pid").exists():
            self._run([_pg_bin("pg_ctl"), "-D", str(cluster), "-m", mode, "-w", "stop"], check=False)

    def remove(self) -> None:
        self.stop("immediate")
        if self._made_temp and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
