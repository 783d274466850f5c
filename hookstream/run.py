"""`hookstream run`: the whole pipeline in the foreground until Ctrl-C.

Without HOOKSTREAM_REDIS_URL / HOOKSTREAM_DATABASE_URL it starts embedded redis-server and
PostgreSQL processes (the local profile: loopback is admitted on every provider route), with
generated passwords, on ports kept across restarts in the data folder's state file
(hookstream/local_state.py); it applies the migrations, then runs ingress, dispatcher, workers and
the consent API as child processes, each in a session of its own so that a Ctrl-C in the terminal
reaches only this process. It stops them in dependency order (ingress, dispatcher, workers, API,
then Redis and Postgres), one line per part.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import redis as redis_lib
from rq import Worker

from api.config import ApiConfig
from hookstream import local_state
from hookstream.embedded import (
    EmbeddedError,
    PostgresServer,
    RedisServer,
    _is_root,
    _wait_for_port,
    free_port,
    port_is_free,
    redis_user,
)
from hookstream.local_state import LocalState
from hookstream.migrate import migrate
from shared.examples import example_curl
from shared.settings import Settings

log = logging.getLogger("hookstream.run")

SETTLE_TIMEOUT_S = 90.0  # start-up of every part, before the banner; a slow first initdb fits in it
STOP_TIMEOUT_S = 20.0


class StartupError(RuntimeError):
    """A part did not start; the message says which and where its log is."""


def data_dir(settings: Settings) -> Path:
    return local_state.data_folder(settings.data_dir)


def outside_dir(base: Path, kind: str) -> Path:
    """As root, a server's folder where its non-root user can enter (it cannot enter /root): named
    after the data folder, so that one data folder always finds its own."""
    tag = hashlib.sha1(str(base).encode()).hexdigest()[:10]
    return Path(f"{local_state.OUTSIDE_PREFIX}{kind}-{tag}")


def postgres_dir(base: Path) -> Path:
    return outside_dir(base, "postgres") if _is_root() else base / "postgres"


def redis_dir(base: Path) -> Path:
    return outside_dir(base, "redis") if _is_root() else base / "redis"


@dataclass
class Part:
    """A child process of `run`, and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None

    def where(self) -> str:
        return f"; its log: {self.log_path}" if self.log_path else ""


@dataclass
class Console:
    """The lines `run` writes itself: start-up steps, the banner, one line per stopped part."""

    out: TextIO = field(default_factory=lambda: sys.stdout)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _fresh_state(base: Path) -> LocalState:
    return LocalState(redis_port=free_port(), postgres_port=free_port(), redis_password=secrets.token_hex(24),
                      postgres_password=secrets.token_hex(24), api_token=secrets.token_urlsafe(24))


def _port(wanted: int, what: str, console: Console) -> int:
    if port_is_free(wanted):
        return wanted
    port = free_port()
    console.say(f"port {wanted} of {what} is taken by another program: using {port} (kept for next time)")
    return port


def start_part(name: str, args: list[str], env: dict[str, str], logs: Path | None) -> Part:
    """A `hookstream` subcommand in a session of its own; its output to `logs/<name>.log` when given."""
    log_path = logs / f"{name}.log" if logs is not None else None
    out: int | None = None
    if log_path is not None:
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "hookstream.cli", *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT if out is not None else None,
                                start_new_session=True)
    finally:
        if out is not None:
            os.close(out)
    return Part(name, proc, log_path)


