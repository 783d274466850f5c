"""Helpers shared by the benchmarks: HTTP requests built from the payloads, processes, CPU, percentiles.

Nothing here measures by itself; each benchmark module says what it measures and how.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.payloads import records
from hookstream.embedded import PostgresServer, free_port
from ingress.routes import FEEDS
from shared.settings import PROVIDERS

PATHS = {(feed.provider, feed.feed): feed.path for feed in FEEDS}
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One webhook as a provider would send it: method, path with query, content type, body."""

    provider: str
    feed: str
    method: str
    target: str  # path and query string
    content_type: str
    body: bytes

    def raw(self, host: str) -> bytes:
        """The HTTP/1.1 request bytes (keep-alive)."""
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {host}", "User-Agent: hookstream-bench"]
        if self.content_type:
            lines.append(f"Content-Type: {self.content_type}")
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def http_requests(count: int, provider: str | None = None, seed: int = 11, skip: int = 0) -> list[HttpRequest]:
    """`count` requests built from bench.payloads records (one provider's feeds, or all of them),
    after the first `skip` records (so that two runs can send requests with different ids)."""
    out: list[HttpRequest] = []
    for i, record in enumerate(records((count + skip) * (1 if provider is None else 9), seed=seed)):
        if i < skip or (provider is not None and record.provider != provider):
            continue
        target = PATHS[(record.provider, record.feed)]
        if record.query:
            target += "?" + record.query.decode("latin-1")
        out.append(HttpRequest(record.provider, record.feed, record.method, target, record.content_type, record.body))
        if len(out) == count:
            break
    return out


PAYLOAD_SETS: tuple[str, ...] = ("mixed", *PROVIDERS)


def payload_set(name: str, count: int, skip: int = 0) -> list[HttpRequest]:
    return http_requests(count, None if name == "mixed" else name, skip=skip)


# --- processes (started with `hookstream`, stopped with hookstream.run.stop_children) --------------


def wait_http(port: int, path: str = "/healthz", timeout_s: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before answering on {port}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as answer:
                answer.read()
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port}{path} after {timeout_s}s")


def hookstream(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "hookstream.cli", *args], env=env, cwd=ROOT)


def bench_env(redis_url: str, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of the processes under test: our servers, loopback admitted, quiet logs, own ports."""
    env = {**os.environ, "HOOKSTREAM_REDIS_URL": redis_url, "HOOKSTREAM_LOG_LEVEL": "WARNING",
           "HOOKSTREAM_WORKER_METRICS_PORT": str(free_port()), "HOOKSTREAM_DISPATCH_METRICS_PORT": str(free_port())}
    for provider in PROVIDERS:
        env[f"HOOKSTREAM_{provider.upper()}_ALLOWED_IPS"] = "127.0.0.1/32"
    if database_url:
        env["HOOKSTREAM_DATABASE_URL"] = database_url
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


# --- CPU accounting --------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


def postmaster_pid(postgres: PostgresServer) -> int:
    """The pid of an embedded PostgreSQL's postmaster: its tree holds every backend."""
    assert postgres.data_dir is not None
    return int((postgres.data_dir / "cluster" / "postmaster.pid").read_text().split("\n", 1)[0])


def tree_cpu_s(root: int) -> float:
    """CPU seconds of a process and all its live descendants, with their reaped children."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(x) for x in fields[11:15]) / CLK_TCK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used by named processes, by waited-for children (the load generator) and by the machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = {name: process_cpu_s(pid) for name, pid in pids.items()}
        self._children = children_cpu_s()
        self._system = system_busy()
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._t0, 1e-6)
        out = {f"{name}_cores": round((process_cpu_s(pid) - self._start[name]) / elapsed, 2)
               for name, pid in self.pids.items()}
        out["loadgen_cores"] = round((children_cpu_s() - self._children) / elapsed, 2)
        busy, total = system_busy()
        out["machine_busy_cores"] = round((os.cpu_count() or 1) * (busy - self._system[0])
                                          / max(total - self._system[1], 1.0), 2)
        return out


# --- numbers ---------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def latency_summary_ms(latencies_s: Iterable[float]) -> dict[str, float]:
    values = sorted(latencies_s)
    if not values:
        return {"count": 0}
    return {"count": len(values), "p50_ms": round(percentile(values, 50) * 1000, 3),
            "p90_ms": round(percentile(values, 90) * 1000, 3), "p99_ms": round(percentile(values, 99) * 1000, 3),
            "p99_9_ms": round(percentile(values, 99.9) * 1000, 3), "max_ms": round(values[-1] * 1000, 3),
            "mean_ms": round(sum(values) / len(values) * 1000, 3)}


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    if not a or not b:
        return None
    return round(a / b, digits)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stderr_log(line: str) -> None:
    """Progress lines go to stderr, so stdout carries only the JSON result."""
    print(line, file=sys.stderr, flush=True)


def emit(result: dict[str, Any], out: str) -> int:
    """A benchmark's result: written to `out` and printed as JSON; the exit status of its main()."""
    import orjson

    data = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(data.decode())
    return 0


def write_json(out: Path, results: dict[str, Any]) -> None:
    """A benchmark's figures: written to `out` and printed, as JSON."""
    data = orjson.dumps(results, option=orjson.OPT_INDENT_2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(data.decode())
