"""Where the ingress spends its time: a py-spy profile under load, a ladder of servers, micro-timings.

    python -m bench.profile_ingress [--duration 8] [--quick]

1. Ladder: wrk (mixed payloads, 64 connections) against servers that add one thing at a time:
   bare ASGI → Starlette ceiling → + one suspension per request → + the product's Appender (XADD,
   appendfsync always) → `hookstream ingress`. Each step's server CPU per request (server CPU
   seconds / requests answered) is the step's cost in microseconds: CPU, unlike requests/s, hardly
   moves when another process takes the machine's other core.
2. py-spy (`record --nonblocking`, 250 Hz, active samples only) on `hookstream ingress` and on
   the ceiling during a wrk run: each sample is put in the category of its nearest frame from a
   known package (uvicorn's HTTP protocol, Starlette, redis-py, the ingress's own code, prometheus
   client, else the event loop), then shares × CPU per request = microseconds per request.
   The collapsed stacks are kept in bench/out/ (flamegraph.pl or speedscope read them).
3. Experiments: `hookstream ingress` started through a preamble that takes one of the product's
   speed choices away, measured in interleaved rounds against the ingress as shipped: without
   `gc.freeze()` at start-up (full collections walk the ~50,000 long-lived objects of the
   imports again), and with every webhook request routed through Starlette instead of going
   straight to its endpoint. They say what each choice buys on this machine.
4. Micro-timings, in this process, of the per-request pieces the profile points at.
5. The ingress's garbage collections while serving (gc.callbacks in a preamble): how many, how long.
A profile reports; it changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from bench import wrk
from bench.common import ROOT, CpuMeter, bench_env, emit, hookstream, payload_set, stderr_log, wait_http
from bench.workers import machine
from hookstream.embedded import RedisServer, free_port
from hookstream.run import stop_children

PREAMBLES = {
    "hookstream": "",
    "without gc.freeze": "import gc\ngc.freeze = lambda: None",
    "routed through Starlette": (
        "import ingress.app\n"
        "async def _routed(self, scope, receive, send):\n"
        "    await self.router(scope, receive, send)\n"
        "ingress.app.Ingress.__call__ = _routed"),
}
GC_PROBE = """
import gc, os, signal, time, orjson
_gc = {"started": {}, "pauses": {0: [], 1: [], 2: []}}
def _probe(phase, info):
    if phase == "start":
        _gc["started"] = time.perf_counter()
    elif gc.get_freeze_count():  # serving: start-up (imports, the freeze's own collect) is not counted
        _gc["pauses"][info["generation"]].append(time.perf_counter() - _gc["started"])
gc.callbacks.append(_probe)
def _dump(*_):
    with open(%r, "wb") as out:
        out.write(orjson.dumps({str(g): v for g, v in _gc["pauses"].items()}))
    os._exit(0)
# uvicorn puts this handler back when it has shut down, then raises SIGTERM again.
signal.signal(signal.SIGTERM, _dump)
"""


def ingress_with_preamble(preamble: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`hookstream ingress`, unchanged, started after `preamble` ran in the same process."""
    code = (f"{preamble}\nimport sys\nfrom hookstream.cli import main\n"
            f"sys.exit(main(['ingress', '--host', '127.0.0.1', '--port', '{port}']))")
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)


LADDER = ("asgi", "ceiling", "ceiling-await", "ceiling-append", "hookstream")
LADDER_NOTES = {
    "asgi": "bare ASGI callable on uvicorn (uvloop, httptools)",
    "ceiling": "+ Starlette routing, middleware, Request/Response",
    "ceiling-await": "+ one suspension per request (await a future)",
    "ceiling-append": "+ the product's Appender: coalesced XADD pipeline to Redis (redis-py asyncio)",
    "hookstream": "+ source check, record building, auth hooks, metrics: the real ingress",
}

# The nearest frame whose file matches decides the category; frames of the server's start-up
# (uvicorn/main.py, server.py, _compat.py, hookstream/cli.py) are roots, not categories.
CATEGORIES = (
    ("redis-py client (command packing, pipeline, replies)", re.compile(r"\((redis|hiredis)/")),
    ("prometheus metrics", re.compile(r"\(prometheus_client/")),
    ("ingress code (checks, record, appender)", re.compile(r"\((ingress|shared)/|\(ipaddress\.py")),
    ("starlette (routing, middleware, request/response)", re.compile(r"\(starlette/")),
    ("uvicorn HTTP protocol (httptools parsing, transport writes)", re.compile(r"\(uvicorn/protocols/")),
)
LOOP = "event loop (uvloop run loop, task steps, futures)"


