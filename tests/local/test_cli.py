"""The command line as documentation: every command's --help describes every option and names the
variables it reads (the parser is walked, so a new option without help fails here); `replay` with
no range asks for --all, as requeue and purge do."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hookstream.cli import main, parser
from tests.ops.test_replay_args import run_replay


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


def test_the_walk_finds_every_command() -> None:
    names = {path[0] for path, _ in commands(parser())}
    assert {"ingress", "migrate", "dispatch", "worker", "replay", "status", "dead-letters", "stats", "api", "run",
            "send-test"} <= names
    assert ("dead-letters", "requeue") in {path for path, _ in commands(parser())}


@pytest.mark.parametrize("path", [path for path, _ in commands(parser())], ids=" ".join)
def test_every_option_is_described(path: tuple[str, ...]) -> None:
    sub = dict(commands(parser()))[path]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help and len(action.help) > 8, f"hookstream {' '.join(path)}: {action.dest} has no help"


@pytest.mark.parametrize("name", sorted({path[0] for path, _ in commands(parser())}))
def test_every_command_names_the_variables_it_reads(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Reads HOOKSTREAM_" in text or "Reads everything" in text
    assert "HOOKSTREAM_LOG_LEVEL" in text and "HOOKSTREAM_<NAME>_FILE" in text


def test_replay_without_a_range_asks_for_all(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert run_replay(monkeypatch) == (2, None)
    assert "--all" in capsys.readouterr().err
    code, selection = run_replay(monkeypatch, "--all")
    assert code == 0 and selection is not None and selection.id_range() == ("-", "+")


def test_replay_takes_the_shared_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    for since in ("yesterday", "today", "90m", "2h", "7d", "1w", "2025-06-01T00:00:00Z"):
        code, selection = run_replay(monkeypatch, "--since", since)
        assert code == 0 and selection is not None and selection.since is not None, since


def test_the_command_line_does_not_import_prometheus_client_before_the_worker_sets_it_up() -> None:
    """`hookstream worker` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported: a
    command module importing it at the top would leave the workers' /metrics empty."""
    done = subprocess.run([sys.executable, "-c", "import sys, hookstream.cli; print('prometheus_client' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
