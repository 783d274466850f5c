"""One direction of dependency, read from the source with `ast`.

`shared` imports nothing of the project; `ingress`, `workers` and `api` import only `shared` (and
themselves); the `hookstream` command layer may import anything, and nothing imports it. In the
product packages imports sit at the top of a module: one inside a function is how a package cycle
hides. The command layer alone imports a command's packages when that command runs: it can have no
cycle to hide (it may import anything), and `hookstream worker` must set up the metrics folder
before prometheus_client is first imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("shared", "ingress", "workers", "api", "hookstream")
PRODUCT = ("shared", "ingress", "workers", "api")
NOT_SHIPPED = frozenset({"tests", "bench"})  # may import anything; no product code imports them
ALLOWED: dict[str, frozenset[str]] = {
    "shared": frozenset({"shared"}),
    "ingress": frozenset({"shared", "ingress"}),
    "workers": frozenset({"shared", "workers"}),
    "api": frozenset({"shared", "api"}),
    "hookstream": frozenset(PROJECT),
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def project_imports(tree: ast.AST) -> list[tuple[str, ast.stmt]]:
    """(top-level package, statement) of every import of a project package in the module."""
    found: list[tuple[str, ast.stmt]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(name.split(".")[0], node) for name in names if name.split(".")[0] in PROJECT]
    return found


def nested_imports(tree: ast.Module) -> list[ast.stmt]:
    """Project imports inside a function or class body (the module's own top level is fine)."""
    top = {id(node) for node in tree.body}
    guarded = {id(child) for node in tree.body if isinstance(node, ast.If) for child in ast.walk(node)}
    return [node for _, node in project_imports(tree) if id(node) not in top and id(node) not in guarded]


@pytest.mark.parametrize("package", PROJECT)
def test_each_package_imports_only_what_its_layer_allows(package: str) -> None:
    wrong = []
    for path in modules(package):
        for target, node in project_imports(ast.parse(path.read_text(), str(path))):
            if target not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("package", PRODUCT)
def test_no_function_local_project_imports(package: str) -> None:
    nested = [f"{path.relative_to(ROOT)}:{node.lineno}"
              for path in modules(package) for node in nested_imports(ast.parse(path.read_text(), str(path)))]
    assert nested == [], "imports inside functions hide package cycles:\n" + "\n".join(nested)


def test_the_layer_rules_cover_every_package() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages - NOT_SHIPPED == set(PROJECT), "a new package needs its place in ALLOWED"


@pytest.mark.parametrize("package", PROJECT)
def test_nothing_shipped_imports_tests_or_benchmarks(package: str) -> None:
    wrong = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in modules(package)
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in NOT_SHIPPED]
    assert wrong == []