def categorize(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return LOOP


def read_collapsed(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """(samples by category, samples by leaf function, total samples) of a py-spy raw file."""
    by_category: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack_text, _, count_text = line.rpartition(" ")
        count = int(count_text)
        stack = [re.sub(r":\d+\)$", ")", frame) for frame in stack_text.split(";")]
        total += count
        by_category[categorize(stack)] += count
        by_function[stack[-1]] += count
    return by_category, by_function, total


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_server(pid: int, port: int, requests: list[Any], duration: float, out: Path) -> dict[str, Any]:
    py_spy = find_py_spy()
    if py_spy is None:
        return {"error": "py-spy is not installed (pip install -e '.[bench]')"}
    spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", f"{int(duration)}", "--rate", "250",
                            "--format", "raw", "--nonblocking", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)
    meter = CpuMeter({"server": pid})
    result = wrk.run_wrk(port, requests, duration - 0.5, 64)
    cpu = meter.stop()
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed: {err.decode(errors='replace')[-400:]}"}
    us_per_request = 1e6 * cpu["server_cores"] / result["rps"]
    by_category, by_function, total = read_collapsed(out)
    return {
        "rps": result["rps"], "server_cores": cpu["server_cores"], "cpu_us_per_request": round(us_per_request, 1),
        "samples": total, "collapsed_stacks": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
        "categories_us_per_request": {name: round(us_per_request * count / total, 1)
                                      for name, count in by_category.most_common()},
        "categories_share": {name: round(count / total, 3) for name, count in by_category.most_common()},
        "top_self": [{"function": name, "share": round(count / total, 3),
                      "us_per_request": round(us_per_request * count / total, 1)}
                     for name, count in by_function.most_common(15)],
    }


def micro_timings() -> dict[str, float]:
    """Microseconds per call of the per-request pieces, in this process (median of 5 runs)."""
    import hiredis
    from redis.asyncio.connection import Connection

    from bench.payloads import records
    from ingress.client import ClientAddresses, client_address
    from ingress.metrics import IngressMetrics
    from shared.settings import NetList

    record = next(records(1))
    fields = record.to_fields()
    args = ["XADD", "hookstream:raw", "*", *[part for pair in fields.items() for part in pair]]
    connection = Connection()
    allowed, trusted = NetList.parse("127.0.0.1/32"), NetList()
    metrics = IngressMetrics()
    clients = ClientAddresses(trusted)

    def timed(func: Callable[[], object], n: int = 20_000) -> float:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                func()
            runs.append((time.perf_counter() - started) / n * 1e6)
        return round(sorted(runs)[2], 2)

    async def suspend_once(n: int = 20_000) -> float:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for _ in range(n):
            future = loop.create_future()
            loop.call_soon(future.set_result, None)
            await future
        return round((time.perf_counter() - started) / n * 1e6, 2)

    import uvloop

    return {
        "redis_py_async_pack_command_xadd_us": timed(lambda: connection.pack_command(*args)),
        "hiredis_pack_command_xadd_us": timed(lambda: hiredis.pack_command(tuple(args))),
        "raw_record_to_fields_us": timed(record.to_fields),
        "client_address_and_allow_list_us": timed(lambda: allowed.admits(client_address("127.0.0.1", [], trusted))),
        "client_address_memoized_us": timed(lambda: clients.resolve("127.0.0.1", ())),
        "metrics_counter_labels_inc_us": timed(lambda: metrics.requests.labels("cm", "mo", "accepted").inc()),
        "metrics_count_memoized_us": timed(lambda: metrics.count("cm", "mo", "accepted")),
        "metrics_histogram_observe_us": timed(lambda: metrics.append_seconds.observe(0.001)),
        "future_suspend_resume_bare_us": uvloop.run(suspend_once()),
    }


def _summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 3)

    return {"rps": median("rps"), "cpu_us_per_request": median("cpu_us_per_request"), "p50_ms": median("p50_ms"),
            "p99_ms": median("p99_ms"), "p99_9_ms": median("p99_9_ms"), "rounds": runs}


def _gc_summary(path: Path, runs: list[dict[str, Any]], warm_up_requests: int) -> dict[str, Any]:
    """Collections of the plain ingress while serving (warm-up and rounds), per request it answered."""
    try:
        pauses = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return {"error": "no gc record"}
    requests = sum(r["requests"] for r in runs) + warm_up_requests or 1
    out: dict[str, Any] = {}
    for generation, values in pauses.items():
        values = sorted(values)
        out[f"gen{generation}"] = {"collections": len(values), "total_s": round(sum(values), 3),
                                   "mean_ms": round(1000 * sum(values) / max(len(values), 1), 2),
                                   "max_ms": round(1000 * values[-1], 2) if values else 0.0}
    total = sum(sum(v) for v in pauses.values())
    out["requests"] = requests
    out["gc_us_per_request"] = round(1e6 * total / requests, 1)
    return out


