"""`hookstream replay` reads its times and stream ids with the shared parsers, and refuses a bad one
before it opens anything."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hookstream.cli import parser
from shared.errors import ParseError
from shared.settings import Settings
from shared.streamids import MAX_PART
from workers import replay as replay_module
from workers.context import WorkerContext
from workers.replay import Selection

SINCE = datetime(2025, 6, 1, tzinfo=UTC)
MS = int(SINCE.timestamp() * 1000)


def test_the_time_range_narrows_the_id_range() -> None:
    assert Selection(since=SINCE, until=SINCE + timedelta(hours=1)).id_range() == (
        f"{MS}-0", f"{MS + 3_600_000 - 1}-{MAX_PART}")
    assert Selection(since=SINCE, from_id=f"{MS + 5}-0").id_range() == (f"{MS + 5}-0", "+")
    assert Selection(since=SINCE, from_id="99-0").id_range() == (f"{MS}-0", "+")  # numbers, not text, compared
    assert Selection(until=SINCE, to_id="1-0").id_range() == ("-", "1-0")


@pytest.mark.parametrize("field", ["from_id", "to_id"])
def test_a_bad_stream_id_is_refused(field: str) -> None:
    with pytest.raises(ParseError, match=f"{field}: .* is not a stream id"):
        Selection(**{field: "12x"})


def run_replay(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, Selection | None]:
    """`hookstream replay …` with the replay itself stubbed out: (exit code, the selection it got)."""
    got: list[Selection] = []

    class Context:
        def close(self) -> None:
            pass

    def fake_replay(ctx: Any, selection: Selection, **kwargs: Any) -> dict[str, Any]:
        got.append(selection)
        return {"entries": 0, "failed_jobs": 0}

    monkeypatch.setattr(WorkerContext, "open", staticmethod(lambda settings: Context()))
    monkeypatch.setattr(replay_module, "replay", fake_replay)
    args = parser().parse_args(["replay", *argv])
    code = args.handler(Settings(), args)
    return code, (got[0] if got else None)


def test_replay_takes_every_form_of_time(monkeypatch: pytest.MonkeyPatch) -> None:
    before = datetime.now(UTC)
    code, selection = run_replay(monkeypatch, "--since", "1w", "--until", "yesterday", "--json")
    assert code == 0 and selection is not None and selection.since is not None and selection.until is not None
    assert before - timedelta(weeks=1, seconds=5) < selection.since <= datetime.now(UTC) - timedelta(weeks=1)
    assert selection.until == datetime.combine(selection.until.date(), datetime.min.time(), UTC)
    code, selection = run_replay(monkeypatch, "--since", "2025-06-01T02:00:00+02:00", "--json")
    assert code == 0 and selection is not None and selection.since == SINCE


@pytest.mark.parametrize("argv", [("--since", "soon"), ("--until", "2h ago"), ("--from-id", "x")])
def test_replay_refuses_before_opening_anything(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                argv: tuple[str, ...]) -> None:
    assert run_replay(monkeypatch, *argv) == (2, None)
    assert capsys.readouterr().err.startswith("hookstream replay: ")
