"""The fault suite's harness: real servers and processes, steady webhook traffic, and the accounting.

- `Servers`: a redis-server (AOF, `appendfsync always`, as shipped) and a PostgreSQL cluster on
  free ports in temporary folders, separate from the session fixtures, because tests stop, kill
  and restart them.
- `Pipeline`: `hookstream ingress`, `hookstream dispatch` and `hookstream worker -n N` as
  subprocesses (each in its own process group, stderr captured to a file), with the faults a test
  injects: SIGKILL a worker mid-batch, SIGKILL the dispatcher, restart the workers, kill or stop
  Redis, stop Postgres.
- `Load`: steady, varied webhooks of every provider and feed over HTTP (bench.payloads records),
  each numbered in its User-Agent; it keeps the number of every request answered 200 and, like a
  provider, retries what was not.
- `Pipeline.verify`: after the drain, every acknowledged request is in the stream, every stream
  entry is accounted for in Postgres (its events by dedupe key, or its dead letter) exactly as a
  fault-free reference run of the same entries says, and no consent change was applied twice.

`FIGURES` counts what the issue asks to report; the package's conftest writes it to last-run.json.

Timing: the suite waits on conditions, never on fixed windows. Every wait has a deadline, and the
deadlines are generous (the processes share a machine that may be busy): a condition met early
returns at once, so a long deadline costs nothing when all is well. Randomness: every generator
has its own `random.Random(seed)`; nothing here draws from the global `random` module, which
hypothesis watches while it generates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import re
import secrets as secrets_module
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape as xml_escape

import httpx
import jwt
import orjson
import psycopg
import redis
from psycopg_pool import ConnectionPool
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bench.payloads import MAKERS
from hookstream.embedded import EmbeddedError, PostgresServer, RedisServer, free_port
from hookstream.migrate import migrate
from ingress.routes import FEEDS
from shared import connections
from shared.settings import Settings
from tests.conftest import empty_tables
from workers.batch import write_bisecting
from workers.context import normalize_context
from workers.normalize import Entry, normalize_entries

ROOT = Path(__file__).resolve().parents[2]
PATHS = {(feed.provider, feed.feed): feed.path for feed in FEEDS}
UA_PREFIX = "hookstream-faults/"
START_DEADLINE_S = 90.0  # a process or server started on a busy machine: imports, AOF replay, recovery

# What the issue asks to report; filled by every test of the package, written at session end.
FIGURES: Counter[str] = Counter()
FAULTS: Counter[str] = Counter()  # faults injected, by kind
SCENARIOS: dict[str, dict[str, Any]] = {}  # per verified scenario: what it sent, injected and found


def count(name: str, amount: int = 1) -> None:
    FIGURES[name] += amount


def fault(kind: str, amount: int = 1) -> None:
    FAULTS[kind] += amount
    FIGURES["faults_injected"] += amount


# -- servers ------------------------------------------------------------------------------------


@dataclass
class Secrets:
    """Per-session secrets: they go to the processes' environment and must never reach a log."""

    cm_token: str = field(default_factory=lambda: "cmtok-" + secrets_module.token_hex(12))
    smsmode_token: str = field(default_factory=lambda: "smstok-" + secrets_module.token_hex(12))
    mx2_token: str = field(default_factory=lambda: "mx2tok-" + secrets_module.token_hex(12))
    gwapi_jwt: str = field(default_factory=lambda: "gwjwt-" + secrets_module.token_hex(16))
    gwapi_hmac: str = field(default_factory=lambda: "gwhmac-" + secrets_module.token_hex(16))

    def values(self) -> list[str]:
        return [self.cm_token, self.smsmode_token, self.mx2_token, self.gwapi_jwt, self.gwapi_hmac]


