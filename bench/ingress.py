"""Ingress: requests/s and latency of `hookstream ingress` against baselines served the same way, same run.

    python -m bench.ingress [--quick] [--duration 5] [--rounds 3] [--open-rate 1000] [--open-duration 20]

What runs (all real processes on loopback):
- `hookstream ingress` (uvicorn, uvloop, httptools) against a real redis-server with AOF and
  `appendfsync always`, every provider's allow-list set to 127.0.0.1/32;
- `ceiling` (bench/apps.py): the same routes, an endpoint that only reads the body and answers 200;
- `naive` (bench/apps.py): the same routes, each request INSERTed into a durable PostgreSQL inside
  the request through a psycopg async pool.

Figures:
- throughput (closed loop, `wrk` with a Lua script cycling through real requests built from
  bench/payloads.py, in its own process): requests/s and p50/p99/p99.9 for the mixed payload set
  (several interleaved rounds, median reported) and for each provider's payloads;
- `appendfsync everysec` against `always` (the same Redis, switched with CONFIG SET between runs);
- acknowledgements on two machines: a second `hookstream ingress` with HOOKSTREAM_APPEND_REPLICAS=1
  (WAIT after each round trip's XADDs) against the first (0), interleaved rounds, while a local
  replica (redis-server, no persistence of its own) follows the same Redis; attached only for
  these runs, so that it costs the other figures nothing. On one machine the replica shares its
  cores with everything else and its link has no network delay: the ratio is the cost of WAIT's
  extra hop and of feeding a replica here, not across a network;
- open loop at a fixed rate (bench/loadgen.py, latency from each request's intended send time);
- the ratios against the targets (≥ 0.8× the ceiling's throughput, p99 ≤ 1.5× the ceiling's,
  ≥ 4× the naive design's throughput).
A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from bench import wrk
from bench.common import (
    PAYLOAD_SETS,
    ROOT,
    CpuMeter,
    bench_env,
    hookstream,
    load_average,
    payload_set,
    ratio,
    wait_http,
    write_json,
)
from bench.workers import machine
from hookstream.embedded import PostgresServer, RedisServer, free_port
from hookstream.run import stop_children
from shared.settings import Settings

TARGETS = {"ceiling": 0.8, "p99": 1.5, "naive": 4.0}


class Servers:
    """Redis, Postgres, the ingress and both baselines, started once for the whole benchmark."""

    def __init__(self, naive_pool: int) -> None:
        self.redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="hookstream-bench-redis-")), appendfsync="always")
        self.postgres = PostgresServer()
        self.naive_pool = naive_pool
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.replica_dir = Path(tempfile.mkdtemp(prefix="hookstream-bench-replica-"))
        self.replica_proc: subprocess.Popen[bytes] | None = None
        self.replica_attached = False

    def __enter__(self) -> Servers:
        self.redis_server.start()
        self.postgres.start()
        self.redis = Redis.from_url(self.redis_server.url)
        # Keep AOF rewrites out of the measured runs (they are rewritten between runs instead).
        self.redis.config_set("auto-aof-rewrite-percentage", 0)
        env = bench_env(self.redis_server.url)
        self.stream = Settings.from_env(env).stream
        self.ports = {name: free_port() for name in ("hookstream", "hookstream_replicas1", "ceiling", "naive", "replica")}
        self.procs["hookstream"] = hookstream(["ingress", "--host", "127.0.0.1", "--port", str(self.ports["hookstream"])],
                                              env)
        # The same ingress, acknowledging only what one replica confirmed (used while the replica follows).
        self.procs["hookstream_replicas1"] = hookstream(
            ["ingress", "--host", "127.0.0.1", "--port", str(self.ports["hookstream_replicas1"])],
            {**env, "HOOKSTREAM_APPEND_REPLICAS": "1"})
        self.replica_proc = subprocess.Popen(
            ["redis-server", "--port", str(self.ports["replica"]), "--bind", "127.0.0.1", "--dir", str(self.replica_dir),
             "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
             "--logfile", str(self.replica_dir / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.replica = Redis(port=self.ports["replica"])
        apps = [sys.executable, "-m", "bench.apps"]
        self.procs["ceiling"] = subprocess.Popen(apps + ["ceiling", "--port", str(self.ports["ceiling"])], cwd=ROOT)
        self.procs["naive"] = subprocess.Popen(apps + ["naive", "--port", str(self.ports["naive"]), "--database-url",
                                                       self.postgres.url, "--pool", str(self.naive_pool)], cwd=ROOT)
        for name, proc in self.procs.items():
            wait_http(self.ports[name], proc=proc)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_children([*self.procs.values(), *([self.replica_proc] if self.replica_proc else [])])
        shutil.rmtree(self.replica_dir, ignore_errors=True)
        self.redis_server.stop()
        shutil.rmtree(self.redis_server.data_dir, ignore_errors=True)  # its AOF grows to hundreds of MB
        self.postgres.remove()

    def attach_replica(self) -> None:
        """The replica follows the benchmark's Redis; returns once a write reached it."""
        self.redis.config_set("repl-diskless-sync-delay", 0)
        self.replica.replicaof("127.0.0.1", self.redis_server.port)
        deadline = time.monotonic() + 60
        while True:
            self.redis.incr("hookstream:bench:replica-check")
            if self.redis.execute_command("WAIT", 1, 1000) >= 1:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not catch up within 60 s")
        self.replica_attached = True

    def detach_replica(self) -> None:
        self.replica.replicaof("NO", "ONE")
        self.replica.flushall()
        self.replica_attached = False

    def appendfsync(self, mode: str) -> None:
        self.redis.config_set("appendfsync", mode)

    def reset(self) -> None:
        """An empty stream and a small AOF before each measured run of the ingress."""
        self.redis.delete(self.stream)
        self.redis.bgrewriteaof()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = self.redis.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            time.sleep(0.05)

    def naive_rows(self) -> int:
        import psycopg

        with psycopg.connect(self.postgres.url) as conn:
            return int(conn.execute("SELECT count(*) FROM naive_webhooks").fetchone()[0])  # type: ignore[index]


