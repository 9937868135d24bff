"""How the product's modules depend on each other: the shared vocabulary is a leaf, no package or module
imports itself round a circle (type-only and function-local imports count), and no module takes the name
of a library or a standard module, which a reader would take it for."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from collections.abc import Iterable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
ROOTS = {"iotenant": REPOSITORY / "operator" / "iotenant", "iotenant_workloads": REPOSITORY / "workloads" / "iotenant_workloads"}
VOCABULARY = "iotenant.vocabulary"


def _modules() -> dict[str, Path]:
    modules = {}
    for top, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imported(module: str) -> set[str]:
    """Our modules that ``module`` imports anywhere in its text."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


IMPORTS = {module: _imported(module) for module in MODULES}


def package_of(module: str) -> str:
    """A subpackage (``iotenant.render``) or, for a module at the top, the module itself."""
    return ".".join(module.split(".")[:2])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _graph(edges: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    return graph


def test_the_vocabulary_imports_nothing_of_ours() -> None:
    leaks = {module: sorted(IMPORTS[module]) for module in MODULES if module.startswith(VOCABULARY) and IMPORTS[module]}
    assert not leaks, f"the shared vocabulary must stay a leaf that any layer can import: {leaks}"


def test_no_package_imports_itself_round_a_circle() -> None:
    graph = _graph((package_of(source), package_of(target)) for source, targets in IMPORTS.items() for target in targets
                   if package_of(source) != package_of(target))
    assert not circles(graph), f"packages that import each other: {circles(graph)}"


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = _graph((source, target) for source, targets in IMPORTS.items() for target in targets)
    assert not circles(graph), f"modules that import each other (type-only imports count): {circles(graph)}"


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles(_graph([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])) == [["a", "b", "c"]]
    assert circles(_graph([("a", "b"), ("b", "c")])) == []


def test_no_module_is_named_after_a_library() -> None:
    libraries = (set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions())) - {*ROOTS, "iotenant_testbed"}
    misnamed = sorted(module for module in MODULES if module.rsplit(".", 1)[-1] in libraries)
    assert not misnamed, f"named like a library or standard module (name each for what it holds): {misnamed}"