class Servers:
    """redis-server and PostgreSQL of the fault suite, which its tests may stop and restart."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hookstream-faults-"))
        self.redis = RedisServer(self.root / "redis")  # appendonly yes, appendfsync always: deploy/redis.conf
        self.postgres = PostgresServer(durable=False)
        self.logs = self.root / "logs"
        self.logs.mkdir()

    def start(self) -> Servers:
        self.start_redis()
        self.postgres.start()
        migrate(self.postgres.url)
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults_template")
        migrate(self.template_url)
        return self

    @property
    def template_url(self) -> str:
        return self.postgres.url.rsplit("/", 1)[0] + "/faults_template"

    def fresh_database(self, name: str) -> str:
        """A migrated, empty database cloned from the template."""
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
            conn.execute(f"CREATE DATABASE {name} TEMPLATE faults_template")  # type: ignore[arg-type]
        return self.postgres.url.rsplit("/", 1)[0] + f"/{name}"

    def redis_running(self) -> bool:
        return self.redis.proc is not None and self.redis.proc.poll() is None

    def start_redis(self, timeout_s: float = START_DEADLINE_S) -> None:
        """Start redis-server (again: same port and folder) and wait until it answers commands.

        `RedisServer.start` waits 10 s for the port; on a busy machine, or with a long AOF to
        replay, it may need longer: as long as the process runs, keep waiting.
        """
        try:
            self.redis.start()
        except EmbeddedError:
            if not self.redis_running():
                raise
        client = redis.Redis.from_url(self.redis.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            wait_until(lambda: bool(client.ping()), timeout_s, "redis-server to answer (AOF loaded)")
        finally:
            client.close()

    def kill_redis(self, sig: int = signal.SIGKILL) -> None:
        """Kill redis-server (SIGKILL: a crash; AOF with fsync always keeps every acknowledged append)."""
        proc = self.redis.proc
        assert proc is not None
        proc.send_signal(sig)
        proc.wait(30)
        self.redis.proc = None

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.remove()


# -- processes ----------------------------------------------------------------------------------


class Proc:
    """A `hookstream` subprocess in its own process group, its stderr and stdout in a log file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.popen = subprocess.Popen([sys.executable, "-m", "hookstream.cli", *args], env=dict(env), cwd=ROOT,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal the process and everything it started (its own process group)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGTERM, then SIGKILL for whatever is left of the group after `timeout_s`."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return self.popen.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")  # the child writes to the file itself

    def assert_alive(self) -> None:
        """Fail at once, with the end of its log, if the process has exited."""
        if not self.alive():
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}: {self.log_text()[-1500:]}")


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> float:
    """Poll `predicate` until it holds (returns the seconds waited) or `timeout_s` has passed (fails)."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except (redis.ConnectionError, redis.TimeoutError, httpx.TransportError, psycopg.OperationalError):
            pass
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


# -- background activity ------------------------------------------------------------------------

# Load generators and slow clients a test started: whatever is still running when the test ends
# (it failed before its own stop) is halted, so that it never runs into the next test. Their
# threads' names start with THREAD_PREFIX.
BACKGROUND: list[Any] = []
THREAD_PREFIX = "faults-"


def halt_background(timeout_s: float = 60) -> list[str]:
    """Halt what the tests started in the background; the names of its threads still running after it."""
    while BACKGROUND:
        thing = BACKGROUND.pop()
        if thing.running():
            thing.halt()
    ours = lambda: [t for t in _other_threads() if t.name.startswith(THREAD_PREFIX)]  # noqa: E731
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and ours():
        time.sleep(0.05)
    return [thread.name for thread in ours()]


def _other_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread is not threading.current_thread()]


def no_other_threads(timeout_s: float = 60) -> None:
    """Until this process runs no thread but the calling one (before hypothesis generates input).

    Hypothesis fails a run when the global `random` state changes while it draws an example, and
    it cannot tell which thread changed it: a retry's or a reconnection's jitter in a thread left
    over from an earlier test would fail a fuzz test that did nothing wrong.
    """
    halt_background(timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _other_threads():
        time.sleep(0.05)
    left = _other_threads()
    assert not left, f"threads still running before fuzzing: {[thread.name for thread in left]}"


# -- the pipeline -------------------------------------------------------------------------------


LOOPBACK = "127.0.0.1/32,::1/128"


class Pipeline:
    """ingress → Redis stream → dispatcher → RQ workers → Postgres, as real processes."""

    def __init__(self, servers: Servers, secrets: Secrets, **env: str) -> None:
        self.servers = servers
        self.secrets = secrets
        self.port = free_port()
        self.extra_env = env
        self.procs: list[Proc] = []
        self.ingress: Proc | None = None
        self.dispatcher: Proc | None = None
        self.workers: Proc | None = None
        self._redis: redis.Redis | None = None
        self.faults_at_start = FIGURES["faults_injected"]
        self.drain_s = 0.0

    # configuration

    @property
    def env(self) -> dict[str, str]:
        s = self.secrets
        env = {key: value for key, value in os.environ.items() if not key.startswith("HOOKSTREAM_")}
        env.update({
            "HOOKSTREAM_REDIS_URL": self.servers.redis.url,
            "HOOKSTREAM_DATABASE_URL": self.servers.postgres.url,
            "HOOKSTREAM_CM_ALLOWED_IPS": LOOPBACK, "HOOKSTREAM_SMSMODE_ALLOWED_IPS": LOOPBACK,
            "HOOKSTREAM_MX2_ALLOWED_IPS": LOOPBACK, "HOOKSTREAM_GATEWAYAPI_ALLOWED_IPS": LOOPBACK,
            "HOOKSTREAM_CM_TOKEN": s.cm_token, "HOOKSTREAM_SMSMODE_TOKEN": s.smsmode_token,
            "HOOKSTREAM_MX2_TOKEN": s.mx2_token,
            "HOOKSTREAM_GATEWAYAPI_SECRET": s.gwapi_jwt, "HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET": s.gwapi_hmac,
            "HOOKSTREAM_GATEWAYAPI_KEYWORDS": "foo",
            # Short timeouts so that a dead worker's batch comes back within seconds, not minutes.
            "HOOKSTREAM_JOB_TIMEOUT": "3", "HOOKSTREAM_VISIBILITY_TIMEOUT": "2",
            "HOOKSTREAM_BATCH_WAIT_MS": "100",
            "HOOKSTREAM_WORKER_METRICS_PORT": "0", "HOOKSTREAM_DISPATCH_METRICS_PORT": "0",
            "HOOKSTREAM_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis(self) -> redis.Redis:
        """The harness's own client of the pipeline's Redis: with HOOKSTREAM_REDIS_SENTINELS in the
        environment (a test's override), the primary the Sentinels name, followed through a failover."""
        if self._redis is None:
            settings = self.settings
            self._redis = connections.cli_redis(settings) if settings.redis_sentinels else redis.Redis.from_url(
                self.servers.redis.url, socket_timeout=5, socket_connect_timeout=2)
        return self._redis

    # lifecycle

    def reset(self) -> None:
        """Empty Redis and the tables: each test starts from nothing."""
        self.redis.flushall()
        with psycopg.connect(self.servers.postgres.url, autocommit=True) as conn:
            empty_tables(conn)

    def _start(self, name: str, *args: str) -> Proc:
        proc = Proc(name, list(args), self.env, self.servers.logs)
        self.procs.append(proc)
        return proc

    def start_ingress(self) -> None:
        self.ingress = self._start("ingress", "ingress", "--host", "127.0.0.1", "--port", str(self.port))
        self._wait_healthy(self.ingress, self.url)

    @staticmethod
    def _wait_healthy(ingress: Proc, url: str) -> None:
        def healthy() -> bool:
            ingress.assert_alive()  # an ingress that exited (it cannot import, say) fails at once
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200

        wait_until(healthy, START_DEADLINE_S, "the ingress")

    def start_dispatcher(self) -> None:
        self.dispatcher = self._start("dispatch", "dispatch")

    def start_workers(self, processes: int = 2) -> None:
        self.workers = self._start("worker", "worker", "-n", str(processes))
        self.wait_for_workers(processes)

    def wait_for_workers(self, processes: int) -> None:
        queue = Queue(self.settings.queue, connection=self.redis)

        def ready() -> bool:
            if self.workers is not None:
                self.workers.assert_alive()
            live = [w for w in Worker.all(queue=queue) if w.pid and _pid_alive(w.pid)]
            return len(live) >= processes

        wait_until(ready, START_DEADLINE_S, f"{processes} RQ workers")

    def start_ingress_only(self, host: str = "127.0.0.1") -> Pipeline:
        """Only the ingress (it needs nothing but Redis), on `host`: `::1` for IPv6."""
        self.reset()
        self.ingress = self._start("ingress", "ingress", "--host", host, "--port", str(self.port))
        self._wait_healthy(self.ingress, f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}")
        return self

    def start(self, workers: int = 2) -> Pipeline:
        self.reset()
        self.start_ingress()
        self.start_dispatcher()
        self.start_workers(workers)
        return self

    def stop(self) -> None:
        """At the end of a test: kill what is left (the logs are on disk, the servers are reset)."""
        for proc in reversed(self.procs):
            if proc.alive():
                proc.kill()
        if self._redis is not None:
            self._redis.close()

    def logs(self) -> dict[str, str]:
        return {proc.log_path.name: proc.log_text() for proc in self.procs}

    # faults

    def kill_worker_mid_batch(self, timeout_s: float = 240) -> str:
        """SIGKILL the worker process that is running a batch, while the batch is not yet acknowledged.

        Polls until one of our workers is actually running a batch. The worker is frozen with
        SIGSTOP first; it is killed only if its job is still running and holds unacknowledged
        entries, so the kill always lands mid-batch. Returns the job id.

        The deadline is generous on purpose: after a burst of worker deaths the dead jobs' started
        entries count as batches in flight until RQ's heartbeat lapses (the job timeout or 30 s,
        whichever is shorter, plus 60 s), and until then the dispatcher reads nothing new.
        """
        s = self.settings
        queue = Queue(s.queue, connection=self.redis, serializer=JSONSerializer)
        registry = queue.started_job_registry
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                job_ids = registry.get_job_ids(cleanup=False)
            except (redis.ConnectionError, redis.TimeoutError):
                job_ids = []
            for job_id in job_ids:
                killed = self._kill_if_mid_batch(job_id)
                if killed:
                    fault("worker SIGKILL mid-batch")
                    return job_id
            time.sleep(0.003)
        raise AssertionError(f"no batch was running within {timeout_s}s to kill a worker in the middle of; "
                             f"processes alive: {[(p.name, p.alive()) for p in self.procs]}")

    def _kill_if_mid_batch(self, job_id: str) -> bool:
        """SIGKILL the worker running `job_id` if the job still runs and holds unacknowledged entries."""
        s = self.settings
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
            if not job.worker_name:
                return False
            worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + job.worker_name,
                                        connection=self.redis)
        except (NoSuchJobError, redis.ConnectionError, redis.TimeoutError):  # finished and gone meanwhile
            return False
        if worker is None or not worker.pid or not self._is_our_worker(worker.pid):
            return False
        pid = worker.pid
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        kill = False
        try:
            ids = job.args[0]
            still_running = job.get_status(refresh=True) == JobStatus.STARTED
            unacked = any(self.redis.xpending_range(s.stream, s.group, min=i, max=i, count=1) for i in ids)
            kill = still_running and unacked
        except (NoSuchJobError, redis.ConnectionError, redis.TimeoutError):
            kill = False
        finally:
            # A worker frozen by the harness is never left frozen: killed, or let go on.
            try:
                os.kill(pid, signal.SIGKILL if kill else signal.SIGCONT)
            except ProcessLookupError:
                kill = False
        return kill

    def _is_our_worker(self, pid: int) -> bool:
        """A process of the worker pool this pipeline started (never anything else)."""
        if self.workers is None:
            return False
        try:
            return os.getpgid(pid) == self.workers.pid
        except ProcessLookupError:
            return False

    def kill_dispatcher(self) -> None:
        assert self.dispatcher is not None
        self.dispatcher.kill()
        fault("dispatcher SIGKILL")
        self.start_dispatcher()

    def restart_workers(self, processes: int = 2, hard: bool = False) -> None:
        """All workers at once: SIGTERM (each finishes its batch) or SIGKILL of the whole pool."""
        assert self.workers is not None
        if hard:
            self.workers.kill()
            fault("all workers SIGKILL")
        else:
            self.workers.stop(timeout_s=20)
            fault("all workers restarted (SIGTERM)")
        self.start_workers(processes)

    def restart_redis(self, down_s: float, hard: bool = True,
                      during: Callable[[], None] | None = None) -> tuple[float, float]:
        """Kill (or stop) redis-server, leave it down `down_s`, start it again on the same port and folder.

        Returns the monotonic times when it was surely down and just before it was started again.
        """
        if hard:
            self.servers.kill_redis()
            fault("redis SIGKILL + restart")
        else:
            self.servers.redis.stop()
            fault("redis SIGTERM + restart")
        if self._redis is not None:
            self._redis.close()
        started = time.monotonic()
        if during is not None:
            during()  # may wait on a condition: the outage lasts until it returns, at least `down_s`
        time.sleep(max(0.0, down_s - (time.monotonic() - started)))
        restarting = time.monotonic()
        self.servers.start_redis()
        return started, restarting

    def stop_postgres(self, down_s: float, during: Callable[[], None] | None = None,
                      before_restart: Callable[[], None] | None = None) -> tuple[float, float]:
        """Stop PostgreSQL, leave it down at least `down_s` (and until `during` returns), start it again.

        Returns the monotonic times when it was surely down and just before it was started again.
        """
        self.servers.postgres.stop("fast")
        fault(f"postgres stopped ~{round(down_s)}s")
        started = time.monotonic()
        if during is not None:
            during()
        time.sleep(max(0.0, down_s - (time.monotonic() - started)))
        if before_restart is not None:
            before_restart()
        restarting = time.monotonic()
        self.servers.postgres.start()
        return started, restarting

    # draining and accounting

    def group_state(self) -> tuple[int, int]:
        """(entries not yet read by the group, entries read and not acknowledged)."""
        s = self.settings
        for group in self.redis.xinfo_groups(s.stream):
            if group["name"].decode() == s.group:
                lag = group.get("lag")
                last = self.redis.xrevrange(s.stream, count=1)
                # Compare the last ids when Redis does not know (after deletions), and when the group
                # has delivered the last entry: Redis 7.0's counter behind `lag` can stay too high
                # forever on a promoted replica (its XREADGROUPs reach replicas without it).
                if lag is None or (last and last[0][0] == group["last-delivered-id"]):
                    lag = int(bool(last) and last[0][0] != group["last-delivered-id"])
                return int(lag), int(group["pending"])
        return -1, -1

    def processed(self) -> int:
        """Stream entries the workers have committed so far (rows of the raw archive)."""
        return int(_rows(self.servers.postgres.url, "SELECT count(*) FROM raw_archive")[0][0])

    def wait_processed(self, more: int, timeout_s: float = 240) -> None:
        """Until the workers have committed `more` entries since the call: the pipeline is moving."""
        target = self.processed() + more

        def moved() -> bool:
            for proc in (self.ingress, self.dispatcher, self.workers):
                if proc is not None:
                    proc.assert_alive()  # one that exited on its own (not a fault) fails at once
            return self.processed() >= target

        wait_until(moved, timeout_s, f"{more} more entries committed by the workers", every_s=0.1)

    def wait_drained(self, timeout_s: float = 240) -> float:
        """Until every stream entry was read and acknowledged (twice in a row, 0.3 s apart)."""
        started = time.monotonic()
        quiet = 0
        while True:
            try:
                lag, pending = self.group_state()
            except (redis.ConnectionError, redis.TimeoutError):
                lag, pending = -1, -1
            quiet = quiet + 1 if (lag, pending) == (0, 0) else 0
            if quiet >= 2:
                self.drain_s = time.monotonic() - started
                return self.drain_s
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"the pipeline did not drain in {timeout_s}s: lag {lag}, pending {pending}; "
                                     f"processes alive: {[(p.name, p.alive()) for p in self.procs]}; "
                                     f"stuck: {self.diagnose_pending()}")
            time.sleep(0.3)

    def diagnose_pending(self, limit: int = 5) -> list[dict[str, Any]]:
        """What holds the oldest pending entries: their job, its status, where RQ keeps it."""
        s = self.settings
        queue = Queue(s.queue, connection=self.redis, serializer=JSONSerializer)
        found = []
        for p in self.redis.xpending_range(s.stream, s.group, min="-", max="+", count=limit):
            sid = p["message_id"].decode()
            job_id = self.redis.hget(s.inflight_key, sid)
            info: dict[str, Any] = {"id": sid, "deliveries": p["times_delivered"], "idle_ms": p["time_since_delivered"],
                                    "job": job_id.decode() if job_id else None}
            if job_id:
                job = Job.fetch(job_id.decode(), connection=self.redis, serializer=JSONSerializer) \
                    if self.redis.exists(f"rq:job:{job_id.decode()}") else None
                info["status"] = job.get_status(refresh=False) if job else "gone"
                info["started_at"] = str(job.started_at) if job else None
                info["in_queue"] = job_id.decode() in queue.get_job_ids()
                info["in_started"] = self.redis.zscore(queue.started_job_registry.key, job_id) is not None or any(
                    m.decode().startswith(job_id.decode()) for m in self.redis.zrange(queue.started_job_registry.key, 0, -1))
            found.append(info)
        return found

    def verify(self, load: Load | None = None, *, label: str = "", acknowledged: int | None = None) -> Verdict:
        """The accounting after a drain; raises AssertionError describing every discrepancy.

        `acknowledged`: the 200s of a test that sent its requests itself (without a Load).
        """
        verdict = account(self, load)
        acked = len(load.acked) if load is not None else (acknowledged or 0)
        count("requests_acknowledged", acked)
        SCENARIOS[label or f"scenario {len(SCENARIOS) + 1}"] = {
            "acknowledged": acked, "faults": FIGURES["faults_injected"] - self.faults_at_start,
            "stream_entries": verdict.entries, "events": verdict.events, "dead_letters": verdict.dead_letters,
            "consent_changes": verdict.consent_changes, "lost": verdict.lost, "duplicates": verdict.duplicates,
            "answers_503": load.statuses.get(503, 0) if load is not None else 0,
            "answers_5xx": load.server_errors if load is not None else 0,
            "drain_s": round(self.drain_s, 1), "problems": len(verdict.problems),
        }
        count("events_lost", verdict.lost)
        count("duplicate_side_effects", verdict.duplicates)
        count("stream_entries_checked", verdict.entries)
        count("events_checked", verdict.events)
        count("dead_letters_checked", verdict.dead_letters)
        if load is not None:
            count("answers_5xx", load.server_errors)
            count("answers_503", load.statuses.get(503, 0))
            if load.server_errors:
                verdict.problems.append(f"5xx answers other than 503: {dict(load.statuses)}")
        leaks = scan_logs(self.logs(), self.secrets, load)
        verdict.problems += [f"log leak: {leak}" for leak in leaks]
        count("log_leaks", len(leaks))
        assert not verdict.problems, f"{label}: " + "\n".join(verdict.problems[:40])
        return verdict


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# -- the accounting ----------------------------------------------------------------------------