class IngressBench:
    def __init__(self, servers: Servers, generator: str, connections: int, distinct: int) -> None:
        self.s = servers
        self.generator = generator
        self.connections = connections
        self.distinct = distinct
        self._requests: dict[str, Any] = {}

    def requests(self, payload: str) -> Any:
        if payload not in self._requests:
            self._requests[payload] = payload_set(payload, self.distinct)
        return self._requests[payload]

    def closed(self, target: str, payload: str, duration: float, connections: int | None = None) -> dict[str, Any]:
        """One closed-loop run against `target` (hookstream, hookstream_everysec, hookstream_replicas1, ceiling,
        naive)."""
        server = self.server(target)
        connections = connections or self.connections
        if server.startswith("hookstream"):
            self.s.appendfsync("everysec" if target.endswith("everysec") else "always")
            self.s.reset()
        before = self.s.naive_rows() if server == "naive" else 0
        meter = CpuMeter(self.pids(server))
        if self.generator == "wrk":
            result = wrk.run_wrk(self.s.ports[server], self.requests(payload), duration, connections)
        else:
            result = wrk.run_python_closed(self.s.ports[server], payload, duration, connections)
        result["cpu"] = meter.stop()
        result["server_cpu_us_per_request"] = round(1e6 * result["cpu"]["server_cores"] / result["rps"], 1) \
            if result["rps"] else None
        if server.startswith("hookstream"):
            result["stored"] = int(self.s.redis.xlen(self.s.stream))  # every 200 must be in the stream
            if self.s.replica_attached:  # with replicas=1, every 200 must be on the replica already
                result["on_replica"] = int(self.s.replica.xlen(self.s.stream))
        elif server == "naive":
            result["stored"] = self.s.naive_rows() - before
        return result

    def server(self, target: str) -> str:
        """The process a target runs against: hookstream_everysec is the first ingress, CONFIG SET apart."""
        return target if target in self.s.procs else "hookstream" if target.startswith("hookstream") else target

    def pids(self, server: str) -> dict[str, int]:
        pids = {"server": self.s.procs[server].pid, "redis": self.s.redis_server.proc.pid}  # type: ignore[union-attr]
        if self.s.replica_attached and self.s.replica_proc is not None:
            pids["replica"] = self.s.replica_proc.pid
        return pids

    def open_loop(self, target: str, rate: float, duration: float) -> dict[str, Any]:
        server = self.server(target)
        if server.startswith("hookstream"):
            self.s.appendfsync("everysec" if target.endswith("everysec") else "always")
            self.s.reset()
        meter = CpuMeter(self.pids(server))
        proc = subprocess.run([sys.executable, "-m", "bench.loadgen", "--port", str(self.s.ports[server]), "--set",
                               "mixed", "--rate", f"{rate:g}", "--duration", f"{duration:g}", "--connections", "128",
                               "--distinct", str(self.distinct)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed: {proc.stderr[-800:]}")
        result = orjson.loads(proc.stdout.strip().splitlines()[-1])
        result["generator"] = "python-open-loop"
        result["cpu"] = meter.stop()
        return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, plus every round's figures for the record."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    median = dict(ordered[len(ordered) // 2])
    median["rounds_rps"] = [r["rps"] for r in runs]
    median["rounds_p99_ms"] = [r["latency"]["p99_ms"] for r in runs]
    if len(runs) > 1:
        median["rps_spread"] = round((ordered[-1]["rps"] - ordered[0]["rps"]) / statistics.median(r["rps"] for r in runs), 3)
    return median


def run(*, duration: float = 5.0, rounds: int = 3, provider_duration: float = 4.0, connections: int = 64,
        high_connections: int = 256, open_rate: float = 1000.0, open_duration: float = 20.0, distinct: int = 2000,
        naive_pool: int = 32, generator: str = "auto", replica_comparison: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    if generator == "auto":
        generator = "wrk" if wrk.available() else "python"
    results: dict[str, Any] = {
        "machine": machine(), "load_average_at_start": load_average(),
        "settings": {"generator": generator, "connections": connections, "high_connections": high_connections,
                     "duration_s": duration, "rounds": rounds,
                     "provider_duration_s": provider_duration, "open_rate": open_rate, "open_duration_s": open_duration,
                     "naive_pool": naive_pool, "distinct_requests": distinct,
                     "payload_sets": list(PAYLOAD_SETS)},
    }
    with Servers(naive_pool) as servers:
        bench = IngressBench(servers, generator, connections, distinct)
        for target in ("hookstream", "ceiling", "naive"):  # warm up: imports, pools, connections
            bench.closed(target, "mixed", 2.0)

        # 1. Mixed payloads, interleaved rounds (noise from other processes lands on every target alike).
        rounds_by_target: dict[str, list[dict[str, Any]]] = {}
        for i in range(rounds):
            for target in ("hookstream", "hookstream_everysec", "ceiling", "naive"):
                run_ = bench.closed(target, "mixed", duration)
                rounds_by_target.setdefault(target, []).append(run_)
                log(f"ingress mixed round {i + 1}/{rounds} {target}: {run_['rps']:,.0f} req/s, "
                    f"p99 {run_['latency']['p99_ms']:.1f} ms")
        throughput: dict[str, dict[str, Any]] = {"mixed": {t: _median_run(r) for t, r in rounds_by_target.items()}}

        # 2. Each provider's payloads.
        for payload in PAYLOAD_SETS[1:]:
            throughput[payload] = {}
            for target in ("hookstream", "ceiling", "naive"):
                throughput[payload][target] = bench.closed(target, payload, provider_duration)
            log(f"ingress {payload}: " + ", ".join(f"{t} {r['rps']:,.0f} req/s" for t, r in throughput[payload].items()))
        results["throughput"] = throughput

        # 3. More concurrent connections.
        if high_connections:
            results["high_concurrency"] = {t: bench.closed(t, "mixed", duration, high_connections)
                                           for t in ("hookstream", "ceiling")}
            log(f"ingress at {high_connections} connections: " + ", ".join(
                f"{t} {r['rps']:,.0f} req/s p99 {r['latency']['p99_ms']:.1f} ms"
                for t, r in results["high_concurrency"].items()))

        # 4. Open loop at a fixed rate.
        results["open_loop"] = {}
        for target in ("hookstream", "hookstream_everysec", "ceiling", "naive"):
            res = results["open_loop"][target] = bench.open_loop(target, open_rate, open_duration)
            log(f"ingress open loop {open_rate:g}/s {target}: p50 {res['latency']['p50_ms']:.2f} ms, "
                f"p99 {res['latency']['p99_ms']:.2f} ms, p99.9 {res['latency']['p99_9_ms']:.2f} ms")
        servers.appendfsync("always")

        # 5. HOOKSTREAM_APPEND_REPLICAS=1 against 0, a local replica following the same Redis.
        if replica_comparison:
            results["replica_acks"] = replicas_vs_none(bench, rounds, duration, open_rate, open_duration, log)
    results["ratios"] = ratios(results)
    return results


def replicas_vs_none(bench: IngressBench, rounds: int, duration: float, open_rate: float, open_duration: float,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Interleaved closed-loop rounds and one open-loop run each of the ingress with
    HOOKSTREAM_APPEND_REPLICAS=1 and =0, while the replica follows."""
    bench.s.attach_replica()
    try:
        bench.closed("hookstream_replicas1", "mixed", 2.0)  # warm up its connections
        by_target: dict[str, list[dict[str, Any]]] = {}
        for i in range(rounds):
            for target in ("hookstream", "hookstream_replicas1"):
                run_ = bench.closed(target, "mixed", duration)
                by_target.setdefault(target, []).append(run_)
                log(f"ingress replicas round {i + 1}/{rounds} {target}: {run_['rps']:,.0f} req/s, "
                    f"p99 {run_['latency']['p99_ms']:.1f} ms")
        open_loop = {}
        for target in ("hookstream", "hookstream_replicas1"):
            res = open_loop[target] = bench.open_loop(target, open_rate, open_duration)
            log(f"ingress replicas open loop {open_rate:g}/s {target}: p50 {res['latency']['p50_ms']:.2f} ms, "
                f"p99 {res['latency']['p99_ms']:.2f} ms")
    finally:
        bench.s.detach_replica()
    closed = {t: _median_run(r) for t, r in by_target.items()}
    return {"settings": {"replicas": 1, "replica_timeout_ms": 1000, "replica": "local redis-server, no persistence",
                         "rounds": rounds, "duration_s": duration, "open_rate": open_rate,
                         "open_duration_s": open_duration},
            "closed_loop": {"replicas_0": closed["hookstream"], "replicas_1": closed["hookstream_replicas1"]},
            "open_loop": {"replicas_0": open_loop["hookstream"], "replicas_1": open_loop["hookstream_replicas1"]}}


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Each figure over its same-run baseline, and whether it reaches the issue's target."""
    out: dict[str, Any] = {"per_payload": {}}
    for payload, by_target in results["throughput"].items():
        hs, ceiling, naive = by_target["hookstream"], by_target["ceiling"], by_target["naive"]
        row = {"throughput_vs_ceiling": ratio(hs["rps"], ceiling["rps"]),
               "p99_vs_ceiling_closed_loop": ratio(hs["latency"]["p99_ms"], ceiling["latency"]["p99_ms"]),
               "throughput_vs_naive": ratio(hs["rps"], naive["rps"]),
               # Requests per core-second (1 / server CPU per request): hardly moved by a neighbour
               # taking the other core, unlike requests/s.
               "per_core_throughput_vs_ceiling": ratio(ceiling["server_cpu_us_per_request"],
                                                       hs["server_cpu_us_per_request"]),
               "per_core_throughput_vs_naive": ratio(naive["server_cpu_us_per_request"],
                                                     hs["server_cpu_us_per_request"])}
        row["meets"] = {"throughput_vs_ceiling": (row["throughput_vs_ceiling"] or 0) >= TARGETS["ceiling"],
                        "p99_vs_ceiling_closed_loop": (row["p99_vs_ceiling_closed_loop"] or 99) <= TARGETS["p99"],
                        "throughput_vs_naive": (row["throughput_vs_naive"] or 0) >= TARGETS["naive"]}
        out["per_payload"][payload] = row
    mixed = results["throughput"]["mixed"]
    out["everysec_vs_always_throughput"] = ratio(mixed["hookstream_everysec"]["rps"], mixed["hookstream"]["rps"])
    open_ = results.get("open_loop", {})
    if open_:
        hs, ceiling = open_["hookstream"]["latency"], open_["ceiling"]["latency"]
        out["open_loop_p99_vs_ceiling"] = ratio(hs["p99_ms"], ceiling["p99_ms"])
        out["open_loop_p99_9_vs_ceiling"] = ratio(hs["p99_9_ms"], ceiling["p99_9_ms"])
        out["open_loop_meets_p99_target"] = (out["open_loop_p99_vs_ceiling"] or 99) <= TARGETS["p99"]
        out["open_loop_always_minus_everysec_p99_ms"] = round(
            hs["p99_ms"] - open_["hookstream_everysec"]["latency"]["p99_ms"], 3)
        out["open_loop_always_minus_everysec_p50_ms"] = round(
            hs["p50_ms"] - open_["hookstream_everysec"]["latency"]["p50_ms"], 3)
    rep = results.get("replica_acks")
    if rep:  # HOOKSTREAM_APPEND_REPLICAS=1 over 0, same run, same Redis and replica
        r1, r0 = rep["closed_loop"]["replicas_1"], rep["closed_loop"]["replicas_0"]
        o1, o0 = rep["open_loop"]["replicas_1"]["latency"], rep["open_loop"]["replicas_0"]["latency"]
        out["replicas1_vs_0"] = {
            "throughput": ratio(r1["rps"], r0["rps"]),
            "p99_closed_loop": ratio(r1["latency"]["p99_ms"], r0["latency"]["p99_ms"]),
            "p50_closed_loop": ratio(r1["latency"]["p50_ms"], r0["latency"]["p50_ms"]),
            "server_cpu_per_request": ratio(r1["server_cpu_us_per_request"], r0["server_cpu_us_per_request"]),
            "p99_open_loop": ratio(o1["p99_ms"], o0["p99_ms"]),
            "p50_open_loop": ratio(o1["p50_ms"], o0["p50_ms"]),
        }
    out["targets"] = {"throughput_vs_ceiling": f">= {TARGETS['ceiling']}", "p99_vs_ceiling": f"<= {TARGETS['p99']}",
                      "throughput_vs_naive": f">= {TARGETS['naive']}"}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per closed-loop run (mixed payloads)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the mixed runs")
    parser.add_argument("--provider-duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--high-connections", type=int, default=256, help="0: skip the high-concurrency run")
    parser.add_argument("--open-rate", type=float, default=1000.0)
    parser.add_argument("--open-duration", type=float, default=20.0)
    parser.add_argument("--naive-pool", type=int, default=32)
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-replica", action="store_true", help="skip HOOKSTREAM_APPEND_REPLICAS=1 against 0")
    parser.add_argument("--out", default="bench/out/ingress.json")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.provider_duration, args.open_duration = 2.0, 1, 2.0, 5.0
    results = run(duration=args.duration, rounds=args.rounds, provider_duration=args.provider_duration,
                  connections=args.connections, high_connections=args.high_connections, open_rate=args.open_rate,
                  open_duration=args.open_duration, naive_pool=args.naive_pool, generator=args.generator,
                  replica_comparison=not args.no_replica,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(args.out)
    write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
