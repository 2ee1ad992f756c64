"""The house's import order (docs/architecture.md), read from every module's source: each `import` and
`from ... import`, at module level or inside a function, must point down the layers or within its own.

    base (errors, files, writing, error_bars) ← hardware/, models/ ← schema (scenario, slo, lengths) ← sim/ ← face
    validate/ sits beside sim/: base, hardware, models and the schema, and sim/ only in validate/compare.py

No two modules import each other, directly or round a loop (the package's `__init__` aside: it re-exports the
face).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from helpers import REPO

FOLDERS = {"splitsim": "splitsim", "sim": "splitsim.sim", "hardware": "splitsim.hardware",
           "models": "splitsim.models", "validate": "splitsim.validate"}
BASE = {"splitsim.errors", "splitsim.files", "splitsim.writing", "splitsim.error_bars"}
SCHEMA = {"splitsim.scenario", "splitsim.slo", "splitsim.lengths"}
MAY_IMPORT = {
    "base": {"base"},
    "hardware": {"base", "hardware"},
    "models": {"base", "models"},
    "schema": {"base", "hardware", "models", "schema"},
    "sim": {"base", "hardware", "models", "schema", "sim"},
    "validate": {"base", "hardware", "models", "schema", "validate"},
    "face": {"base", "hardware", "models", "schema", "sim", "validate", "face"},
}
BESIDE_THE_ORDER = {("splitsim.validate.compare", "sim")}  # it prices the runner's ops with the simulator's costs


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module in SCHEMA:
        return "schema"
    for package in ("hardware", "models", "sim", "validate"):
        if module == f"splitsim.{package}" or module.startswith(f"splitsim.{package}."):
            return package
    return "face"


def imported(source: str, known: set[str]) -> Iterator[str]:
    """The splitsim modules `source` imports anywhere in it (a name imported from a package counts as its
    module where it is one)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not used in this house"
            if node.module and node.module.split(".")[0] == "splitsim":
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    yield name if name in known else node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "splitsim":
                    yield alias.name


def against_the_order(module: str, source: str, known: set[str]) -> set[tuple[str, str]]:
    wrong = set()
    for target in imported(source, known):
        if layer(target) not in MAY_IMPORT[layer(module)] and (module, layer(target)) not in BESIDE_THE_ORDER:
            wrong.add((module, target))
    return wrong


def test_every_import_points_down_the_layers():
    found = modules()
    wrong: set[tuple[str, str]] = set()
    for module, path in found.items():
        wrong |= against_the_order(module, path.read_text(), set(found))
    assert not wrong, "imports against docs/architecture.md's order: " + "; ".join(
        f"{a} imports {b}" for a, b in sorted(wrong))


def test_an_upward_import_inside_a_function_is_caught():
    known = set(modules())
    source = "def f():\n    from splitsim.sim.engine import Engine\n    return Engine\n"
    assert against_the_order("splitsim.models.spec", source, known) == {("splitsim.models.spec",
                                                                         "splitsim.sim.engine")}
    assert against_the_order("splitsim.hardware.gpu", "import splitsim.scenario\n", known) == {
        ("splitsim.hardware.gpu", "splitsim.scenario")}
    assert against_the_order("splitsim.errors", "from splitsim.sim import engine\n", known) == {
        ("splitsim.errors", "splitsim.sim.engine")}
    assert not against_the_order("splitsim.cli", "from splitsim.sim import engine\n", known)
    assert against_the_order("splitsim.validate.fit", "from splitsim.sim.costs import StageCosts\n", known)
    assert not against_the_order("splitsim.validate.compare", "from splitsim.sim.costs import StageCosts\n", known)


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    found = modules()
    graph = {m: {t for t in imported(p.read_text(), set(found)) if t in found and t not in (m, "splitsim")}
             for m, p in found.items() if m != "splitsim"}
    cycles = _cycles(graph)
    assert not cycles, f"modules importing each other: {[sorted(c) for c in cycles]}"


def test_a_loop_of_imports_is_caught():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert _cycles({"a": {"b"}, "b": set()}) == []