@dataclass
class Verdict:
    entries: int = 0
    events: int = 0
    dead_letters: int = 0
    consent_changes: int = 0
    lost: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)


def _ua_seq(fields: Mapping[bytes, bytes]) -> int | None:
    try:
        agent = orjson.loads(fields.get(b"h", b"{}")).get("user-agent", "")
    except orjson.JSONDecodeError:
        return None
    if not agent.startswith(UA_PREFIX):
        return None
    try:
        return int(agent[len(UA_PREFIX):].split("/", 1)[0])
    except ValueError:
        return None


def reference_run(servers: Servers, raw: list[tuple[str, Mapping[bytes, bytes]]], settings: Settings) -> str:
    """The same entries through the same code with no fault at all: one process, stream order."""
    url = servers.fresh_database("faults_reference")
    entries = normalize_entries(raw, normalize_context(settings))
    with ConnectionPool(url, min_size=1, max_size=1, open=True, kwargs={"prepare_threshold": None}) as pool:
        for i in range(0, len(entries), 500):
            write_bisecting(pool, entries[i : i + 500])
    return url


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def account(pipeline: Pipeline, load: Load | None) -> Verdict:
    s = pipeline.settings
    verdict = Verdict()
    problems = verdict.problems
    r = pipeline.redis

    lag, pending = pipeline.group_state()
    if (lag, pending) != (0, 0):
        problems.append(f"stream not drained: lag {lag}, pending {pending}")
    raw = [(sid.decode(), fields) for sid, fields in r.xrange(s.stream)]
    verdict.entries = len(raw)
    ids = [sid for sid, _ in raw]

    # 1. Every acknowledged request is in the stream (an acknowledged request lost by Redis).
    if load is not None:
        stored = {seq for _, fields in raw if (seq := _ua_seq(fields)) is not None}
        lost = sorted(load.acked - stored)
        if lost:
            problems.append(f"{len(lost)} acknowledged requests are not in the stream: {lost[:10]}")
            verdict.lost += len(lost)

    # A token is removed before the record is stored: no secret in the stream.
    for sid, fields in raw:
        stored_text = b" ".join(fields.values())
        if any(secret.encode() in stored_text for secret in pipeline.secrets.values()):
            problems.append(f"a secret is stored in stream entry {sid}")
            break

    # 2. The raw archive holds every entry once.
    archived = [row[0] for row in _rows(pipeline.servers.postgres.url, "SELECT stream_id FROM raw_archive")]
    if len(archived) != len(set(archived)):
        problems.append("raw_archive holds an entry twice")
    missing_archive = set(ids) - set(archived)
    if missing_archive:
        problems.append(f"{len(missing_archive)} entries missing from raw_archive: {sorted(missing_archive)[:5]}")
        verdict.lost += len(missing_archive)

    # 3. Events and dead letters, against the normalizers and a fault-free reference run.
    entries: list[Entry] = normalize_entries(raw, normalize_context(s))
    ref_url = reference_run(pipeline.servers, raw, s)
    db_url = pipeline.servers.postgres.url
    ref_dead = dict(_rows(ref_url, "SELECT stream_id, reason FROM dead_letters"))
    # The normalizers' events, less the records Postgres refuses (dead-lettered in the reference too).
    expected_keys = {event.dedupe_key for entry in entries if entry.stream_id not in ref_dead for event in entry.events}
    event_sql = "SELECT dedupe_key, kind, phone, status, body, consent, keyword_outcome FROM events"
    got_events = _rows(db_url, event_sql)
    ref_events = _rows(ref_url, event_sql)
    verdict.events = len(got_events)
    got_keys = [row[0] for row in got_events]
    ref_keys = {row[0] for row in ref_events}
    if len(got_keys) != len(set(got_keys)):
        problems.append("an event key is stored twice")
        verdict.duplicates += len(got_keys) - len(set(got_keys))
    missing = (ref_keys | expected_keys) - set(got_keys)
    if missing:
        problems.append(f"{len(missing)} events missing (lost): {sorted(missing)[:5]}")
        verdict.lost += len(missing)
    extra = set(got_keys) - ref_keys
    if extra:
        problems.append(f"{len(extra)} events that the reference run does not have: {sorted(extra)[:5]}")
    differing = set(got_events) ^ set(ref_events)
    if differing and not missing and not extra:
        problems.append(f"{len(differing)} event rows differ from the reference run: {sorted(differing, key=str)[:4]}")

    got_dead = dict(_rows(db_url, "SELECT stream_id, reason FROM dead_letters"))
    verdict.dead_letters = len(got_dead)
    if got_dead != ref_dead:
        wrong = {sid: reason for sid, reason in got_dead.items() if ref_dead.get(sid) != reason}
        absent = set(ref_dead) - set(got_dead)
        if wrong:
            problems.append(f"{len(wrong)} dead letters the reference run does not have (or not for that "
                            f"reason): {list(wrong.items())[:5]}")
        if absent:
            problems.append(f"{len(absent)} dead letters missing: {sorted(absent)[:5]}")
            verdict.lost += len(absent)
    dead_with_events = set(got_dead) & {row[0] for row in _rows(db_url, "SELECT DISTINCT stream_id FROM events")}
    if dead_with_events:
        problems.append(f"entries both dead-lettered and turned into events: {sorted(dead_with_events)[:5]}")

    # 4. Side effects: consent changes once each, the same final consent and delivery status.
    changes = _rows(db_url, "SELECT id, event_key, subject, scope, old_state, new_state FROM consent_changes"
                            " ORDER BY id")
    verdict.consent_changes = len(changes)
    keys = [row[1] for row in changes]
    if len(keys) != len(set(keys)):
        problems.append("a consent change is stored twice for one event")
        verdict.duplicates += len(keys) - len(set(keys))
    unknown_cause = set(keys) - set(got_keys)
    if unknown_cause:
        problems.append(f"consent changes without their event: {sorted(unknown_cause)[:5]}")
    breaks = consent_chain_breaks(changes, global_subjects={row[0] for row in _rows(
        db_url, "SELECT DISTINCT subject FROM consent WHERE scope = '*'")})
    if breaks:
        problems.append(f"{len(breaks)} consent transitions applied twice or out of chain: {breaks[:5]}")
        verdict.duplicates += len(breaks)
    state_sql = "SELECT subject, scope, state FROM consent"
    if set(_rows(db_url, state_sql)) != set(_rows(ref_url, state_sql)):
        diff = set(_rows(db_url, state_sql)) ^ set(_rows(ref_url, state_sql))
        problems.append(f"consent differs from the reference run: {sorted(diff)[:5]}")
    status_sql = "SELECT provider, message_ref, recipient, status, status_at FROM message_status"
    got_status, ref_status = set(_rows(db_url, status_sql)), set(_rows(ref_url, status_sql))
    if got_status != ref_status:
        problems.append(f"message_status differs from the reference run: {sorted(got_status ^ ref_status, key=str)[:5]}")
    return verdict


