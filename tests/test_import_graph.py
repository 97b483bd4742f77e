"""The package import graph, read from the source (every import, at module level or inside a function),
has no cycles, and the layering the architecture documents holds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "vlatrim"
# Lowest first: a package may import only packages to its left (docs/architecture.md).
LAYERS = ["errors", "registry", "utils", "data", "sim", "models", "quantize", "prune", "families", "analyze", "train", "bench",
          "study", "cli"]


def _package(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".py") if len(rel) > 1 or rel[0] in ("errors.py", "registry.py") else "(top)"


def package_graph() -> dict[str, set[str]]:
    """Package -> the vlatrim packages its modules import (relative imports resolved)."""
    graph: dict[str, set[str]] = {}
    for f in SRC.rglob("*.py"):
        pkg = _package(f)
        here = f.relative_to(SRC.parent).with_suffix("").parts  # ("vlatrim", "prune", "api")
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = here[:len(here) - node.level]
                    names = [".".join(base + ((node.module,) if node.module else ()))]
                else:
                    names = [node.module or ""]
            for name in names:
                parts = name.split(".")
                if parts[0] == "vlatrim" and len(parts) > 1 and parts[1] != pkg:
                    graph.setdefault(pkg, set()).add(parts[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle_between_packages():
    assert find_cycle(package_graph()) is None


@pytest.mark.parametrize("pkg", [p for p in LAYERS if p not in ("errors", "registry")])
def test_each_package_imports_only_lower_layers(pkg):
    allowed = set(LAYERS[:LAYERS.index(pkg)])
    assert package_graph().get(pkg, set()) - allowed == set()


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
