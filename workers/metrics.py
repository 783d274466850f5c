"""Prometheus metrics of the workers and the dispatcher, each served on a port of its own.

`hookstream worker -n N` runs N processes: their metrics go through prometheus_client's
multiprocess mode (a folder of shared files named by PROMETHEUS_MULTIPROC_DIR, which the command
sets before anything imports prometheus_client), and the parent serves the sum.
"""

from __future__ import annotations

import bisect
import collections
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.multiprocess import MultiProcessCollector

from shared.events import Event
from shared.settings import IPAddress, NetList

WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]

log = logging.getLogger("hookstream.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def guarded(app: WSGIApp, allowed: NetList) -> WSGIApp:
    """`app` for the addresses `allowed` admits (HOOKSTREAM_METRICS_ALLOWED_IPS, as on the ingress);
    403 for any other. The TCP peer is the client: these ports are scraped directly, not proxied."""

    def guard(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            client: IPAddress | None = ipaddress.ip_address(environ.get("REMOTE_ADDR", "").removeprefix("::ffff:"))
        except ValueError:
            client = None
        if not allowed.admits(client):
            start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"forbidden\n"]
        result: Iterable[bytes] = app(environ, start_response)
        return result

    return guard


def serve(port: int, registry: CollectorRegistry | None = None, allowed: NetList | None = None) -> None:
    """The /metrics endpoint on `port` (0: none), for `allowed` only (None: everyone); a port in use
    is logged, never fatal."""
    if not port:
        return
    if registry is None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
    app = make_wsgi_app(registry)
    try:
        server = make_server("0.0.0.0", port, guarded(app, allowed) if allowed is not None else app,
                             ThreadingWSGIServer, handler_class=_SilentHandler)
    except OSError as exc:
        log.warning("metrics port %d unavailable (%s); running without /metrics", port, exc.strerror)
        return
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on :%d/metrics", port)


REVOCATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 10 * 24 * 3600)


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for every amount, with one increment per bucket touched instead of two
    per amount: in multiprocess mode each increment writes to the metric's mmap file, and a batch
    observes one commit lag per entry. It reads the histogram's own bounds and values (private
    attributes of the pinned prometheus-client; tests/workers/test_metrics.py checks it gives what
    `observe` gives)."""
    if not amounts:
        return
    bounds = histogram._upper_bounds
    counts = collections.Counter(bisect.bisect_left(bounds, amount) for amount in amounts)
    histogram._sum.inc(sum(amounts))
    for index, count in counts.items():
        histogram._buckets[index].inc(count)


class WorkerMetrics:
    """What a batch did: events by provider/kind/outcome, its size and time, receive-to-commit lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        # `mode`: live traffic or a replay, so that a replay never shows as traffic.
        self.events = Counter("hookstream_worker_events", "Normalized events written, by mode (live, replay),"
                              " provider, kind and keyword outcome (inbound texts) or status.",
                              ["mode", "provider", "kind", "outcome"], registry=reg)
        self.dead_letters = Counter("hookstream_worker_dead_letters", "Records dead-lettered, by mode and provider.",
                                    ["mode", "provider"], registry=reg)
        self.consent_changes = Counter("hookstream_worker_consent_changes", "Consent changes applied, by mode.",
                                       ["mode", "outcome"], registry=reg)
        self.batches = Counter("hookstream_worker_batches", "Batches processed, by mode (live, replay) and result.",
                               ["mode", "result"], registry=reg)
        self.batch_size = Histogram("hookstream_worker_batch_size", "Stream entries per batch.",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000), registry=reg)
        self.batch_seconds = Histogram("hookstream_worker_batch_seconds", "Time to process one batch.",
                                       buckets=LATENCY_BUCKETS, registry=reg)
        self.commit_lag = Histogram("hookstream_worker_commit_lag_seconds", "From the ingress's 200 (receive time)"
                                    " to the commit of the record's batch.", buckets=LAG_BUCKETS, registry=reg)
        # The revocation clock: an opt-out's receive time to its consent change committed, by source.
        self.revocation = Histogram("hookstream_consent_revocation_seconds", "From an opt-out's receive time to"
                                    " the commit of the consent change it made, by source.", ["source"],
                                    buckets=REVOCATION_BUCKETS, registry=reg)

    def observe_events(self, events: Iterable[Event], mode: str = "live") -> None:
        """Counted first, then one increment per label set: a batch has a handful of them, and
        each increment of a multiprocess counter writes to its mmap file."""
        counts = collections.Counter(
            (mode, event.provider, str(event.kind), str(event.outcome or event.status or event.consent or "none"))
            for event in events)
        for labels, count in counts.items():
            self.events.labels(*labels).inc(count)


class DispatchMetrics:
    """The stream as the dispatcher sees it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        reg = registry
        self.enqueued = Counter("hookstream_dispatch_entries", "Stream entries handed to workers.", registry=reg)
        self.batches = Counter("hookstream_dispatch_batches", "Batches enqueued.", registry=reg)
        self.reclaimed = Counter("hookstream_dispatch_reclaimed", "Entries reclaimed from dead or failed jobs.",
                                 registry=reg)
        self.dead_lettered = Counter("hookstream_dispatch_gave_up", "Entries sent to the dead letters after too"
                                     " many deliveries.", registry=reg)
        # Per shard of the raw stream (label `shard`: "0", "1", ...); a deployment's total is their sum.
        self.pending = Gauge("hookstream_stream_pending", "Entries delivered to workers, not yet acknowledged.",
                             ["shard"], registry=reg)
        self.lag = Gauge("hookstream_stream_lag", "Entries in the stream not yet read by the group.", ["shard"],
                         registry=reg)
        self.length = Gauge("hookstream_stream_length", "Entries in the stream.", ["shard"], registry=reg)
        self.oldest_pending_s = Gauge("hookstream_stream_oldest_pending_seconds", "Idle time of the oldest"
                                      " pending entry.", ["shard"], registry=reg)
        self.inflight = Gauge("hookstream_dispatch_inflight_batches", "Batches queued or running in RQ.", registry=reg)
