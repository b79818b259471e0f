"""The package's layout: no import cycle between its modules (issue 29, item 3).

Only module-level imports count: an import inside a function runs when it is called,
after every module has loaded (the pattern the posteriors use to reach modules that build
on them, e.g. ``jaxal.posterior`` -> ``jaxal.marglik``)."""

from __future__ import annotations

import ast
from pathlib import Path

import jaxal

PACKAGE = Path(jaxal.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """{module: the jaxal modules its top level imports}, from the source (nothing runs)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets (empty: the imports form a DAG)."""
    state, stack, found = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                found.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_modules_import_one_another_without_a_cycle():
    graph = module_imports()
    assert {"jaxal.loop", "jaxal.posterior", "jaxal.marglik", "jaxal.cli.run"} <= set(graph)
    assert "jaxal.train" in graph["jaxal.marglik"], "the walk sees module-level imports"
    assert cycles(graph) == []


def test_the_walk_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
