"""Where a worker spends its CPU per stream entry: in-process micro-timings of each batch phase.

    python -m bench.profile_workers [--records 20000] [--rounds 5] [--postgres]

The worker benchmark (bench/workers.py) gives events/s through real processes; this one says
which phase the CPU goes to, per entry, in one thread of this process:

- `from_fields`: decoding the stream fields into a RawRecord;
- `normalize_cold`: `normalize_entries`, batch by batch, with the worker's caches empty (a fresh
  process: every phone number seen for the first time);
- `normalize_warm`: the same batches again, caches kept (a long-running worker, where numbers
  repeat); `normalize_warm_by_feed`: the same, per provider and feed (garbage entries included);
- `store_params`: what `write_entries` computes before its SQL is sent: deduped events, event,
  status, archive and dead-letter columns, and the consent plan against an empty ledger;
- `write_entries` (with `--postgres`): batches of 500 written in one transaction each into a
  throw-away PostgreSQL: this process's CPU per entry and the wall time per entry.

The heap is settled first as a worker settles it once its context is built (`settle_heap`:
long-lived objects frozen out of the collector's passes); `--unsettled` measures without that.
Each figure is CPU time (`time.process_time`), best of `--rounds`; `gc` is the collector's share
of the normalize and store phases (time inside collections, from `gc.callbacks`, one pass).
`floor_json_loads` (the body's `orjson.loads` alone) is a baseline measured in the same run: the
least any parse costs.
`fingerprint` hashes every row and dead letter the store would write, so two runs of different
code can be compared for identical output. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import orjson

from bench.payloads import records
from bench.workers import machine
from shared import fastphone, keywords, phones, times
from shared.consent import plan as consent_plan
from shared.consent import subjects_of
from shared.providers import cm, gatewayapi, mx2, smsmode
from shared.record import RawRecord
from shared.settings import Settings
from workers import consent, normalize, store
from workers.context import normalize_context, settle_heap
from workers.normalize import Entry, NormalizeContext, normalize_entries

RawEntry = tuple[str, Mapping[bytes, bytes]]
CACHED_MODULES: tuple[ModuleType, ...] = (phones, fastphone, times, keywords, cm, gatewayapi, mx2, smsmode, normalize,
                                          store)
BATCH = 500  # the worker's default batch size


def stream_entries(count: int, garbage_every: int) -> list[RawEntry]:
    """The mixed bench records as stream entries; every `garbage_every`-th one is a dead letter."""
    out: list[RawEntry] = []
    for i, record in enumerate(records(count)):
        fields = record.to_fields()
        if garbage_every and i % garbage_every == garbage_every - 1:
            fields[b"b"] = b"{not json" if record.body else b""
            fields[b"q"] = b"" if record.query else fields[b"q"]
        out.append((f"{record.received_at_ms}-0", fields))
    return out


def clear_caches(ctx: NormalizeContext | None = None) -> None:
    """Empty every functools cache of the worker's normalizing modules, and the verdicts `ctx`'s
    keyword policy remembers (a fresh process)."""
    for module in CACHED_MODULES:
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    if ctx is not None:
        ctx.keywords._memo.clear()


def cpu_us_per_entry(func: Callable[[], object], count: int, rounds: int,
                     before: Callable[[], None] | None = None) -> float:
    best = float("inf")
    for _ in range(rounds):
        if before is not None:
            before()
        gc.collect()
        started = time.process_time()
        func()
        best = min(best, time.process_time() - started)
    return round(best / count * 1e6, 2)


def store_params(entries: list[Entry]) -> list[Any]:
    """The pure work of `write_entries` (live mode) for one batch, in its order."""
    items = store.unique_events(entries)
    rows = [store._event_row(event, record) for event, record in items]
    events = store._columns(rows, len(store.EVENT_COLUMNS))
    statuses = store._columns(store.status_winners(items), len(store.STATUS_COLUMNS))
    signals = consent.signals_of(items)
    plan = consent_plan(signals, set(), []) if signals else None
    archived = [store._archive_row(entry.record) for entry in entries if entry.record is not None]
    archive = store._columns(archived, len(store.ARCHIVE_COLUMNS))
    dead = store._columns([store._dead_row(entry) for entry in entries if entry.dead_reason is not None],
                          len(store.DEAD_COLUMNS))
    return [events, statuses, subjects_of(signals), plan and (plan.upsert, plan.changes), archive, dead]


def batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


def normalize_batches(raw_batches: list[list[RawEntry]], ctx: NormalizeContext) -> None:
    """As a worker does: one batch normalized at a time, dropped once done (what the collector sees)."""
    for batch in raw_batches:
        normalize_entries(batch, ctx)


def fingerprint(params: list[list[Any]]) -> str:
    return hashlib.sha256(orjson.dumps(params, default=repr)).hexdigest()[:16]


def write_timings(entries: list[Entry], rounds: int) -> dict[str, Any]:
    """`write_entries` against a throw-away PostgreSQL; tables emptied before each round."""
    import psycopg

    from hookstream.embedded import PostgresServer
    from hookstream.migrate import migrate

    postgres = PostgresServer().start()
    try:
        migrate(postgres.url)
        best_cpu, best_wall = float("inf"), float("inf")
        with psycopg.connect(postgres.url) as conn:
            for _ in range(rounds):
                with conn.transaction():
                    conn.execute("TRUNCATE events, event_keys, message_status, consent, consent_changes, dead_letters, raw_archive")
                gc.collect()
                cpu, wall = time.process_time(), time.perf_counter()
                for batch in batches(entries):
                    with conn.transaction():
                        store.write_entries(conn, batch)
                best_cpu = min(best_cpu, time.process_time() - cpu)
                best_wall = min(best_wall, time.perf_counter() - wall)
    finally:
        postgres.remove()
    return {"write_entries_cpu": round(best_cpu / len(entries) * 1e6, 2),
            "write_entries_wall": round(best_wall / len(entries) * 1e6, 2)}


class CollectorClock:
    """Wall time spent inside garbage collections, from gc.callbacks."""

    def __init__(self) -> None:
        self.seconds, self._started = 0.0, 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


def gc_share(raw_batches: list[list[RawEntry]], ctx: NormalizeContext, count: int) -> float:
    """µs per entry spent collecting garbage while batches are normalized and their parameters built."""
    clock = CollectorClock()
    gc.callbacks.append(clock)
    try:
        for batch in raw_batches:
            store_params(normalize_entries(batch, ctx))
    finally:
        gc.callbacks.remove(clock)
    return round(clock.seconds / count * 1e6, 2)


def run(*, count: int = 20_000, rounds: int = 5, garbage_every: int = 100, postgres: bool = False,
        settled: bool = True) -> dict[str, Any]:
    if settled:
        settle_heap()
    raw = stream_entries(count, garbage_every)
    ctx = normalize_context(Settings(gatewayapi_keywords=frozenset({"foo"})))
    raw_batches = batches(raw)
    bodies = [f[b"b"] for _, f in raw if f[b"b"][:1] == b"{" and f[b"b"] != b"{not json"]
    us: dict[str, float] = {
        "floor_json_loads": cpu_us_per_entry(lambda: [orjson.loads(body) for body in bodies], count, rounds),
        "from_fields": cpu_us_per_entry(
            lambda: [[RawRecord.from_fields(f, sid) for sid, f in batch] for batch in raw_batches], count, rounds),
        "normalize_cold": cpu_us_per_entry(lambda: normalize_batches(raw_batches, ctx), count, rounds,
                                           before=lambda: clear_caches(ctx)),
        "normalize_warm": cpu_us_per_entry(lambda: normalize_batches(raw_batches, ctx), count, rounds),
        "gc": gc_share(raw_batches, ctx, count),
    }
    entries = normalize_entries(raw, ctx)
    events = sum(len(entry.events) for entry in entries)
    by_feed: dict[str, list[RawEntry]] = {}
    for sid, fields in raw:
        by_feed.setdefault(f"{fields[b'p'].decode()}/{fields[b'f'].decode()}", []).append((sid, fields))
    us_by_feed = {name: cpu_us_per_entry(lambda part=part: normalize_entries(part, ctx), len(part), rounds)  # type: ignore[misc]
                  for name, part in sorted(by_feed.items())}
    us["store_params"] = cpu_us_per_entry(lambda: [store_params(b) for b in batches(entries)], count, rounds)
    if postgres:
        us.update(write_timings(entries, max(2, rounds // 2)))
    return {
        "machine": machine(),
        "records": count, "events": events, "dead_letters": sum(e.dead_reason is not None for e in entries),
        "rounds": rounds, "settled": settled, "us_per_entry": us, "normalize_warm_by_feed": us_by_feed,
        "fingerprint": fingerprint([store_params(b) for b in batches(entries)]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--garbage-every", type=int, default=100, help="one dead letter every N entries (0: none)")
    parser.add_argument("--postgres", action="store_true", help="also time write_entries against PostgreSQL")
    parser.add_argument("--unsettled", action="store_true", help="leave the garbage collector as Python sets it")
    args = parser.parse_args()
    results = run(count=args.records, rounds=args.rounds, garbage_every=args.garbage_every, postgres=args.postgres,
                  settled=not args.unsettled)
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