def consent_chain_breaks(changes: Iterable[tuple[Any, ...]], global_subjects: set[str]) -> list[tuple[Any, ...]]:
    """Changes that do not start from the state the previous change of their (subject, scope) left.

    A transition applied twice shows up here: `opted_in → opted_out` twice in a row. A scope of a
    subject that also has a `*` row is skipped: a `*` opt-out changes its answer without a row.
    """
    last: dict[tuple[str, str], str] = {}
    breaks = []
    for _id, event_key, subject, scope, old, new in changes:
        key = (subject, scope)
        if key in last and old != last[key] and (scope == "*" or subject not in global_subjects):
            breaks.append((event_key, subject, scope, old, new, "after", last[key]))
        last[key] = new
    return breaks


# -- log hygiene -------------------------------------------------------------------------------

DIGITS = re.compile(r"\d{8,}")
QUERY_FIELDS = re.compile(r"\b(numero|emetteur|message|date_reception|smsID|token|body|from|to)=[^\s&\"]{3,}")


def scan_logs(logs: Mapping[str, str], secrets: Secrets, load: Load | None, extra_texts: Iterable[str] = ()) -> list[str]:
    """Phone numbers in clear, message bodies, query strings and secrets found in the processes' logs."""
    phones = load.phones if load is not None else set()
    texts = {t for t in (load.texts if load is not None else set()) if len(t) >= 12} | set(extra_texts)
    leaks = []
    for name, text in logs.items():
        for secret in secrets.values():
            if secret in text:
                leaks.append(f"{name}: a secret")
        for run in DIGITS.findall(text):
            if run in phones or run.lstrip("0") in phones:
                leaks.append(f"{name}: phone number {run[:3]}…")
                break
        for body in texts:
            if body in text:
                leaks.append(f"{name}: message body {body[:12]!r}…")
                break
        match = QUERY_FIELDS.search(text)
        if match:
            leaks.append(f"{name}: query string {match.group(0)[:20]!r}…")
    return leaks


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    query: str
    body: bytes
    headers: dict[str, str]
    phone: str | None = None  # digits of the person's number, to look for in the logs
    text: str | None = None  # the message text, to look for in the logs

    def with_seq(self, seq: int, attempt: int = 1) -> Req:
        return Req(self.method, self.path, self.query, self.body,
                   {**self.headers, "user-agent": f"{UA_PREFIX}{seq}/{attempt}"}, self.phone, self.text)


