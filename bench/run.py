"""`make bench`: every benchmark, one table, bench/results.json and bench/results.png.

    python -m bench.run [--quick] [--only ingress,profile,workers,replay,e2e] [--skip e2e]
                        [--growth-levels 10000000,50000000]

Each benchmark starts its own redis-server and PostgreSQL (hookstream.embedded), runs real
processes, and reports each figure next to a baseline measured in the same run on this machine:
- ingress (bench/ingress.py): `hookstream ingress` against a bare Starlette endpoint (the
  framework's ceiling) and the naive INSERT-per-request design; closed loop with wrk, open loop at
  a fixed rate with bench/loadgen.py; appendfsync always against everysec; HOOKSTREAM_APPEND_REPLICAS=1
  (WAIT, a local replica) against 0;
- profile (bench/profile_ingress.py): py-spy on the ingress under load, a ladder from the bare
  server to the ingress, and experiments that take one speed choice away (gc.freeze, the direct webhook path);
- workers (bench/workers.py): the pipeline draining 100,000 records with 1 and 2 worker processes,
  against the raw INSERT ceiling and one RQ job per webhook;
- worker_profile (bench/profile_workers.py): a worker's CPU per entry, phase by phase, in one process;
- replay (bench/replay.py): `workers.replay.replay` over 100,000 entries against the live pipeline;
- e2e (bench/e2e.py): ack-to-commit lag at a steady 1,000 req/s for 60 s through every process;
- consent (bench/consent.py): the consent API's bulk check of 100,000 subjects, beside one query per subject;
- dashboard (bench/dashboard.py): the dashboard's page and data endpoints over 1,000,000 events;
- postgres_growth (bench/postgres_growth.py): the worker on an empty database, then grown to each level
  of events stored (1 and 5 million; `--quick`: 1 million; `--growth-levels 10000000,50000000` for the
  README's curve, about two hours here): events/s, ingest-to-commit p99, Postgres CPU per entry, bytes
  per event, each against the empty database, and the lookups at the largest level;
- search (bench/search.py): message search, the delivery timeline and the receipt expiry sweep over
  1,000,000 status reports (`--quick`: 300,000), against message_status read by its primary key;
- shards (bench/shards.py): the pipeline over 1, 2 and 4 stream shards on a local Redis Cluster of three
  primaries against the single stream on one Redis: events/s and CPU per entry per process.
`--quick` shrinks every size (about 3 minutes in all). Benchmarks report; nothing is asserted.
The exit code is non-zero only when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.common import ROOT, load_average

BENCHMARKS = ("ingress", "profile", "workers", "worker_profile", "replay", "e2e", "consent", "dashboard",
              "postgres_growth", "search", "shards")
# Events stored before each growth measurement: modest for every `make bench`; the README's 10 and 50
# million are `--growth-levels 10000000,50000000`.
GROWTH_LEVELS = (1_000_000, 5_000_000)
QUICK_GROWTH_LEVELS = (1_000_000,)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu_model": model, "memory_gib": memory_gib,
            "platform": platform.platform(), "load_average_at_start": load_average(), **fsync_probe()}


def fsync_probe(count: int = 300) -> dict[str, float]:
    """fdatasync latency of an appended 16 KiB in the temp folder (where the servers keep their data)."""
    folder = tempfile.mkdtemp(prefix="hookstream-bench-fsync-")
    path = Path(folder) / "probe"
    latencies = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 16384)
            started = time.perf_counter()
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
        os.rmdir(folder)
    latencies.sort()
    return {"fdatasync_p50_ms": round(1000 * latencies[len(latencies) // 2], 3),
            "fdatasync_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 3)}


class Contention:
    """Samples the machine while a benchmark runs: runnable processes and busy cores, on average.

    Other work on the machine (another test suite, another benchmark) moves every figure; these
    two numbers tell a reader whether a run had the machine to itself (busy ≈ what the benchmark
    uses, runnable ≈ 1–3) or shared it.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        import threading

        self.interval_s = interval_s
        self.runnable: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(OSError, ValueError):
                for line in Path("/proc/stat").read_text().splitlines():
                    if line.startswith("procs_running"):
                        self.runnable.append(int(line.split()[1]))

    def __enter__(self) -> Contention:
        from bench.common import system_busy

        self._busy = system_busy()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from bench.common import system_busy

        self._stop.set()
        self._thread.join()
        busy, total = system_busy()
        self.busy_cores = round((os.cpu_count() or 1) * (busy - self._busy[0]) / max(total - self._busy[1], 1.0), 2)

    def summary(self) -> dict[str, Any]:
        runnable = round(sum(self.runnable) / len(self.runnable), 2) if self.runnable else None
        return {"machine_busy_cores": self.busy_cores, "mean_runnable_processes": runnable,
                "load_average_after": load_average()}


