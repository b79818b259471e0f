"""The package's layout: no import cycle between its modules (issue 29, item 3).

Only module-level imports count: an import inside a function runs when it is called,
after every module has loaded (the pattern the posteriors use to reach modules that build
on them, e.g. ``jaxal.posteriors.laplace`` -> ``jaxal.posteriors.marglik``)."""

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
    assert {"jaxal.loop.round", "jaxal.posteriors.laplace", "jaxal.posteriors.marglik",
            "jaxal.cli.run"} <= set(graph)
    assert "jaxal.train" in graph["jaxal.posteriors.marglik"], "the walk sees module-level imports"
    assert cycles(graph) == []


def test_the_layout_reads_as_the_pipeline():
    """Posteriors, the loop, data and the applications are subpackages split by job."""
    def modules(package):
        return {p.stem for p in (PACKAGE / package).glob("*.py")} - {"__init__", "__main__"}

    assert {"plugin", "laplace", "mc_dropout", "ensemble"} <= modules("posteriors")
    assert modules("loop") == {"state", "round", "learner", "validation", "metrics"}
    assert {"tfds", "splits", "toy", "image_folder"} <= modules("data")
    assert {"experiment", "comparison", "labelling", "plots"} <= modules("apps")


def test_top_level_modules_named_as_a_command_are_entry_shims():
    """``python -m jaxal.run`` (and compare, label, plot) stay documented commands, so a
    top-level module may share a command line's name only as a shim: a docstring and the
    ``__main__`` block, no library code beside the CLI module of the same name."""
    commands = {p.stem for p in (PACKAGE / "cli").glob("*.py")} - {"__init__", "common"}
    shims = {p.stem for p in PACKAGE.glob("*.py")} & commands
    assert shims == {"run", "compare", "label", "plot"}
    for name in shims:
        body = ast.parse((PACKAGE / f"{name}.py").read_text()).body
        assert isinstance(body[0], ast.Expr) and isinstance(body[1], ast.If), name
        assert len(body) == 2 and ast.unparse(body[1].test) == "__name__ == '__main__'", name
    assert (PACKAGE / "data" / "__main__.py").exists(), "python -m jaxal.data"


def test_the_walk_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
