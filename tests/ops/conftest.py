"""The pipeline fixtures of tests/workers (real Redis, Postgres, ingress, dispatcher, burst workers), reused,
and `cli`: the operator commands parsed by their own register() and run in-process."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable

import pytest

from hookstream import dead_letters, stats, status
from shared.settings import Settings
from tests.workers.conftest import dispatcher, drain, ingress_client, settings, worker_context  # noqa: F401

Cli = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """run(settings, *argv) → (exit code, stdout); a traceback on stderr fails the test."""

    def run(settings: Settings, *argv: str) -> tuple[int, str]:  # noqa: F811 (the fixture, passed in)
        top = argparse.ArgumentParser(prog="hookstream")
        sub = top.add_subparsers(dest="command", required=True)
        for module in (status, dead_letters, stats):
            module.register(sub)
        args = top.parse_args(argv)
        capsys.readouterr()
        code = args.handler(settings, args)
        out = capsys.readouterr()
        assert "Traceback" not in out.err + out.out
        return code, out.out

    return run


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: a server that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
