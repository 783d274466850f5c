"""A Redis primary, its replicas and three Sentinels: real processes on free loopback ports.

`SentinelGroup` starts Debian's `redis-server` as the primary, as two replicas (`REPLICAOF`) and
as three Sentinels (`redis-server <conf> --sentinel`) that watch the primary under one service
name, each in a temporary folder; `stop` ends them all and removes the folders. It is ready
when every Sentinel knows both replicas and the two other Sentinels: only then can a killed
primary be voted down and replaced.

Sentinel's clocks are short (`down-after-milliseconds` 1000, `failover-timeout` 3000), so a
failover, asked for (`failover`) or caused by `kill -9` of the primary (`kill_primary`), ends in
a few seconds. Fault tests may reuse it: `servers` and `sentinels` are the processes; `replicas`
names the data servers that are not the primary; `pause_replicas` stops them (SIGSTOP) and `resume`
lets them go on; `restart` starts a killed server again and waits until it is a replica in sync.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from hookstream.embedded import RedisServer, free_port

SERVICE = "hookstream"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
PASSWORD = "ha-secret"  # every data server asks for it, so tests see that the URL's password is used


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    """`condition()`'s first truthy value; errors count as not yet. Fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # a server that is not there yet, a replica still syncing
            last = exc
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s" + (f" (last error: {last!r})" if last else ""))


