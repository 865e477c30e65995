"""The broker's modules import each other without a cycle, type-only and function-level
imports included: each definition lives where everything that needs it can import it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "services/broker/broker"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """Every broker module an import anywhere in the tree names (from x import y may name a
    module y of package x)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & modules


def with_parents(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


Graph = dict[str, set[str]]


def import_graph() -> Graph:
    """module -> the broker modules it imports (itself and its own packages left out)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: Graph = {name: set() for name in files}
    for name, path in files.items():
        for target in imported(ast.parse(path.read_text()), set(files)):
            graph[name] |= {
                needed
                for needed in with_parents(target) & set(files)
                if needed != name and not name.startswith(f"{needed}.")
            }
    return graph


def reachable(graph: Graph, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle through each module that is on one (depth-first search)."""
    found = []
    for start in sorted(graph):
        stack = [(start, [start])]
        visited: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    found.append([*path, start])
                elif nxt not in visited:
                    visited.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return found


def test_the_graph_sees_the_broker():
    graph = import_graph()
    assert "broker.model" in graph["broker.core"]
    assert "broker.settings" in graph["broker.storage.sqlite"]  # a type-only import
    assert "broker.storage" in graph["broker.core"]  # importing storage.base runs it first
    assert len(graph) > 20


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})[0] == ["a", "b", "c", "a"]


def test_the_broker_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_model_imports_nothing_of_the_broker():
    assert import_graph()["broker.model"] <= {"broker"}


def test_only_the_composition_root_knows_the_storage_backends():
    backends = {
        "broker.storage.sqlite",
        "broker.storage.memory",
        "broker.storage.valkey",
        "broker.storage.backends",
    }
    graph = import_graph()
    knowing = {module for module in graph if reachable(graph, module) & backends}
    assert knowing == {"broker.wiring", "broker.app", "broker.storage.backends"}
