"""The suite carries its own fixtures: nothing under tests/ or bench/ reads a path outside the repository.

A clone of the project with nothing beside it must pass. The providers' examples are copies in
tests/fixtures/, each listed with its source in tests/fixtures/README.md.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SCANNED = (ROOT / "tests", ROOT / "bench")

# Names of the design folder kept beside the repository during development, and its override.
# Built from parts so this file does not match itself.
FORBIDDEN = ("HOOKSTREAM_" + "SHARED_DIR", "../" + "shared", "provider" + "-examples")
PARENTS_INDEX = re.compile(r"\.parents\[(\d+)\]")
PARENT_CHAIN = re.compile(r"(?:\.parent\b)+")
FIXTURE_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def _scanned_files() -> list[Path]:
    """Text files under tests/ and bench/ the suite or the benchmarks can run or read.

    Skipped: tests/fixtures (the copies themselves), caches, binary files, and Markdown prose
    (documentation, read by no test).
    """
    files = []
    for top in SCANNED:
        for path in sorted(top.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".md":
                continue
            if path.is_relative_to(FIXTURES):
                continue
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files


def _escapes(path: Path, text: str) -> list[str]:
    """`parents[k]` or a `.parent` chain that leaves the repository when taken from this file."""
    depth = len(path.relative_to(ROOT).parts)  # tests/providers/util.py: 3, parents[2] is the root
    found = [m.group(0) for m in PARENTS_INDEX.finditer(text) if int(m.group(1)) >= depth]
    found += [m.group(0) for m in PARENT_CHAIN.finditer(text) if m.group(0).count(".parent") > depth]
    return found


def test_nothing_refers_to_a_folder_outside_the_repository() -> None:
    offenders = []
    for path in _scanned_files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        offenders += [f"{rel}: {name}" for name in FORBIDDEN if name in text]
        if path.suffix == ".py":
            offenders += [f"{rel}: {expr}" for expr in _escapes(path, text)]
    assert not offenders, "tests must read their fixtures from tests/fixtures/:\n" + "\n".join(offenders)


def _fixture_files() -> set[str]:
    return {
        p.relative_to(FIXTURES).as_posix()
        for p in FIXTURES.rglob("*")
        if p.is_file() and p.name != "README.md" and "__pycache__" not in p.parts
    }


def _listed() -> set[str]:
    return set(FIXTURE_ROW.findall((FIXTURES / "README.md").read_text(encoding="utf-8")))


def test_every_fixture_is_listed_with_its_source() -> None:
    files, listed = _fixture_files(), _listed()
    assert files, "tests/fixtures/ holds no fixture"
    assert not files - listed, f"not listed in tests/fixtures/README.md: {sorted(files - listed)}"
    assert not listed - files, f"listed in tests/fixtures/README.md but missing: {sorted(listed - files)}"


def test_every_fixture_is_used_by_a_test() -> None:
    code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("*.py")
                     if "__pycache__" not in p.parts)
    unused = sorted(name for name in _fixture_files() if f'"{name}"' not in code)
    assert not unused, f"fixtures no test reads (remove them and their rows): {unused}"