# Bodies that must round-trip exactly into events.body: SQL, quotes, emoji, scripts, controls.
TRICKY_TEXTS = (
    "Robert'); DROP TABLE events;--",
    "' OR '1'='1' --",
    "1; SELECT pg_sleep(30); --",
    "$$; DELETE FROM consent; $$",
    "\\'; TRUNCATE consent_changes; --\\",
    "%27%20OR%201=1 %00 %s %d {0} {{7*7}} ${jndi:ldap://x}",
    "😀👍🏽 merci 🛑",
    "👨‍👩‍👧‍👦 family ZWJ",
    "ＳＴＯＰ ｐｌｅａｓｅ not really",
    "مرحبا بالعالم",
    "z̷̢̛a̸l̵g̷o̶ text",
    "\u202eRTL override\u202c and \u200bzero width",
    "tab\there,\nnew line",
    "<script>alert(1)</script> & <b>",
    "café naïve œuvre ß",
    "🦄" * 150,
)

JSON_CT = {"content-type": "application/json"}


def _phone(rng: random.Random) -> str:
    return f"316{20_000_000 + rng.randrange(900_000):08d}"


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"cm:{password}".encode()).decode()


def sign_jwt(body: bytes, secret: str) -> str:
    import warnings

    try:
        claims = orjson.loads(body)
    except orjson.JSONDecodeError:
        claims = None
    if not isinstance(claims, dict):  # a body that is no JSON object cannot be the signed payload
        claims = {"unsigned": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(claims, secret, algorithm="HS256")


def sign_hmac(body: bytes, secret: str) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Requests:
    """Builds signed HTTP requests for records of every provider and feed."""

    def __init__(self, secrets: Secrets) -> None:
        self.s = secrets

    def from_record(self, provider: str, feed: str, content_type: str, body: bytes, query: bytes) -> Req:
        """A bench.payloads record as the provider sends it, with our token or signature."""
        path = PATHS[(provider, feed)]
        method = "GET" if query and not body else "POST"
        headers = {"content-type": content_type} if content_type else {}
        q = query.decode()
        if provider == "cm":
            if method == "GET":
                q = f"{q}&token={quote(self.s.cm_token)}"
            else:
                headers["authorization"] = _basic(self.s.cm_token)
        elif provider == "smsmode":
            q = f"{q}&token={quote(self.s.smsmode_token)}" if q else f"token={quote(self.s.smsmode_token)}"
        elif provider == "mx2":
            q = f"token={quote(self.s.mx2_token)}"
        elif feed == "rest":
            headers["x-gwapi-signature"] = sign_jwt(body, self.s.gwapi_jwt)
        else:
            headers["signature"] = sign_hmac(body, self.s.gwapi_hmac)
        return Req(method, path, q, body, headers)

    def sign(self, req: Req) -> Req:
        """Re-sign a hand-built request the way from_record would."""
        provider = next(p for (p, _f), path in PATHS.items() if path == req.path)
        feed = next(f for (p, f), path in PATHS.items() if path == req.path)
        query = req.query.encode()
        made = self.from_record(provider, feed, req.headers.get("content-type", ""), req.body, query)
        if req.method == "GET" and not req.body:
            made = Req("GET", made.path, made.query, b"", made.headers)
        return Req(made.method, made.path, made.query, made.body, {**req.headers, **made.headers}, req.phone, req.text)

    # extra shapes beside bench.payloads: XML, the CM Get format, tricky texts, garbage

    def cm_mo_get(self, i: int, rng: random.Random, text: str | None = None) -> Req:
        phone, text = _phone(rng), text or rng.choice(["STOP", "hello", "Start", "stop please"])
        query = urlencode({"from": f"+{phone}", "to": "3669", "body": text, "reference": f"g-{i}"})
        return self.sign(Req("GET", PATHS[("cm", "mo")], query, b"", {}, phone, text))

    def cm_mo_xml(self, i: int, rng: random.Random, text: str | None = None) -> Req:
        phone, text = _phone(rng), text or rng.choice(["STOP", "Merci", "START"])
        body = (f"<MO><FROM>+{phone}</FROM><TO>3669</TO><BODY>{xml_escape(text)}</BODY>"
                f"<REFERENCE>x-{i}</REFERENCE></MO>").encode()
        return self.sign(Req("POST", PATHS[("cm", "mo")], "", body, {"content-type": "application/xml"}, phone, text))

    def cm_mo_json(self, i: int, rng: random.Random, text: str) -> Req:
        phone = _phone(rng)
        body = orjson.dumps({"reference": f"j-{i}", "from": f"+{phone}", "to": "3669", "body": text,
                             "groupings": ["", "", ""]})
        return self.sign(Req("POST", PATHS[("cm", "mo")], "", body, dict(JSON_CT), phone, text))

    def smsmode_mo(self, i: int, rng: random.Random, text: str) -> Req:
        phone = _phone(rng)
        query = urlencode({"numero": "36034", "message": text, "emetteur": phone,
                           "date_reception": "25032025-095217", "smsID": f"T{i}", "responseID": f"T{i}"})
        return self.sign(Req("GET", PATHS[("smsmode", "mo")], query, b"", {}, phone, text))

    def gwapi_mo(self, i: int, rng: random.Random, text: str) -> Req:
        phone = _phone(rng)
        body = orjson.dumps({"id": 900_000_000 + i, "msisdn": int(phone), "receiver": 451204, "message": text,
                             "senttime": 1_700_000_000 + i, "webhook_label": "faults"})
        return self.sign(Req("POST", PATHS[("gatewayapi", "rest")], "", body, dict(JSON_CT), phone, text))

    def gwapi_event_mo(self, i: int, rng: random.Random, text: str) -> Req:
        phone = _phone(rng)
        body = orjson.dumps({"event_id": f"20000000-0000-4000-8000-{i:012d}", "timestamp": "2025-04-01T11:50:12+00:00",
                             "event_type": "user-message.text.sms",
                             "event": {"msg_id": f"M{i}", "sender": int(phone), "recipient": 451204,
                                       "sent_at": "2025-04-01T11:50:11+00:00", "content": {"message": text}}})
        return self.sign(Req("POST", PATHS[("gatewayapi", "events")], "", body, dict(JSON_CT), phone, text))

    def mx2_reply(self, i: int, rng: random.Random, text: str) -> Req:
        body = orjson.dumps({"subscriberId": f"tricky{i}", "cguid": "C-T", "status": "received", "statusMessage": "",
                             "textMessage": text, "messageType": "Reply", "datetime": "2024-03-25 20:01:58"})
        return self.sign(Req("POST", PATHS[("mx2", "webhook")], "", body, dict(JSON_CT), None, text))

    def garbage(self, i: int, rng: random.Random) -> Req:
        """Accepted by the ingress (signed, allowed), refused by the normalizer: a dead letter."""
        # Not the JWT route: its signature covers the body's JSON object, so garbage there is a 401.
        path = rng.choice(sorted(p for p in PATHS.values() if p != PATHS[("gatewayapi", "rest")]))
        body = rng.choice([b"not json at all", b"{}", b"[1,2,3]", b'{"status": {"deep": [1]}}', b"<MO><BROKEN>",
                           b"\xff\xfe\x00garbage", f'{{"n": {i}, "x": null}}'.encode()])
        return self.sign(Req("POST", path, "", body, dict(JSON_CT)))

    def varied(self, i: int, rng: random.Random) -> Req:
        """Mostly bench.payloads records; every 12th one of the extra shapes; a little garbage."""
        pick = i % 12
        if pick == 9:
            return rng.choice([self.cm_mo_get, self.cm_mo_xml])(i, rng)
        if pick == 10:
            maker = rng.choice([self.cm_mo_json, self.smsmode_mo, self.gwapi_mo, self.gwapi_event_mo, self.mx2_reply])
            return maker(i, rng, rng.choice(TRICKY_TEXTS))
        if pick == 11 and rng.random() < 0.3:
            return self.garbage(i, rng)
        provider, feed, content_type, body, query = MAKERS[i % len(MAKERS)](i, rng)
        req = self.from_record(provider, feed, content_type, body, query)
        return Req(req.method, req.path, req.query, req.body, req.headers, *_who_and_what(body, query))


def _who_and_what(body: bytes, query: bytes) -> tuple[str | None, str | None]:
    """The phone digits and the text of a bench record, to look for in the logs."""
    phone = text = None
    found = re.search(rb"(?:\+|%2B)?(31\d{9})", body + b" " + query)
    if found:
        phone = found.group(1).decode()
    return phone, text


# -- the load generator ------------------------------------------------------------------------


@dataclass
class Attempt:
    seq: int
    sent_at: float
    latency: float
    status: int  # 0: transport error

    @property
    def answered_at(self) -> float:
        return self.sent_at + self.latency


class Load:
    """Steady traffic from a background thread; every request is numbered; non-200s are retried.

    `rate` requests per second are started whatever the answers (an outage does not slow the
    providers down); a request that got no 200 is sent again after `retry_after` seconds until
    `stop()` has waited `settle_s` for the retries (a provider's retry).
    """

    def __init__(self, url: str, requests: Requests, *, rate: float = 100, seed: int = 1, start: int = 0,
                 retry: bool = True, retry_after: float = 0.5, timeout_s: float = 5.0,
                 make: Callable[[int, random.Random], Req] | None = None) -> None:
        self.url = url
        self.requests = requests
        self.rate = rate
        self.rng = random.Random(seed)
        self.jitter = random.Random(-seed - 1)  # the retries' own generator: never the global `random`
        self.next_seq = start
        self.retry = retry
        self.retry_after = retry_after
        self.timeout_s = timeout_s
        self.make = make or requests.varied
        self.acked: set[int] = set()
        self.sent: set[int] = set()
        self.attempts: list[Attempt] = []
        self.statuses: Counter[int] = Counter()
        self.phones: set[str] = set()
        self.texts: set[str] = set()
        self._stop_new = threading.Event()
        self._thread: threading.Thread | None = None
        self._settle_s = 30.0
        self._deadline = float("inf")  # retries stop after it, once no new request is started
        self._lock = threading.Lock()
        self.error: BaseException | None = None  # what ended the generator's thread, if anything did

    @property
    def server_errors(self) -> int:
        """5xx answers other than 503 (503 is the designed 'retry later')."""
        return sum(n for status, n in self.statuses.items() if status >= 500 and status != 503)

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"{THREAD_PREFIX}load")
        self._thread.start()
        BACKGROUND.append(self)
        return self

    def stop(self, settle_s: float = 30.0) -> Load:
        """Stop starting new requests; wait up to `settle_s` for retries to be acknowledged."""
        self._settle_s = settle_s
        self._stop_new.set()
        assert self._thread is not None
        self._thread.join(settle_s + 60)
        if self._thread.is_alive():
            self.halt()
            raise AssertionError(f"the load generator did not stop within {settle_s + 60}s")
        if self.error is not None:
            raise AssertionError(f"the load generator failed: {self.error!r}") from self.error
        count("requests_sent", len(self.sent))
        return self

    def halt(self) -> None:
        """Stop at once: no new request, no retry (a test that failed before its stop())."""
        self._settle_s = 0.0
        self._deadline = time.monotonic()
        self._stop_new.set()
        if self._thread is not None:
            self._thread.join(60)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_acked(self, more: int, timeout_s: float = 240) -> None:
        """Until `more` requests were acknowledged since the call: traffic flowed, however busy the machine."""
        target = len(self.acked) + more

        def acked() -> bool:
            self.assert_sending()
            return len(self.acked) >= target

        wait_until(acked, timeout_s, f"{more} more acknowledged requests")

    def assert_sending(self) -> None:
        """Fail at once if the generator's thread has ended before stop() (a request maker raised, say)."""
        if self.error is not None:
            raise AssertionError(f"the load generator failed: {self.error!r}") from self.error
        if not self._stop_new.is_set() and not self.running():
            raise AssertionError("the load generator stopped on its own")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc
            raise

    def attempts_within(self, since: float, until: float) -> list[Attempt]:
        """Attempts sent at or after `since` and answered before `until` (monotonic times).

        Both ends are robust to a slow client thread: `sent_at` is taken before the request
        leaves and `answered_at` after its answer came, so such an attempt surely reached the
        ingress after `since` and was surely answered before `until`.
        """
        with self._lock:
            return [a for a in self.attempts if a.sent_at >= since and a.answered_at < until]

    def answers_within(self, since: float, until: float) -> Counter[int]:
        """By status: the answers to attempts sent at or after `since` and answered before `until`."""
        return Counter(a.status for a in self.attempts_within(since, until))

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=self.timeout_s) as client:
            tasks: set[asyncio.Task[None]] = set()
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            while not self._stop_new.is_set():
                seq = self.next_seq
                self.next_seq += 1
                req = self.make(seq, self.rng)
                if req.phone:
                    self.phones.add(req.phone)
                if req.text:
                    self.texts.add(req.text)
                task = asyncio.create_task(self._deliver(client, seq, req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            self._deadline = min(self._deadline, time.monotonic() + self._settle_s)
            if tasks:
                await asyncio.wait(set(tasks), timeout=self._settle_s + 10)

    async def _deliver(self, client: httpx.AsyncClient, seq: int, req: Req) -> None:
        attempt = 0
        while True:
            attempt += 1
            status = await self._send(client, seq, req.with_seq(seq, attempt))
            if status == 200:
                self.acked.add(seq)
                return
            if not self.retry or 400 <= status < 500:  # a 4xx is an answer; 5xx and no answer are retried
                return
            if self._stop_new.is_set() and time.monotonic() > self._deadline:
                return
            await asyncio.sleep(self.retry_after * (0.5 + self.jitter.random()))

    async def _send(self, client: httpx.AsyncClient, seq: int, req: Req) -> int:
        self.sent.add(seq)
        started = time.monotonic()
        try:
            response = await client.request(req.method, req.path + (f"?{req.query}" if req.query else ""),
                                            content=req.body if req.method == "POST" else None, headers=req.headers)
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        with self._lock:
            self.attempts.append(Attempt(seq, started, time.monotonic() - started, status))
            self.statuses[status] += 1
        return status


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def write_figures(path: Path, extra: Mapping[str, Any]) -> dict[str, Any]:
    data = {**extra, "figures": dict(sorted(FIGURES.items())), "faults": dict(sorted(FAULTS.items())),
            "scenarios": SCENARIOS}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data