# --- the benchmarks, with their sizes ----------------------------------------------------------------


def sizes(quick: bool) -> dict[str, dict[str, Any]]:
    if quick:
        return {"ingress": {"duration": 2.0, "rounds": 1, "provider_duration": 2.0, "open_duration": 5.0},
                "profile": {"duration": 4.0, "ladder_duration": 2.0, "rounds": 1},
                "workers": {"records": 20_000, "workers": (1, 2), "per_webhook": 500},
                "worker_profile": {"records": 10_000, "rounds": 3},
                "replay": {"records": 20_000},
                "e2e": {"rate": 1000.0, "duration": 15.0, "warmup": 3.0},
                "consent": {"count": 20_000, "people": 60_000, "per_subject_count": 2_000, "repeat": 1},
                "dashboard": {"events": 100_000, "runs": 5},
                "postgres_growth": {"records_n": 20_000, "levels": QUICK_GROWTH_LEVELS, "rate": 1000.0,
                                    "paced_s": 10.0},
                "search": {"reports": 300_000, "requests": 100},
                "shards": {"records": 10_000, "shards": (1, 2, 4), "workers": 2}}
    return {"ingress": {"duration": 5.0, "rounds": 3, "provider_duration": 3.0, "open_duration": 15.0},
            "profile": {"duration": 6.0, "ladder_duration": 4.0, "rounds": 3},
            "workers": {"records": 100_000, "workers": (1, 2), "per_webhook": 2000},
            "worker_profile": {"records": 20_000, "rounds": 5},
            "replay": {"records": 100_000},
            "e2e": {"rate": 1000.0, "duration": 60.0, "warmup": 5.0},
            "consent": {"count": 100_000, "people": 300_000, "per_subject_count": 20_000, "repeat": 3},
            "dashboard": {"events": 1_000_000, "runs": 20},
            "postgres_growth": {"records_n": 100_000, "levels": GROWTH_LEVELS, "rate": 2000.0, "paced_s": 20.0},
            "search": {"reports": 1_000_000, "requests": 200},
            "shards": {"records": 50_000, "shards": (1, 2, 4), "workers": 2}}


def run_one(name: str, params: dict[str, Any]) -> dict[str, Any]:
    if name == "ingress":
        from bench import ingress
        return ingress.run(log=log, **params)
    if name == "profile":
        from bench import profile_ingress
        return profile_ingress.run(log=log, **params)
    if name == "workers":
        from bench import workers
        with contextlib.redirect_stdout(sys.stderr):  # it prints its progress as JSON lines
            return workers.run(**params)
    if name == "worker_profile":  # its own process: it settles that process's heap, as a worker does
        out = subprocess.run([sys.executable, "-m", "bench.profile_workers", "--postgres", "--records",
                              str(params["records"]), "--rounds", str(params["rounds"])],
                             capture_output=True, check=True, cwd=ROOT)
        return orjson.loads(out.stdout)
    if name == "replay":
        from bench import replay
        return replay.run(log=log, **params)
    if name == "e2e":
        from bench import e2e
        return e2e.run(log=log, **params)
    if name == "consent":
        # The consent API's bulk check (bench/consent.py), on a cluster of its own and in a process of
        # its own, as the API runs: in this one, after the benchmarks before it, the same calls took
        # 1.3-2.5x the CPU.
        out = subprocess.run([sys.executable, "-m", "bench.consent", "--subjects", str(params["count"]),
                              "--people", str(params["people"]), "--per-subject", str(params["per_subject_count"]),
                              "--repeat", str(params["repeat"])],
                             capture_output=True, check=True, cwd=ROOT)
        return orjson.loads(out.stdout)
    if name == "dashboard":  # the dashboard's page and data endpoints over many events (bench/dashboard.py)
        from bench import dashboard
        return dashboard.run(**params)
    if name == "postgres_growth":  # the worker on an empty and on a pre-filled database (bench/postgres_growth.py)
        from bench import postgres_growth
        return postgres_growth.run(log=log, **params)
    if name == "search":  # search, timeline and expiry sweep on a pre-filled database (bench/search.py)
        from bench import search
        return search.run(log=log, **params)
    if name == "shards":  # the pipeline over stream shards on a local Redis Cluster (bench/shards.py)
        from bench import shards
        return shards.run(log=log, **params)
    raise ValueError(name)


