"""Worker and dispatcher /metrics answer only HOOKSTREAM_METRICS_ALLOWED_IPS, as the ingress does;
the commands pass their settings' list (default: loopback and private ranges)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from hookstream.embedded import free_port
from shared.settings import NetList
from workers.metrics import serve


def status_of(port: int, deadline_s: float = 30) -> int:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_only_the_allowed_addresses_are_answered() -> None:
    registry = CollectorRegistry()
    Counter("hookstream_test", "A counter.", registry=registry).inc()
    closed, open_ = free_port(), free_port()
    serve(closed, registry, NetList.parse("10.0.0.0/8"))
    serve(open_, registry, NetList.parse("127.0.0.0/8"))
    assert status_of(closed) == 403
    assert status_of(open_) == 200


@pytest.mark.integration
def test_the_worker_command_applies_the_setting(redis_url: str) -> None:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKSTREAM_")},
           "HOOKSTREAM_REDIS_URL": redis_url, "HOOKSTREAM_METRICS_ALLOWED_IPS": "192.0.2.0/24"}
    proc = subprocess.Popen([sys.executable, "-m", "hookstream.cli", "worker", "--metrics-port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert status_of(port) == 403
    finally:
        proc.terminate()
        proc.wait(30)
