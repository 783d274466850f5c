"""Fixtures of the reliability and security suite, and its figures.

The suite's own redis-server and PostgreSQL (tests stop, kill and restart them) are started once
per session; each test gets a fresh pipeline (ingress, dispatcher, workers as subprocesses) over
emptied servers. Long scenarios carry the `faults_long` marker: `make test` deselects them,
`make test-faults` runs everything. At the end the figures the issue asks for (requests
acknowledged, faults injected, events lost, duplicate side effects, bad inputs tried, 5xx answers)
are printed and written to tests/faults/last-run.json.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (
    FIGURES,
    SCENARIOS,
    Pipeline,
    Requests,
    Secrets,
    Servers,
    halt_background,
    write_figures,
)

HERE = Path(__file__).parent
LAST_RUN = HERE / "last-run.json"
_started = time.time()
_outcomes: dict[str, str] = {}
_durations: dict[str, float] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.faults)
            if item.get_closest_marker("timeout") is None:  # real processes on a shared 2-core machine
                item.add_marker(pytest.mark.timeout(300))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/faults/" not in report.nodeid:
        return
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.nodeid] = report.outcome if report.when == "call" else f"{report.when} {report.outcome}"
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _outcomes:
        return
    long_ran = any(("long" in nodeid) for nodeid in _outcomes)
    summary: dict[str, Any] = {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "suite": "full (make test-faults)" if long_ran else "fast subset (make test)",
        "wall_seconds": round(time.time() - _started, 1),
        "fault_test_seconds": round(sum(_durations.values()), 1),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "tests": {nodeid.split("tests/faults/", 1)[1]: {"outcome": outcome, "seconds": round(_durations[nodeid], 1)}
                  for nodeid, outcome in sorted(_outcomes.items())},
    }
    write_figures(LAST_RUN, summary)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _outcomes:
        return
    terminalreporter.section("reliability and security figures")
    order = ["requests_acknowledged", "faults_injected", "events_lost", "duplicate_side_effects",
             "bad_inputs_tried", "answers_5xx", "answers_503"]
    for name in order + sorted(set(FIGURES) - set(order)):
        terminalreporter.write_line(f"{name.replace('_', ' '):<34} {FIGURES.get(name, 0)}")
    if SCENARIOS:
        terminalreporter.write_line("")
        terminalreporter.write_line(f"{'scenario':<52} {'acked':>6} {'faults':>6} {'lost':>4} {'dup':>3} {'503s':>5}"
                                    f" {'drain s':>7}")
        for label, row in SCENARIOS.items():
            terminalreporter.write_line(f"{label[:52]:<52} {row['acknowledged']:>6} {row['faults']:>6} {row['lost']:>4}"
                                        f" {row['duplicates']:>3} {row['answers_503']:>5} {row['drain_s']:>7}")
    terminalreporter.write_line(f"(written to {LAST_RUN.relative_to(HERE.parent.parent)})")


@pytest.fixture(scope="session")
def fault_servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    servers = Servers().start()
    yield servers
    servers.stop()
    if request.session.testsfailed:
        print(f"\nfault suite: processes' logs kept in {servers.logs}")
    else:
        shutil.rmtree(servers.root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _halt_background() -> Iterator[None]:
    """A load generator or slow clients left running by a failed test never run into the next one."""
    yield
    left = halt_background()
    assert not left, f"threads still running after the test: {left}"


@pytest.fixture(scope="session")
def secrets() -> Secrets:
    return Secrets()


@pytest.fixture
def requests_(secrets: Secrets) -> Requests:
    return Requests(secrets)


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
def make_pipeline(fault_servers: Servers, secrets: Secrets) -> Iterator[PipelineFactory]:
    """Start a pipeline (environment overrides as keyword arguments) over emptied servers."""
    made: list[Pipeline] = []

    def make(workers: int = 2, **env: str) -> Pipeline:
        if not fault_servers.redis_running():
            fault_servers.start_redis()
        pipeline = Pipeline(fault_servers, secrets, **env)
        made.append(pipeline)
        return pipeline.start(workers)

    yield make
    for pipeline in made:
        pipeline.stop()


@pytest.fixture
def pipeline(make_pipeline: PipelineFactory) -> Pipeline:
    return make_pipeline()


IngressFactory = Callable[..., Pipeline]


@pytest.fixture
def make_ingress(fault_servers: Servers, secrets: Secrets) -> Iterator[IngressFactory]:
    """Only an ingress process (environment overrides as keyword arguments; host="::1" for IPv6)."""
    made: list[Pipeline] = []

    def make(host: str = "127.0.0.1", **env: str) -> Pipeline:
        if not fault_servers.redis_running():
            fault_servers.start_redis()
        pipeline = Pipeline(fault_servers, secrets, **env)
        made.append(pipeline)
        return pipeline.start_ingress_only(host)

    yield make
    for pipeline in made:
        pipeline.stop()
