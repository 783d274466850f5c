"""The ingress's Prometheus metrics, in a registry of its own (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "hookstream_ingress_requests",
            "Webhook requests by provider, feed and outcome.",
            ["provider", "feed", "outcome"],
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, str], MetricWrapperBase] = {}
        self.append_seconds = Histogram(
            "hookstream_ingress_append_seconds",
            "Time from a request's append call until Redis held the record.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.append_batch_size = Histogram(
            "hookstream_ingress_append_batch_size",
            "Requests appended per Redis round trip (coalesced while the previous one was in flight).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.append_errors = Counter(
            "hookstream_ingress_append_errors",
            "Appends that failed (answered 503).",
            registry=self.registry,
        )
        self.replica_ack_errors = Counter(
            "hookstream_ingress_replica_ack_errors",
            "Appends answered 503 because fewer replicas than HOOKSTREAM_APPEND_REPLICAS confirmed them in time"
            " (also counted in append_errors).",
            registry=self.registry,
        )
        self.append_replicas_acked = Histogram(
            "hookstream_ingress_append_replicas_acked",
            "Replicas that WAIT counted per round trip (only with HOOKSTREAM_APPEND_REPLICAS > 0).",
            buckets=(0, 1, 2, 3, 4, 5),
            registry=self.registry,
        )

    def count(self, provider: str, feed: str, outcome: str) -> None:
        """One request answered; the labelled child is looked up once per label set, not per request."""
        key = (provider, feed, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(provider, feed, outcome)
        child.inc()  # type: ignore[attr-defined]