def stop_part(part: Part, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """SIGTERM, then SIGKILL after `timeout_s`; the line that says how it ended."""
    proc = part.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return f"stopped {part.name} (killed after {timeout_s:.0f} s{part.where()})"
    code = proc.returncode
    if code in (0, -signal.SIGTERM):
        return f"stopped {part.name}"
    return f"stopped {part.name} (exit code {code}{part.where()})"


def drop_worker_registrations(redis_url: str) -> int:
    """Registrations left by workers that could not say goodbye (killed): on the local profile's own
    Redis, every one is ours. Returns how many were dropped."""
    client = redis_lib.Redis.from_url(redis_url)
    try:
        workers = Worker.all(connection=client)
        for worker in workers:
            worker.register_death()  # type: ignore[no-untyped-call]  # unannotated in rq
        return len(workers)
    finally:
        client.close()


def wait_until_settled(parts: list[Part], checks: Iterable[tuple[str, Callable[[], bool]]],
                       timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Every check true, while every part keeps running; StartupError names what did not come up."""
    pending = list(checks)
    deadline = time.monotonic() + timeout_s
    while pending:
        for part in parts:
            if part.proc.poll() is not None:
                raise StartupError(f"{part.name} exited with code {part.proc.returncode} while starting{part.where()}")
        pending = [(what, check) for what, check in pending if not check()]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise StartupError(f"not up after {timeout_s:.0f} s: {', '.join(what for what, _ in pending)}")
        time.sleep(0.2)


def _listens(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            _wait_for_port(port, 0.01)
            return True
        except EmbeddedError:
            return False
    return check


def _workers_registered(redis_url: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        client = redis_lib.Redis.from_url(redis_url)
        try:
            return len(Worker.all(connection=client)) >= count
        except redis_lib.RedisError:
            return False
        finally:
            client.close()
    return check


def command_path() -> str:
    """How to call `hookstream` from here: the virtualenv's script, relative when it is below this folder."""
    script = Path(sys.executable).parent / "hookstream"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def banner(*, host: str, port: int, api_port: int, workers: int, token: str | None, folder: Path,
           local_profile: bool, embedded_postgres: bool) -> str:
    """What a newcomer needs, in 80 columns. Never a password: the URLs are in files named here."""
    command = command_path()
    activate = str(Path(command).parent / "activate")
    secrets_dir = folder / local_state.SECRETS_FOLDER
    lines = [
        "",
        f"hookstream is running: ingress http://{host}:{port}, {workers} worker(s),",
        f"consent API and dashboard http://{host}:{api_port}/",
        f"  token: {token}" if token else "  token: one of HOOKSTREAM_API_TOKENS",
        "",
        "Send a webhook:",
        f"  {example_curl(port)}",
        "",
        "Then, in another terminal in this folder (the commands find these servers):",
        f"  {command} status",
        f"  {command} stats",
        f"  {command} dead-letters",
        f"  {command} send-test cm mo --text STOP",
        f"or `. {activate}` once, then `hookstream status`, ...",
    ]
    if local_profile or embedded_postgres:
        lines += ["", "From another folder or a tool of your own:"]
        if local_profile:
            lines.append(f"  export HOOKSTREAM_REDIS_URL_FILE={secrets_dir / 'redis_url'}")
        if embedded_postgres:
            lines += [f"  export HOOKSTREAM_DATABASE_URL_FILE={secrets_dir / 'database_url'}",
                      f"  psql \"$(cat {secrets_dir / 'database_url'})\" -c 'select * from events'"]
    lines += ["", f"Data: {folder} (make clean removes it). Logs: {folder / local_state.LOGS_FOLDER}/",
              f"This text: {folder / local_state.BANNER_FILE}. Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_all(settings: Settings, api: ApiConfig, *, host: str, port: int, workers: int,
            console: Console | None = None) -> int:
    console = console or Console()
    # Everything this run makes (AOF files, the cluster, logs, the state file) is this user's only.
    os.umask(0o077)
    # During start-up a SIGTERM is a Ctrl-C: what was started is stopped again, in order.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with ExitStack() as stack:
            try:
                return _run(settings, api, stack, console, host=host, port=port, workers=workers)
            except (EmbeddedError, StartupError) as exc:
                console.say(f"hookstream run: {exc}")
                return 1
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping: a second Ctrl-C must not cut it short
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run(settings: Settings, api: ApiConfig, stack: ExitStack, console: Console, *, host: str, port: int,
         workers: int) -> int:
    env = dict(os.environ)  # the children's: the same variables, plus the embedded servers' URLs
    folder = local_state.private_folder(data_dir(settings))
    local_profile = settings.redis_url is None and not settings.redis_sentinels
    embedded_postgres = settings.database_url is None
    state = local_state.load(folder)
    if state is not None and local_state.is_running(state.pid) and state.pid != os.getpid():
        raise StartupError(f"another hookstream run (pid {state.pid}) uses {folder}; stop it first")
    pg_dir = postgres_dir(folder)
    if state is None:
        if embedded_postgres and (pg_dir / "cluster" / "PG_VERSION").exists():
            raise StartupError(f"{pg_dir} holds a PostgreSQL cluster whose credentials are not in {folder}"
                               " (made by an older version?): `make clean` resets the local profile")
        state = _fresh_state(folder)
    if not port_is_free(port):
        raise StartupError(f"port {port} is in use (another hookstream run?): set HOOKSTREAM_PORT or stop it")
    if not port_is_free(api.port):
        raise StartupError(f"port {api.port} is in use: set HOOKSTREAM_API_PORT or stop what uses it")
    if embedded_postgres:
        state.postgres_port = _port(state.postgres_port, "PostgreSQL", console)
        postgres = PostgresServer(pg_dir, port=state.postgres_port, password=state.postgres_password)
        if _is_root():
            state.outside_folders = sorted({*state.outside_folders, str(pg_dir)})
        local_state.save(folder, state)  # before initdb: the folder is never without its credentials
        postgres.start()
        stack.callback(console.say, "stopped PostgreSQL")  # the stack runs backwards: said after the stop
        stack.callback(postgres.stop)
        env["HOOKSTREAM_DATABASE_URL"] = postgres.url
        console.say(f"started PostgreSQL on 127.0.0.1:{postgres.port} (data in {pg_dir})")
    if local_profile:
        state.redis_port = _port(state.redis_port, "Redis", console)
        r_dir = redis_dir(folder)
        redis_server = RedisServer(r_dir, port=state.redis_port, password=state.redis_password, user=redis_user())
        if _is_root():
            state.outside_folders = sorted({*state.outside_folders, str(r_dir)})
        redis_server.start()
        stack.callback(console.say, "stopped redis-server")
        stack.callback(redis_server.stop)
        env["HOOKSTREAM_REDIS_URL"] = redis_server.url
        console.say(f"started redis-server on 127.0.0.1:{redis_server.port} (data in {r_dir})")
    state.pid = os.getpid()
    local_state.save(folder, state)
    stack.callback(_forget_pid, folder)
    applied = migrate(env["HOOKSTREAM_DATABASE_URL"] if embedded_postgres else settings.database_url_or_default())
    console.say(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")

    token: str | None = None
    if not api.tokens:  # the local profile's own token, kept across restarts
        token = state.api_token
        env["HOOKSTREAM_API_TOKENS"] = f"local:{token}"
    logs = local_state.private_folder(folder / local_state.LOGS_FOLDER) if local_profile else None
    ingress = ["ingress", "--host", host, "--port", str(port)] + (["--local-profile"] if local_profile else [])
    commands = {"ingress": ingress, "dispatcher": ["dispatch"], "workers": ["worker", "-n", str(workers)],
                "api": ["api", "--host", host, "--port", str(api.port)]}
    parts: list[Part] = []
    # Stopped in dependency order: nothing new comes in, nothing new is handed out, the workers
    # finish and unregister, the API goes; then (the stack's earlier callbacks) Redis, Postgres.
    stack.callback(_stop_parts, parts, console, env.get("HOOKSTREAM_REDIS_URL") if local_profile else None)
    for name, args in commands.items():
        parts.append(start_part(name, args, env, logs))
    redis_url = env.get("HOOKSTREAM_REDIS_URL") or settings.redis_url_or_default()
    wait_until_settled(parts, [("ingress", _listens(port)), ("api", _listens(api.port)),
                               ("workers", _workers_registered(redis_url, workers))])
    text = banner(host=host, port=port, api_port=api.port, workers=workers, token=token, folder=folder,
                  local_profile=local_profile, embedded_postgres=embedded_postgres)
    local_state.write_private(folder / local_state.BANNER_FILE, text + "\n")
    console.say(text)
    return _wait(parts, console)


def _forget_pid(folder: Path) -> None:
    state = local_state.load(folder)
    if state is not None and state.pid == os.getpid():
        state.pid = None
        local_state.save(folder, state)


def _stop_parts(parts: list[Part], console: Console, own_redis_url: str | None) -> None:
    for part in parts:
        console.say(stop_part(part))
        if part.name == "workers" and own_redis_url is not None:
            try:
                dropped = drop_worker_registrations(own_redis_url)
            except redis_lib.RedisError:
                dropped = 0
            if dropped:
                console.say(f"dropped {dropped} worker registration(s) left behind")


def _wait(parts: list[Part], console: Console) -> int:
    """Until Ctrl-C or SIGTERM (0), or until a part exits by itself (1)."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stopping:
        for part in parts:
            if part.proc.poll() is not None:
                console.say(f"{part.name} exited with code {part.proc.returncode}{part.where()}; stopping everything")
                return 1
        time.sleep(0.2)
    console.say("stopping")
    return 0


def stop_children(children: Iterable[subprocess.Popen[Any] | None], timeout_s: float = 20.0) -> None:
    """SIGTERM each child still running, then SIGKILL what is still there after `timeout_s` (the
    benchmarks stop their processes with it)."""
    running = [c for c in children if c is not None and c.poll() is None]
    for child in running:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in running:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