def run(*, duration: float = 8.0, ladder_duration: float = 5.0, rounds: int = 2, out_dir: Path = ROOT / "bench" / "out",
        log: Callable[[str], None] = print) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-")), appendfsync="always").start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        redis = Redis.from_url(redis_server.url)
        redis.config_set("auto-aof-rewrite-percentage", 0)
        env = bench_env(redis_server.url)
        ports = {name: free_port() for name in LADDER}
        procs["hookstream"] = hookstream(["ingress", "--host", "127.0.0.1", "--port", str(ports["hookstream"])], env)
        for name in LADDER[:-1]:
            procs[name] = subprocess.Popen([sys.executable, "-m", "bench.apps", name, "--port", str(ports[name]),
                                            "--redis-url", redis_server.url], cwd=ROOT)
        for name, proc in procs.items():
            wait_http(ports[name], proc=proc)
        requests = payload_set("mixed", 2000)
        for name in LADDER:
            wrk.run_wrk(ports[name], requests, 2, 64)  # warm-up

        ladder: dict[str, Any] = {}
        previous = None
        for name in LADDER:
            redis.delete("hookstream:raw", "hookstream-bench:ladder")
            meter = CpuMeter({"server": procs[name].pid})
            result = wrk.run_wrk(ports[name], requests, ladder_duration, 64)
            cpu = meter.stop()
            us = round(1e6 * cpu["server_cores"] / result["rps"], 1)
            ladder[name] = {"what": LADDER_NOTES[name], "rps": result["rps"], "server_cores": cpu["server_cores"],
                            "cpu_us_per_request": us, "step_us": round(us - previous, 1) if previous else None,
                            "p99_ms": result["latency"]["p99_ms"]}
            previous = us
            log(f"profile ladder {name}: {result['rps']:,.0f} req/s, {us} µs CPU/request")

        experiments: dict[str, Any] = {}
        exp_ports = {name: free_port() for name in PREAMBLES}
        gc_file = Path(tempfile.mkstemp(prefix="hookstream-gc-", suffix=".json")[1])
        for name, preamble in PREAMBLES.items():
            if name == "hookstream":  # the plain one also counts its collections
                preamble = GC_PROBE % str(gc_file)
            procs[name + "#exp"] = ingress_with_preamble(preamble, exp_ports[name], env)
        warm_up_requests = 0
        for name in PREAMBLES:
            wait_http(exp_ports[name], proc=procs[name + "#exp"])
            warm = wrk.run_wrk(exp_ports[name], requests, 2, 64)
            if name == "hookstream":
                warm_up_requests = warm["ok"]
        for round_ in range(rounds):
            for name in PREAMBLES:
                redis.delete("hookstream:raw")
                meter = CpuMeter({"server": procs[name + "#exp"].pid})
                result = wrk.run_wrk(exp_ports[name], requests, ladder_duration, 64)
                cpu = meter.stop()
                experiments.setdefault(name, []).append({
                    "rps": result["rps"], "cpu_us_per_request": round(1e6 * cpu["server_cores"] / result["rps"], 1),
                    "p50_ms": result["latency"]["p50_ms"], "p99_ms": result["latency"]["p99_ms"],
                    "p99_9_ms": result["latency"]["p99_9_ms"], "requests": result["ok"]})
                log(f"profile experiment {name} round {round_ + 1}: {result['rps']:,.0f} req/s, "
                    f"p99 {result['latency']['p99_ms']:.1f} ms")
        stop_children([procs.pop(name + "#exp") for name in PREAMBLES])
        summary = {name: _summarize(runs) for name, runs in experiments.items()}
        summary["gc_of_plain_ingress"] = _gc_summary(gc_file, experiments["hookstream"], warm_up_requests)
        gc_file.unlink(missing_ok=True)

        redis.delete("hookstream:raw")
        profiles = {
            "hookstream": profile_server(procs["hookstream"].pid, ports["hookstream"], requests, duration,
                                         out_dir / "ingress-profile.txt"),
            "ceiling": profile_server(procs["ceiling"].pid, ports["ceiling"], requests, duration,
                                      out_dir / "ceiling-profile.txt"),
        }
        for name, profile in profiles.items():
            if "error" not in profile:
                log(f"profile {name}: " + ", ".join(f"{k.split(' (')[0]} {v} µs"
                                                    for k, v in profile["categories_us_per_request"].items()))
        return {"machine": machine(), "ladder": ladder, "experiments": summary, "profiles": profiles,
                "micro_us": micro_timings()}
    finally:
        stop_children(procs.values())
        redis_server.stop()
        shutil.rmtree(redis_server.data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each py-spy profile")
    parser.add_argument("--ladder-duration", type=float, default=5.0, help="seconds of each ladder/experiment run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the experiments")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/out/profile.json")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.ladder_duration, args.rounds = 4.0, 2.0, 1
    result = run(duration=args.duration, ladder_duration=args.ladder_duration, rounds=args.rounds,
                 log=stderr_log)
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
