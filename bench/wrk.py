"""Closed-loop throughput with `wrk` (C, epoll) and a generated Lua script cycling through real requests.

wrk is used for the throughput runs because on a 2-core machine the load generator competes with
the server for CPU: wrk spends a few microseconds per request where a Python generator spends tens,
so the figures are the server's, not the generator's. Without wrk, `bench.loadgen --closed` (a
Python generator in its own process) is used instead and the result says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.common import ROOT, HttpRequest

DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p99_9":%d}}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def _lua_string(data: bytes) -> str:
    out = []
    for byte in data:
        char = chr(byte)
        out.append(char if 32 <= byte < 127 and char not in '\\"' else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_script(requests: list[HttpRequest], host: str) -> str:
    """A wrk script whose request() returns the prepared requests in turn (raw HTTP/1.1 bytes)."""
    items = ",\n".join(_lua_string(r.raw(host)) for r in requests)
    return (f"local reqs = {{\n{items}\n}}\nlocal n = #reqs\nlocal i = 0\n"
            "request = function()\n  i = i % n + 1\n  return reqs[i]\nend\n" + DONE)


def available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(port: int, requests: list[HttpRequest], duration_s: float, connections: int, threads: int = 1,
            timeout_s: float = 5.0) -> dict[str, Any]:
    """One closed-loop wrk run; requests/s, latency percentiles (ms) and error counts."""
    host = f"127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(requests, host))
    try:
        proc = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration_s))}s",
                               "--timeout", f"{timeout_s:g}s", "-s", script.name, f"http://{host}/"],
                              capture_output=True, text=True, check=False)
    finally:
        Path(script.name).unlink(missing_ok=True)
    match = re.search(r"^WRKJSON (.*)$", proc.stdout, re.M)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    raw = orjson.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = raw["errors"]
    lat = raw["latency_us"]
    ok = raw["requests"] - errors["status"]
    return {"generator": "wrk", "mode": "closed", "connections": connections, "duration_s": round(seconds, 3),
            "requests": raw["requests"], "ok": ok, "non_2xx": errors["status"],
            "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
            "rps": round(ok / seconds, 1),
            "latency": {"p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000, "p99_ms": lat["p99"] / 1000,
                        "p99_9_ms": lat["p99_9"] / 1000, "max_ms": lat["max"] / 1000,
                        "mean_ms": round(lat["mean"] / 1000, 3)}}


def run_python_closed(port: int, payload: str, duration_s: float, connections: int) -> dict[str, Any]:
    """The fallback: bench.loadgen in closed-loop mode, in a process of its own."""
    proc = subprocess.run([sys.executable, "-m", "bench.loadgen", "--port", str(port), "--set", payload, "--closed",
                           "--duration", f"{duration_s:g}", "--connections", str(connections)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    raw = orjson.loads(proc.stdout.strip().splitlines()[-1])
    ok = raw["statuses"].get("200", 0)
    return {"generator": "python", "mode": "closed", "connections": connections, "duration_s": raw["duration_s"],
            "requests": raw["answered"], "ok": ok, "non_2xx": raw["answered"] - ok - raw["statuses"].get("0", 0),
            "socket_errors": raw["statuses"].get("0", 0), "rps": round(ok / raw["duration_s"], 1),
            "latency": raw["latency"]}
