"""An HTTP/1.1 load generator on raw asyncio streams (uvloop), run as a process of its own.

    python -m bench.loadgen --port P --set mixed --rate 1000 --duration 30          # open loop
    python -m bench.loadgen --port P --set mixed --closed --connections 64 --duration 10

Open loop (the default): request i is due at t0 + i/rate whatever happened to the earlier ones,
and its latency is measured from that *intended* send time to the end of its response, so a
stall of the server shows up in every request that should have been sent during it (no
coordinated omission). Requests wait for a free keep-alive connection (at most --connections);
that wait counts too. Closed loop (--closed) is the fallback throughput mode when `wrk` is not
installed: each connection sends its next request as soon as the previous answer arrived.

Prints one JSON object: requests sent, answered, status counts, achieved rate, and latency
percentiles in milliseconds. Its own scheduling delay (how late requests left compared with
their intended time) is reported as `send_lag_ms`, so a generator that cannot keep up is seen.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections import Counter
from typing import Any

import orjson

from bench.common import latency_summary_ms, payload_set, percentile


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        """Send one request and read its whole answer; the status code (0: connection error)."""
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(raw)
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length:
                    await self.reader.readexactly(length)
                if close:
                    self.close()
                return status
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.close()
                if attempt:
                    return 0
        return 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def open_loop(host: str, port: int, raws: list[bytes], rate: float, duration: float,
                    connections: int) -> dict[str, Any]:
    total = int(rate * duration)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    send_lags: list[float] = []
    service: list[float] = []
    statuses: Counter[int] = Counter()
    pool = [Connection(host, port) for _ in range(connections)]
    # Open the connections before the clock starts: a provider keeps its connections alive.
    await asyncio.gather(*(c.request(raws[i % len(raws)]) for i, c in enumerate(pool[: min(connections, 32)])))

    async def worker(conn: Connection) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            index, intended = item
            sent_at = time.perf_counter()
            send_lags.append(sent_at - intended)
            status = await conn.request(raws[index % len(raws)])
            done = time.perf_counter()
            latencies.append(done - intended)
            service.append(done - sent_at)
            statuses[status] += 1

    workers = [asyncio.create_task(worker(c)) for c in pool]
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.05
    interval = 1.0 / rate
    cpu_start = time.process_time()

    def schedule() -> None:
        """The clock, in a thread: time.sleep() wakes within tens of microseconds where the event
        loop's timers have a millisecond's granularity. Each due request is handed to the loop."""
        sent = 0
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - start) / interval) + 1) if now >= start else 0
            if due > sent:
                loop.call_soon_threadsafe(_enqueue, sent, due)
                sent = due
            time.sleep(max(0.0, start + sent * interval - time.perf_counter()))
        loop.call_soon_threadsafe(_finish)

    def _enqueue(first: int, end: int) -> None:
        for index in range(first, end):
            queue.put_nowait((index, start + index * interval))

    def _finish() -> None:
        for _ in workers:
            queue.put_nowait(None)

    sys.setswitchinterval(0.0002)  # the clock thread gets the GIL quickly while the loop is busy
    clock = threading.Thread(target=schedule, daemon=True)
    clock.start()
    await asyncio.gather(*workers)
    clock.join()
    elapsed = time.perf_counter() - start
    for conn in pool:
        conn.close()
    lags = sorted(send_lags)
    return {"mode": "open", "target_rate": rate, "duration_s": round(elapsed, 3), "sent": total,
            "answered": len(latencies), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "achieved_rate": round(len(latencies) / elapsed, 1), "connections": connections,
            "generator_cores": round((time.process_time() - cpu_start) / elapsed, 3),
            "latency": latency_summary_ms(latencies), "latency_from_send": latency_summary_ms(service),
            "send_lag_ms": {"p50": round(percentile(lags, 50) * 1000, 3), "p99": round(percentile(lags, 99) * 1000, 3)}}


async def closed_loop(host: str, port: int, raws: list[bytes], duration: float, connections: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.perf_counter() + duration
    counter = iter(range(1 << 62))

    async def worker(conn: Connection) -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            status = await conn.request(raws[next(counter) % len(raws)])
            latencies.append(time.perf_counter() - sent)
            statuses[status] += 1
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(Connection(host, port)) for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return {"mode": "closed", "duration_s": round(elapsed, 3), "answered": len(latencies),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "achieved_rate": round(len(latencies) / elapsed, 1), "connections": connections,
            "latency": latency_summary_ms(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--set", default="mixed", help="payload set: mixed or a provider")
    parser.add_argument("--distinct", type=int, default=2000, help="distinct requests cycled through")
    parser.add_argument("--skip", type=int, default=0, help="start after this many payload records")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--closed", action="store_true", help="closed loop (throughput) instead of open loop")
    args = parser.parse_args()
    raws = [r.raw(f"{args.host}:{args.port}") for r in payload_set(args.set, args.distinct, args.skip)]
    try:
        from uvloop import run
    except ImportError:  # plain asyncio still works, only slower
        from asyncio import run
    if args.closed:
        result = run(closed_loop(args.host, args.port, raws, args.duration, args.connections))
    else:
        result = run(open_loop(args.host, args.port, raws, args.rate, args.duration, args.connections))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