# --- the table ---------------------------------------------------------------------------------------


def _n(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        text = f"{value:,.{digits}f}"
        return f"{text} {unit}".strip()
    return str(value)


def _ms(lat: dict[str, Any]) -> str:
    return f"{lat.get('p50_ms', 0):.2f} / {lat.get('p99_ms', 0):.2f} / {lat.get('p99_9_ms', 0):.2f} ms"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(benchmark, figure, value, same-run baseline, ratio, target) rows."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    ing = results.get("ingress")
    if ing and "throughput" in ing:
        conn = ing["settings"]["connections"]
        mixed = ing["throughput"]["mixed"]
        hs, ce, na = mixed["hookstream"], mixed["ceiling"], mixed["naive"]
        ratios = ing["ratios"]["per_payload"]["mixed"]
        rows.append(("ingress", f"mixed, closed loop ({conn} conns, median of {len(hs.get('rounds_rps', [1]))})",
                     _n(hs["rps"], "req/s"), f"ceiling {_n(ce['rps'], 'req/s')}", _x(ratios["throughput_vs_ceiling"]),
                     "≥ 0.80×"))
        rows.append(("ingress", "  latency p50 / p99 / p99.9", _ms(hs["latency"]), f"ceiling {_ms(ce['latency'])}",
                     _x(ratios["p99_vs_ceiling_closed_loop"]) + " (p99)", "≤ 1.50×"))
        rows.append(("ingress", "  vs the naive design (INSERT per request)", _n(hs["rps"], "req/s"),
                     f"naive {_n(na['rps'], 'req/s')}", _x(ratios["throughput_vs_naive"]), "≥ 4×"))
        if ratios.get("per_core_throughput_vs_ceiling"):
            rows.append(("ingress", "  server CPU per request (1 / per-core throughput)",
                         f"{hs['server_cpu_us_per_request']:.0f} µs",
                         f"ceiling {ce['server_cpu_us_per_request']:.0f} µs, naive {na['server_cpu_us_per_request']:.0f} µs"
                         " (server process only)",
                         f"{_x(ratios['per_core_throughput_vs_ceiling'])} / {_x(ratios['per_core_throughput_vs_naive'])}",
                         "≥ 0.80× / ≥ 4×"))
        for payload, by_target in ing["throughput"].items():
            if payload == "mixed":
                continue
            r = ing["ratios"]["per_payload"][payload]
            rows.append(("ingress", f"{payload} payloads", f"{_n(by_target['hookstream']['rps'], 'req/s')}, "
                         f"p99 {by_target['hookstream']['latency']['p99_ms']:.1f} ms",
                         f"ceiling {_n(by_target['ceiling']['rps'])}, naive {_n(by_target['naive']['rps'])}",
                         f"{_x(r['throughput_vs_ceiling'])} / {_x(r['throughput_vs_naive'])}", "≥ 0.80× / ≥ 4×"))
        ev = mixed["hookstream_everysec"]
        rows.append(("ingress", "appendfsync everysec (mixed, closed loop)", _n(ev["rps"], "req/s"),
                     f"always {_n(hs['rps'], 'req/s')}", _x(ing["ratios"]["everysec_vs_always_throughput"]), "cost report"))
        high = ing.get("high_concurrency")
        if high:
            rows.append(("ingress", f"mixed at {ing['settings'].get('high_connections', 256)} connections",
                         f"{_n(high['hookstream']['rps'], 'req/s')}, p99 {high['hookstream']['latency']['p99_ms']:.1f} ms",
                         f"ceiling {_n(high['ceiling']['rps'], 'req/s')}, p99 {high['ceiling']['latency']['p99_ms']:.1f} ms",
                         _x(ratio_(high['hookstream']['rps'], high['ceiling']['rps'])), "≥ 0.80×"))
        ol = ing.get("open_loop")
        if ol:
            rate = ing["settings"]["open_rate"]
            rows.append(("ingress", f"open loop {rate:,.0f} req/s, p50 / p99 / p99.9", _ms(ol["hookstream"]["latency"]),
                         f"ceiling {_ms(ol['ceiling']['latency'])}", _x(ing["ratios"].get("open_loop_p99_vs_ceiling"))
                         + " (p99)", "≤ 1.50×"))
            rows.append(("ingress", "  same, appendfsync everysec", _ms(ol["hookstream_everysec"]["latency"]),
                         f"always {_ms(ol['hookstream']['latency'])}", "–", "cost report"))
            rows.append(("ingress", "  same, naive design", _ms(ol["naive"]["latency"]),
                         f"hookstream {_ms(ol['hookstream']['latency'])}", "–", "–"))
        rep = ing.get("replica_acks")
        if rep:
            r1, r0 = rep["closed_loop"]["replicas_1"], rep["closed_loop"]["replicas_0"]
            x = ing["ratios"].get("replicas1_vs_0", {})
            rows.append(("ingress", "APPEND_REPLICAS=1 (WAIT, local replica), mixed, closed loop",
                         f"{_n(r1['rps'], 'req/s')}, p99 {r1['latency']['p99_ms']:.1f} ms",
                         f"replicas=0 {_n(r0['rps'], 'req/s')}, p99 {r0['latency']['p99_ms']:.1f} ms",
                         f"{_x(x.get('throughput'))} / {_x(x.get('p99_closed_loop'))} (p99)", "cost report"))
            o1, o0 = rep["open_loop"]["replicas_1"]["latency"], rep["open_loop"]["replicas_0"]["latency"]
            rows.append(("ingress", f"  same, open loop {rep['settings']['open_rate']:,.0f} req/s", _ms(o1),
                         f"replicas=0 {_ms(o0)}", _x(x.get("p99_open_loop")) + " (p99)", "cost report"))
    wk = results.get("workers")
    if wk and "pipeline_1" in wk:
        raw = wk["raw_insert"]["rows_per_s"]
        rows.append(("workers", f"1 worker process, {wk['pipeline_1']['entries']:,} records",
                     _n(wk["pipeline_1"]["events_per_s"], "events/s"), f"raw INSERT {_n(raw, 'rows/s')}",
                     _x(wk.get("ratios", {}).get("pipeline_1_vs_raw_insert")), "≥ 10,000/s, ≥ 0.50×"))
        if "pipeline_2" in wk:
            rows.append(("workers", "2 worker processes", _n(wk["pipeline_2"]["events_per_s"], "events/s"),
                         f"1 process {_n(wk['pipeline_1']['events_per_s'], 'events/s')}",
                         _x(ratio_(wk["pipeline_2"]["events_per_s"], wk["pipeline_1"]["events_per_s"])), "–"))
        rows.append(("workers", "batching vs one RQ job per webhook", _n(wk["pipeline_1"]["entries_per_s"], "entries/s"),
                     f"per webhook {_n(wk['rq_per_webhook']['entries_per_s'], 'entries/s')}",
                     _x(wk.get("ratios", {}).get("pipeline_1_vs_rq_per_webhook")), "–"))
        cores = results.get("machine", {}).get("cpus") or 1
        for n in (1, 2):
            pipeline = wk.get(f"pipeline_{n}", {})
            cpu, steady = pipeline.get("cpu_us_per_entry"), pipeline.get("steady_cpu_us_per_entry")
            if cpu:
                rows.append(("workers", f"  CPU µs per entry with {n} worker process{'es' if n > 1 else ''}: "
                             "workers / dispatch / redis / postgres",
                             " / ".join(f"{cpu.get(k, 0):.0f}" for k in ("workers", "dispatch", "redis", "postgres")),
                             f"total {sum(cpu.values()):.0f} µs: {cores * 1e6 / sum(cpu.values()):,.0f} entries/s "
                             f"would fill {cores} cores",
                             "–", "–"))
            if steady:
                rows.append(("workers", "    the same over the middle 90% of the drain (start-up left out)",
                             " / ".join(f"{steady.get(k, 0):.0f}" for k in ("workers", "dispatch", "redis", "postgres")),
                             f"total {sum(steady.values()):.0f} µs (whole drain {sum(cpu.values()):.0f})",
                             "–", "≤ 110 µs" if n == 1 else "–"))
    wp = results.get("worker_profile")
    if wp and "us_per_entry" in wp:
        us = wp["us_per_entry"]
        rows.append(("workers", "  CPU µs per entry: decode / normalize, warm (fresh) / rows / write CPU, wall",
                     f"{us['from_fields']:.0f} / {us['normalize_warm']:.0f} ({us['normalize_cold']:.0f}) / "
                     f"{us['store_params']:.0f} / {us.get('write_entries_cpu', 0):.0f}, "
                     f"{us.get('write_entries_wall', 0):.0f}",
                     f"orjson.loads of the body alone {us['floor_json_loads']:.1f}", "–", "–"))
    rp = results.get("replay")
    if rp and "replay" in rp:
        live = rp["live_pipeline"]
        for case, summary in rp["replay"].items():
            rows.append(("replay", f"{summary['entries']:,} entries, {case} rows ({summary['updated']:,} rewritten)",
                         _n(summary["events_per_s"], "events/s"),
                         f"live pipeline -n {rp['settings']['workers']} {_n(live['steady_events_per_s'], 'events/s')}",
                         _x(rp["ratios"].get(f"{case}_vs_live_events_per_s")), "≥ 20,000/s"))
    e2e = results.get("e2e")
    if e2e and "lag_ms" in e2e:
        s = e2e["settings"]
        rows.append(("e2e", f"ack→commit lag at {s['rate']:,.0f} req/s for {s['duration_s']:.0f} s, p50 / p99 / p99.9",
                     _ms(e2e["lag_ms"]), f"worker histogram p50 ≈ {e2e['worker_histogram'].get('p50_ms')} ms, "
                     f"p99 ≈ {e2e['worker_histogram'].get('p99_ms')} ms", "–", "p99 < 500 ms"))
        rows.append(("e2e", "  achieved rate; HTTP p50 / p99 / p99.9 meanwhile",
                     f"{_n(e2e['http']['achieved_rate'], 'req/s')}; {_ms(e2e['http']['latency'])}",
                     f"sustained: {e2e['sustained']}, drained {e2e['drain_after_load_s']} s after the load", "–", "–"))
    pf = results.get("profile")
    if pf and "ladder" in pf:
        steps = ", ".join(f"{name} {step['cpu_us_per_request']:.0f}" for name, step in pf["ladder"].items())
        rows.append(("profile", "CPU µs per request, bare → ingress", steps, "–", "–", "–"))
        ex = pf.get("experiments", {})
        if "hookstream" in ex:
            base = ex["hookstream"]
            for name in ("without gc.freeze", "routed through Starlette"):
                if name in ex:
                    e = ex[name]
                    rows.append(("profile", f"experiment: {name}",
                                 f"{_n(e['rps'], 'req/s')}, p99 {e['p99_ms']:.1f} ms, {e['cpu_us_per_request']:.0f} µs",
                                 f"as shipped {_n(base['rps'], 'req/s')}, p99 {base['p99_ms']:.1f} ms, "
                                 f"{base['cpu_us_per_request']:.0f} µs", _x(ratio_(e["rps"], base["rps"])), "–"))
    cs = results.get("consent")
    if cs and "scope_3669" in cs:
        ps = cs["per_subject"]
        for key, label in (("scope_3669", "with a scope"), ("any_scope", "without a scope")):
            rows.append(("consent", f"bulk check of {cs['subjects']:,} subjects, {label} (first call / SQL alone)",
                         f"{cs[key]['http_cold']:.2f} s / {cs[key]['query_only']:.2f} s",
                         f"one query per subject: {ps['per_subject_100k']:.1f} s per 100k",
                         _x(ratio_(ps["per_subject_100k"] * cs["subjects"] / 100_000, cs[key]["http_cold"])), "< 1 s"))
    db = results.get("dashboard")
    if db and "cached" in db:
        for path in ("/", "/dashboard/data/flow", "/dashboard/data/deliverability", "/dashboard/data/consent"):
            if path in db["cached"]:
                rows.append(("dashboard", f"{path} with {db['events']:,} events, p50 / p95",
                             f"{db['cached'][path]['p50_ms']} / {db['cached'][path]['p95_ms']} ms",
                             f"uncached {db['uncached'][path]['p50_ms']} / {db['uncached'][path]['p95_ms']} ms",
                             "–", "< 200 ms"))
    rows.extend(growth_rows(results.get("postgres_growth")))
    rows.extend(search_rows(results.get("search")))
    sh = results.get("shards")
    if sh and "ratios" in sh:
        single = sh["single"]
        for key, case in sh.items():
            if not key.startswith("cluster_"):
                continue
            x = sh["ratios"][f"{key}_vs_single"]
            rows.append(("shards", f"{case['shards']} shard(s) on 3 primaries, {case['entries']:,} records, "
                         f"-n {sh['settings']['workers']}", _n(case["events_per_s"], "events/s"),
                         f"single stream {_n(single['events_per_s'], 'events/s')}", _x(x["events_per_s"]), "–"))
            rows.append(("shards", "  CPU µs per entry: workers / dispatch / stream redis / postgres",
                         " / ".join(f"{case['cpu_us_per_entry'].get(k, 0):.0f}"
                                    for k in ("workers", "dispatch", "redis", "postgres")),
                         f"single stream {single['cpu_us_per_entry_total']:.0f} µs in all",
                         _x(x["cpu_per_entry"]) + " (total)", "–"))
    for name in BENCHMARKS:
        if isinstance(results.get(name), dict) and "error" in results[name]:
            rows.append((name, "did not run", results[name]["error"].splitlines()[-1][:80], "–", "–", "–"))
    return rows


def growth_rows(pg: dict[str, Any] | None) -> list[tuple[str, str, str, str, str, str]]:
    """One group of rows per level of events stored, each against the empty database; the target
    (≥ 0.9× events/s) is the largest level's. An older results.json has one level, without `levels`."""
    if not pg or "ratios" not in pg:
        return []
    e = pg["empty"]
    levels = pg.get("levels") or {str(pg["prefill"]["events"]): {"prefill": pg["prefill"], **pg["prefilled"]}}
    ratios = pg.get("ratios_by_level") or {str(pg["prefill"]["events"]): pg["ratios"]}
    largest = max(levels, key=int)
    rows = []
    for level, p in sorted(levels.items(), key=lambda kv: int(kv[0])):
        r = ratios[level]
        rows.append(("postgres_growth", f"1 worker process, {int(level):,} events stored",
                     _n(p["drain"]["events_per_s"], "events/s"), f"empty {_n(e['drain']['events_per_s'], 'events/s')}",
                     _x(r["events_per_s_prefilled_vs_empty"]), "≥ 0.9×" if level == largest else "–"))
        rows.append(("postgres_growth", f"  ingest-to-commit p99 at {pg['settings']['rate']:,.0f} entries/s",
                     f"{p['paced']['ingest_to_commit_ms']['p99']} ms",
                     f"empty {e['paced']['ingest_to_commit_ms']['p99']} ms", _x(r["p99_prefilled_vs_empty"]), "–"))
        rows.append(("postgres_growth", "  Postgres CPU µs per entry / bytes on disk per event",
                     f"{p['drain']['cpu_us_per_entry']['postgres']:.0f} µs / {p['disk']['bytes_per_event']} B",
                     f"empty {e['drain']['cpu_us_per_entry']['postgres']:.0f} µs / {e['disk']['bytes_per_event']} B",
                     _x(r["postgres_cpu_us_prefilled_vs_empty"]), "–"))
    for name, figures in (pg.get("lookups") or {}).items():
        if isinstance(figures, dict) and "p95_ms" in figures:
            rows.append(("postgres_growth", f"  {name} at {int(largest):,} events, p50 / p95",
                         f"{figures.get('p50_ms')} / {figures['p95_ms']} ms", "–", "–", "< 200 ms"))
    return rows


def search_rows(se: dict[str, Any] | None) -> list[tuple[str, str, str, str, str, str]]:
    """The API's search and timeline, p50 / p95, against message_status by its primary key; the sweep."""
    if not se or "api" not in se:
        return []
    base = se["sql"]["baseline: message_status by primary key"]
    reports = se["settings"]["reports"]
    rows = [("search", f"{name}, {reports:,} reports, p50 / p95", f"{f['p50_ms']} / {f['p95_ms']} ms",
             f"primary key {base['p50_ms']} ms", _x(ratio_(f["p50_ms"], base["p50_ms"])), "< 200 ms")
            for name, f in se["api"].items()]
    sweep = se.get("expiry_sweep") or {}
    if sweep:
        rows.append(("search", f"expiry sweep, {sweep['round_expired']:,} due messages in one round",
                     f"{sweep['round_ms']} ms ({sweep['us_per_message']} µs each)",
                     f"nothing due {sweep['idle_round_ms']} ms", "–", "–"))
    return rows


def contention_line(results: dict[str, Any]) -> str:
    """How busy the machine was during each benchmark (ours and everyone else's work together)."""
    parts = [f"{name} {c['machine_busy_cores']} busy cores, {c['mean_runnable_processes']} runnable"
             for name, c in results.get("contention", {}).items()]
    cpus = results.get("machine", {}).get("cpus")
    return (f"machine during each benchmark (of {cpus} cores; runnable = processes wanting a core): "
            + "; ".join(parts)) if parts else ""


def ratio_(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def markdown_table(rows: list[tuple[str, str, str, str, str, str]]) -> str:
    lines = ["| benchmark | figure | value | baseline (same run) | ratio | target |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the chart ---------------------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(15, 15))
    colors = {"hookstream": "#1f77b4", "hookstream_everysec": "#aec7e8", "ceiling": "#7f7f7f", "naive": "#d62728"}
    labels = {"hookstream": "hookstream (fsync always)", "hookstream_everysec": "hookstream (everysec)",
              "ceiling": "ceiling: bare Starlette", "naive": "naive: INSERT per request"}
    ing = results.get("ingress") or {}

    ax = axes[0][0]
    if "throughput" in ing:
        payloads = list(ing["throughput"])
        targets = ("hookstream", "ceiling", "naive")
        width = 0.27
        for i, target in enumerate(targets):
            values = [ing["throughput"][p][target]["rps"] for p in payloads]
            bars = ax.bar([x + (i - 1) * width for x in range(len(payloads))], values, width, label=labels[target],
                          color=colors[target])
            ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" for v in values], fontsize=7)
        ax.set_xticks(range(len(payloads)), payloads)
        ax.set_ylabel("requests/s (closed loop, wrk)")
        ax.set_title(f"Ingress throughput by payload ({ing['settings']['connections']} connections)")
        ax.legend(fontsize=8)
    _empty(ax, "throughput" in ing, "ingress")

    def latency_panel(ax: Any, by_target: dict[str, Any], title: str) -> None:
        names = [t for t in ("hookstream", "hookstream_everysec", "ceiling", "naive") if t in by_target]
        quantiles = (("p50_ms", "p50"), ("p99_ms", "p99"), ("p99_9_ms", "p99.9"))
        width = 0.8 / len(names)
        for i, target in enumerate(names):
            values = [by_target[target]["latency"][key] for key, _ in quantiles]
            bars = ax.bar([x + (i - (len(names) - 1) / 2) * width for x in range(3)], values, width,
                          label=labels[target], color=colors[target])
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7)
        ax.set_xticks(range(3), [name for _, name in quantiles])
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (log)")
        ax.set_title(title)
        ax.legend(fontsize=8)

    if "throughput" in ing:
        latency_panel(axes[0][1], ing["throughput"]["mixed"], "Ingress latency at saturation (mixed, closed loop)")
    _empty(axes[0][1], "throughput" in ing, "ingress")
    if "open_loop" in ing:
        latency_panel(axes[1][0], ing["open_loop"], f"Ingress latency, open loop at {ing['settings']['open_rate']:,.0f}"
                      " req/s (from intended send time)")
    _empty(axes[1][0], "open_loop" in ing, "ingress")

    ax = axes[1][1]
    wk = results.get("workers") or {}
    if "pipeline_1" in wk:
        names = [("pipeline_1", "1 worker"), ("pipeline_2", "2 workers"), ("raw_insert", "raw INSERT ceiling"),
                 ("rq_per_webhook", "RQ job per webhook")]
        values = [wk[k].get("events_per_s", wk[k].get("rows_per_s", wk[k].get("entries_per_s"))) for k, _ in names
                  if k in wk]
        bars = ax.bar([n for k, n in names if k in wk], values,
                      color=["#1f77b4", "#1f77b4", "#7f7f7f", "#d62728"][: len(values)])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.axhline(10_000, color="green", linestyle="--", linewidth=1, label="target 10,000 events/s per process")
        ax.set_ylabel("events/s (rows/s for the ceiling)")
        ax.set_title(f"Workers: {wk['pipeline_1']['entries']:,} records from a pre-filled stream")
        ax.legend(fontsize=8)
    _empty(ax, "pipeline_1" in wk, "workers")

    ax = axes[2][0]
    e2e = results.get("e2e") or {}
    if "lag_ms" in e2e:
        keys = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p99_9_ms", "p99.9"), ("max_ms", "max"))
        values = [e2e["lag_ms"][k] for k, _ in keys]
        bars = ax.bar([n for _, n in keys], values, color="#1f77b4", label="ack→commit lag (commit timestamps)")
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8)
        hist = e2e.get("worker_histogram", {})
        if "p50_ms" in hist:
            ax.scatter(["p50", "p99"], [hist["p50_ms"], hist["p99_ms"]], color="black", zorder=3,
                       label="worker histogram (interpolated)")
        ax.axhline(500, color="green", linestyle="--", linewidth=1, label="target p99 < 500 ms")
        ax.set_ylabel("ms")
        s = e2e["settings"]
        ax.set_title(f"End to end at {s['rate']:,.0f} req/s for {s['duration_s']:.0f} s, {s['workers']} workers")
        ax.legend(fontsize=8)
    _empty(ax, "lag_ms" in e2e, "e2e")

    ax = axes[2][1]
    rp = results.get("replay") or {}
    if "replay" in rp:
        names = ["live pipeline"] + [f"replay, {case}" for case in rp["replay"]]
        values = [rp["live_pipeline"]["steady_events_per_s"]] + [r["events_per_s"] for r in rp["replay"].values()]
        bars = ax.bar(names, values, color=["#7f7f7f"] + ["#1f77b4"] * len(rp["replay"]))
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.axhline(20_000, color="green", linestyle="--", linewidth=1, label="target 20,000 events/s")
        ax.set_ylabel("events/s")
        ax.set_title(f"Replay of {rp['settings']['records']:,} stream entries, {rp['settings']['workers']} workers")
        ax.legend(fontsize=8)
    _empty(ax, "replay" in rp, "replay")

    m = results.get("machine", {})
    fig.suptitle(f"hookstream benchmarks — {m.get('cpus')} CPUs ({m.get('cpu_model', '')}), Python {m.get('python')}, "
                 f"{results.get('started_at', '')[:16]}{' (quick)' if results.get('quick') else ''}", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _empty(ax: Any, present: bool, name: str) -> None:
    if not present:
        ax.text(0.5, 0.5, f"{name}: not run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (about 3 minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--growth-levels", help="comma-separated events stored for postgres_growth, grown one after"
                        f" the other (default {','.join(map(str, GROWTH_LEVELS))}; the README's curve:"
                        " 10000000,50000000, about two hours)")
    parser.add_argument("--out", default="bench/results.json")
    parser.add_argument("--png", default="bench/results.png")
    parser.add_argument("--from-json", help="re-render the table and the chart of an earlier results.json; run nothing")
    args = parser.parse_args()
    if args.from_json:
        results = orjson.loads(Path(args.from_json).read_bytes())
        if "ingress" in results and "throughput" in results["ingress"]:
            from bench.ingress import ratios as ingress_ratios
            results["ingress"]["ratios"] = ingress_ratios(results["ingress"])
        rows = table_rows(results)
        chart(results, Path(args.png))
        print(markdown_table(rows))
        print("\n" + contention_line(results))
        return 0
    chosen = [b for b in (args.only.split(",") if args.only else BENCHMARKS) if b not in args.skip.split(",")]
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    from bench import wrk

    if "ingress" in chosen and not wrk.available():
        log("note: wrk is not installed, so the ingress throughput runs use the Python generator "
            "(bench/loadgen.py --closed), which shares the 2 cores with the server: expect lower, noisier "
            "figures. For the wrk figures: sudo apt-get install -y wrk")
    started = time.perf_counter()
    results: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "quick": args.quick,
                               "machine": machine(), "sizes": {}}
    plan = sizes(args.quick)
    if args.growth_levels:
        plan["postgres_growth"]["levels"] = tuple(int(v) for v in args.growth_levels.split(",") if v)
    failed = False
    for name in chosen:
        results["sizes"][name] = {k: list(v) if isinstance(v, tuple) else v for k, v in plan[name].items()}
        log(f"== {name} ({', '.join(f'{k}={v}' for k, v in plan[name].items())})")
        t0 = time.perf_counter()
        contention = Contention()
        try:
            with contention:
                results[name] = run_one(name, plan[name])
        except Exception as exc:  # one benchmark that cannot run must not hide the others' figures
            failed = True
            results[name] = {"error": "".join(traceback.format_exception_only(exc)).strip()}
            traceback.print_exc()
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        if hasattr(contention, "busy_cores"):
            results.setdefault("contention", {})[name] = contention.summary()
        log(f"== {name} done in {results['seconds'][name]:.0f} s")
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    rows = table_rows(results)
    results["table"] = [dict(zip(("benchmark", "figure", "value", "baseline", "ratio", "target"), row)) for row in rows]
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    png = ROOT / args.png if not Path(args.png).is_absolute() else Path(args.png)
    try:
        chart(results, png)
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        png = None  # type: ignore[assignment]
    m = results["machine"]
    print(f"\nhookstream benchmarks — {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, "
          f"fdatasync p50 {m['fdatasync_p50_ms']} ms / p99 {m['fdatasync_p99_ms']} ms, load average at start "
          f"{m['load_average_at_start']}, {results['total_seconds']:.0f} s{' (quick)' if args.quick else ''}\n")
    print(markdown_table(rows))
    print("\n" + contention_line(results))
    generator = (results.get("ingress") or {}).get("settings", {}).get("generator")
    if generator == "python":
        print("\nnote: no wrk on this machine: ingress throughput measured with the Python generator")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}"
          + (f" and {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}" if png else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
