"""A Redis Cluster of three primaries with a replica each, and a plain queue Redis: real processes.

`RedisClusterGroup` starts six Debian `redis-server` processes with `--cluster-enabled yes` on free
loopback ports, each in its own folder, joins them with `redis-cli --cluster create ...
--cluster-replicas 1 --cluster-yes` (the first three are the primaries, each with one P-th of the
slots in order) and waits until every node says `cluster_state:ok` and knows all six. The node
timeout is short (CLUSTER_NODE_TIMEOUT_MS), so a killed primary's replica takes over in seconds
(`kill_primary`), and the other primaries go on taking writes meanwhile (`cluster-require-full-coverage
no`; with the default yes, the whole cluster refuses writes until the replica is promoted). Fault tests
reuse it. The queue Redis is `queue_redis()`: RQ cannot run on a cluster.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import redis

from hookstream.embedded import RedisServer
from shared.shards import slot
from tests.ha.servers import wait_for

CLUSTER_NODE_TIMEOUT_MS = 1000
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000, so the port must be 55535 or less


def cluster_port() -> int:
    """A free loopback port whose bus port is free too."""
    for _ in range(200):
        port = random.randrange(20_000, 65_536 - BUS_OFFSET)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + BUS_OFFSET))
            return port
        except OSError:
            continue
    raise AssertionError("no free port pair for a cluster node")


class ClusterNode:
    def __init__(self, folder: Path, aof: bool = False) -> None:
        self.folder = folder
        self.aof = aof
        self.port = cluster_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ClusterNode:
        self.folder.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install -y redis-server)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
             *(("--appendonly", "yes", "--appendfsync", "everysec") if self.aof else ("--appendonly", "no")),
             "--save", "",
             "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", "--protected-mode", "no",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), 10, f"cluster node on {self.port}")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)


class RedisClusterGroup:
    def __init__(self, primaries: int = 3, replicas_each: int = 1, aof: bool = False) -> None:
        """`aof`: AOF with appendfsync everysec (the benchmark's servers); tests need none."""
        self.root = Path(tempfile.mkdtemp(prefix="hookstream-cluster-"))
        self.nodes = [ClusterNode(self.root / f"node-{i}", aof) for i in range(primaries * (1 + replicas_each))]
        self.replicas_each = replicas_each
        self.primary_count = primaries

    def start(self) -> RedisClusterGroup:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed (apt-get install -y redis-tools)"
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", str(self.replicas_each), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ok()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Every live node: cluster_state ok, every slot served, and each primary's replicas in sync."""
        def ok() -> bool:
            live = [n for n in self.nodes if n.alive()]
            for node in live:
                info = node.client().cluster("info")
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
            for port in self.primary_ports():
                replication = self.node(port).client().info("replication")
                if int(replication["connected_slaves"]) < self._live_replicas_of(port):
                    return False
            return True

        wait_for(ok, timeout_s, "cluster state ok", every_s=0.2)

    # -- what tests read -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """HOOKSTREAM_REDIS_URL: every node, the first as a URL."""
        first, *others = self.nodes
        return ",".join([f"redis://127.0.0.1:{first.port}/0", *(f"127.0.0.1:{n.port}" for n in others)])

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def _nodes_table(self) -> list[dict[str, object]]:
        live = next(n for n in self.nodes if n.alive())
        table = live.client().execute_command("CLUSTER", "NODES")
        text = table.decode() if isinstance(table, bytes) else str(table)
        rows = []
        for line in text.splitlines():
            parts = line.split()
            rows.append({"id": parts[0], "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]), "flags": parts[2],
                         "master": parts[3], "slots": parts[8:]})
        return rows

    def primary_ports(self) -> list[int]:
        """Live primaries that serve slots."""
        return [int(r["port"]) for r in self._nodes_table()  # type: ignore[call-overload]
                if "master" in str(r["flags"]) and "fail" not in str(r["flags"]) and r["slots"]]

    def _live_replicas_of(self, port: int) -> int:
        table = self._nodes_table()
        primary = next(r for r in table if r["port"] == port)
        return sum(1 for r in table if r["master"] == primary["id"] and "fail" not in str(r["flags"])
                   and self.node(int(r["port"])).alive())  # type: ignore[call-overload]

    def primary_of(self, key: str) -> int:
        """The port of the primary that serves `key`'s slot now."""
        wanted = slot(key)
        for row in self._nodes_table():
            if "master" not in str(row["flags"]) or "fail" in str(row["flags"]):
                continue
            for part in row["slots"]:  # type: ignore[attr-defined]
                low, _, high = str(part).partition("-")
                if not low.startswith("[") and int(low) <= wanted <= int(high or low):
                    return int(row["port"])  # type: ignore[call-overload]
        raise AssertionError(f"no primary serves slot {wanted}")

    # -- faults --------------------------------------------------------------------------------

    def kill_primary(self, key: str, timeout_s: float = 30) -> tuple[int, int]:
        """kill -9 of the primary serving `key`, then wait until its replica took over; (old, new port)."""
        old = self.primary_of(key)
        self.node(old).kill()
        new = wait_for(lambda: (port := self.primary_of(key)) != old and port, timeout_s,
                       "a replica promoted after the kill", every_s=0.1)
        return old, int(new)


def queue_redis() -> RedisServer:
    """A plain Redis for RQ's queues, without AOF (as many run it)."""
    return RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-queue-")), appendfsync="no").start()
