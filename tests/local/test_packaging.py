"""Packaging: `make install` (and so `make run`) installs the runtime dependencies only, the tests and
benchmarks add their extras; the licence and the changelog name what pyproject.toml says."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TEST_TOOLS = ("pytest", "ruff", "mypy", "playwright", "hypothesis", "schemathesis", "fakeredis", "matplotlib")


def make_plan(target: str, tmp_path: Path) -> str:
    """What `make TARGET` would run on a machine with no virtualenv yet (make -n: nothing is run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", f"VENV={tmp_path / 'venv'}", target], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return done.stdout


def test_the_runtime_dependencies_hold_no_test_tool() -> None:
    names = {re.split(r"[=<>\[ ]", dep, maxsplit=1)[0].lower() for dep in PROJECT["dependencies"]}
    assert not names & set(TEST_TOOLS)
    assert all("==" in dep for extra in PROJECT["optional-dependencies"].values() for dep in extra)  # pinned


def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    plan = make_plan("run", tmp_path)
    assert "pip install -q -e .\n" in plan and "[test]" not in plan and "[bench]" not in plan
    assert "hookstream.embedded found" in plan  # and the servers only when missing


def test_tests_and_benchmarks_add_their_extras(tmp_path: Path) -> None:
    assert "-e '.[test]'" in make_plan("test", tmp_path)
    assert "-e '.[test]'" in make_plan("check", tmp_path)
    assert "-e '.[bench]'" in make_plan("bench", tmp_path)
    assert "make install test-deps" in (ROOT / ".ci" / "run").read_text()  # CI's first pytest needs them too


def test_licence_and_changelog() -> None:
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence  # the full text, not a pointer to it
    assert f"## {PROJECT['version']}" in (ROOT / "CHANGELOG.md").read_text()