class SentinelProcess:
    """One Sentinel; it rewrites its configuration file, so the file lives in its own folder."""

    def __init__(self, folder: Path, primary_port: int, quorum: int, down_after_ms: int = DOWN_AFTER_MS) -> None:
        self.folder = folder
        self.down_after_ms = down_after_ms
        self.port = free_port()
        self.primary_port = primary_port
        self.quorum = quorum
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "sentinel.conf"
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", "protected-mode no", f"dir {self.folder}",
            f"logfile {self.folder / 'sentinel.log'}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} {self.quorum}",
            f"sentinel auth-pass {SERVICE} {PASSWORD}",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 2",
        ]) + "\n")
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install -y redis-server)"
        self.proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), 10, f"sentinel on {self.port}")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class SentinelGroup:
    def __init__(self, replicas: int = 2, sentinels: int = 3, down_after_ms: int = DOWN_AFTER_MS) -> None:
        """`down_after_ms`: how long a primary may not answer before it is voted down; a busy machine
        can stall a live one for a second (a slow fsync), which is then failed over."""
        self.down_after_ms = down_after_ms
        self.root = Path(tempfile.mkdtemp(prefix="hookstream-ha-"))
        self.servers = [_data_server(self.root / f"redis-{i}") for i in range(1 + replicas)]
        self.sentinel_count = sentinels
        self.sentinels: list[SentinelProcess] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SentinelGroup:
        first, *others = self.servers
        _start(first)
        for server in others:
            _start(server)
            _admin(server.port).replicaof("127.0.0.1", first.port)
        for server in others:
            wait_for(lambda s=server: _admin(s.port).info("replication")["master_link_status"] == "up", 20,
                     f"replica on {server.port} in sync")
        quorum = self.sentinel_count // 2 + 1
        self.sentinels = [SentinelProcess(self.root / f"sentinel-{i}", first.port, quorum, self.down_after_ms).start()
                          for i in range(self.sentinel_count)]
        self.wait_ready()
        return self

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
            server.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Every Sentinel names the same live primary and knows every live replica and the other Sentinels."""
        live = [s for s in self.servers if s.proc is not None and s.proc.poll() is None]

        def ready() -> bool:
            answers = [s.client().sentinel_master(SERVICE) for s in self.running_sentinels()]
            primary = {(a["ip"], int(a["port"])) for a in answers}
            return (len(primary) == 1 and all(a["num-slaves"] >= len(live) - 1 for a in answers)
                    and all(a["num-other-sentinels"] >= len(answers) - 1 for a in answers)
                    and all(not (a["is_sdown"] or a["is_odown"]) for a in answers)
                    and _role(self.primary_port()) == "master")

        wait_for(ready, timeout_s, "sentinels agree on a primary and know its replicas", every_s=0.2)

    # -- what tests read -----------------------------------------------------------------------

    @property
    def addresses(self) -> str:
        """HOOKSTREAM_REDIS_SENTINELS"""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def running_sentinels(self) -> list[SentinelProcess]:
        return [s for s in self.sentinels if s.proc is not None and s.proc.poll() is None]

    def primary_port(self) -> int:
        """The primary as the first Sentinel that answers names it."""
        for sentinel in self.running_sentinels():
            try:
                return int(sentinel.client().sentinel_get_master_addr_by_name(SERVICE)[1])
            except redis.RedisError:
                continue
        raise AssertionError("no sentinel answers")

    def config_epoch(self) -> int:
        """The service's configuration epoch as the first Sentinel that answers has it: one more per failover."""
        for sentinel in self.running_sentinels():
            try:
                return int(sentinel.client().sentinel_master(SERVICE)["config-epoch"])
            except redis.RedisError:
                continue
        raise AssertionError("no sentinel answers")

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def client(self, port: int, db: int = 0) -> redis.Redis:
        """A direct, plain client of one data server."""
        return _admin(port, db)

    # -- faults --------------------------------------------------------------------------------

    def failover(self, timeout_s: float = 20) -> tuple[int, int]:
        """SENTINEL FAILOVER and wait until a replica is the primary; (old port, new port)."""
        old = self.primary_port()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = wait_for(lambda: self._promoted(old), timeout_s, "a replica promoted")
        return old, new

    def kill_primary(self, timeout_s: float = 30) -> tuple[int, int]:
        """kill -9 of the primary, then wait until the Sentinels promoted a replica; (old port, new port)."""
        old = self.kill_primary_only()
        return old, self.wait_promoted(old, timeout_s)

    def kill_primary_only(self) -> int:
        """kill -9 of the primary; returns once the process is gone (its port)."""
        old = self.primary_port()
        server = self.server(old)
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        server.proc = None
        return old

    def wait_promoted(self, old: int, timeout_s: float = 30) -> int:
        """Until the Sentinels name a replica as the primary instead of `old`, and it serves as one (its port)."""
        return int(wait_for(lambda: self._promoted(old), timeout_s, "a replica promoted after the kill"))

    def replicas(self) -> list[RedisServer]:
        """The running data servers that are not the primary the Sentinels name."""
        primary = self.primary_port()
        return [s for s in self.servers if s.port != primary and s.proc is not None and s.proc.poll() is None]

    def pause_replicas(self) -> list[RedisServer]:
        """SIGSTOP every replica and wait until each is stopped: they take nothing and confirm nothing."""
        paused = self.replicas()
        for server in paused:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
        for server in paused:
            wait_for(lambda s=server: _state(s) == "T", 10, f"replica on {server.port} stopped")
        return paused

    def resume(self, servers: list[RedisServer]) -> None:
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)

    def restart(self, port: int, timeout_s: float = 60) -> None:
        """Start a killed data server again on its port and folder (its AOF is loaded): a former primary
        comes back as a primary with what it held, until the Sentinels turn it into a replica of the
        current one, whose full copy replaces its own. Waits until it is that replica, in sync."""
        server = self.server(port)
        assert server.proc is None, f"the server on {port} is running"
        _start(server)

        def rejoined() -> bool:
            info = _admin(port).info("replication")
            return (info["role"] == "slave" and int(info["master_port"]) == self.primary_port()
                    and info["master_link_status"] == "up")

        wait_for(rejoined, timeout_s, f"the server on {port} a replica of the primary again", every_s=0.2)

    def _promoted(self, old: int) -> int | None:
        port = self.primary_port()
        return port if port != old and _role(port) == "master" else None


def _data_server(folder: Path) -> RedisServer:
    return RedisServer(folder, appendfsync="everysec")


def _start(server: RedisServer) -> None:
    server.start()
    # Every data server asks for the password, and replicas use it to follow whichever is primary.
    with redis.Redis(port=server.port, socket_timeout=2) as plain:
        plain.config_set("masterauth", PASSWORD)
        plain.config_set("repl-diskless-sync-delay", 0)  # a new replica syncs at once, not after 5 s
        plain.config_set("requirepass", PASSWORD)


def _admin(port: int, db: int = 0) -> redis.Redis:
    return redis.Redis(port=port, db=db, password=PASSWORD, socket_timeout=2, socket_connect_timeout=1)


def _state(server: RedisServer) -> str:
    """The process's state letter from /proc (T: stopped)."""
    assert server.proc is not None
    stat = Path(f"/proc/{server.proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def _role(port: int) -> str:
    with _admin(port) as client:
        return str(client.info("replication")["role"])
