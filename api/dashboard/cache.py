"""The sections' cache: short time-to-live, single flight, kept warm while someone is watching.

- A value younger than its TTL is served as it is.
- The first request for a key (or one after nobody asked for `idle_s`) computes it; concurrent
  requests for the same key wait for that one computation (single flight) instead of running the
  same queries again.
- While a key is being asked for, a background thread recomputes it every TTL, so a request is
  answered from memory and the value shown is at most TTL + the time to compute it old (plus the
  thread's half-second tick). A value older than TTL + `stale_grace_s` (the database hangs), or
  one nobody asked for in `idle_s` (not kept warm), is never served: the request computes it.
- `drop(key)` forgets a value (after a review decision, or when another section shows it is out of
  date: the next request reads the database); `peek(key)` looks at one without computing.

With a TTL of 0 nothing is kept and every request computes (the tests; the benchmark's
"uncached" figures).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("hookstream.dashboard")

TICK_S = 0.5


class TTLCache:
    def __init__(self, ttl_s: Mapping[str, float], *, idle_s: float = 60.0, stale_grace_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = dict(ttl_s)
        self.idle_s = idle_s
        self.stale_grace_s = stale_grace_s
        self.clock = clock
        self._values: dict[str, tuple[float, Any]] = {}
        self._asked: dict[str, float] = {}
        self._computers: dict[str, Callable[[], Any]] = {}
        self._locks: dict[str, threading.Lock] = {key: threading.Lock() for key in self.ttl_s}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        ttl = self.ttl_s[key]
        if ttl <= 0:
            return compute()
        now = self.clock()
        previous = self._asked.get(key)
        self._asked[key] = now
        self._computers[key] = compute
        self._start()
        hit = self._values.get(key)
        if hit is not None:
            age = now - hit[0]
            kept_warm = previous is not None and now - previous <= self.idle_s
            if age < ttl or (kept_warm and age < ttl + self.stale_grace_s):
                return hit[1]
        return self._refresh(key, compute, only_if_older_than=ttl)

    def _refresh(self, key: str, compute: Callable[[], Any], only_if_older_than: float) -> Any:
        with self._locks[key]:
            hit = self._values.get(key)
            if hit is not None and self.clock() - hit[0] < only_if_older_than:
                return hit[1]  # another thread computed it while this one waited
            started = self.clock()
            value = compute()
            self._values[key] = (started, value)  # its age counts from when the reading began
            return value

    def peek(self, key: str) -> Any:
        """The value held for `key` now, however old (None: none); computes nothing."""
        hit = self._values.get(key)
        return None if hit is None else hit[1]

    def drop(self, key: str) -> None:
        with self._locks[key]:
            self._values.pop(key, None)

    def _start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        with self._guard:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._keep_warm, name="hookstream-dashboard-cache", daemon=True)
                self._thread.start()

    def _keep_warm(self) -> None:
        while not self._stop.wait(TICK_S):
            now = self.clock()
            for key, asked in list(self._asked.items()):
                hit = self._values.get(key)
                if now - asked > self.idle_s or (hit is not None and now - hit[0] < self.ttl_s[key]):
                    continue
                try:
                    self._refresh(key, self._computers[key], only_if_older_than=self.ttl_s[key])
                except Exception:  # a section reports its own source errors; anything else: next tick
                    log.exception("dashboard: refreshing %s failed", key)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
