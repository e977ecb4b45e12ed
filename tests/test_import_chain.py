"""The entry points are leaves over a shallow shared core: the longest chain of module-level imports
between project modules stays short, and ``study`` never reaches ``pipelines.main``.

``python -m tests.test_import_chain`` prints the longest chain.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines",)  # the project modules whose layering this checks; models/ and tracking/ lie below
MAX_CHAIN = 5  # modules in the longest chain, both ends included


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at module level (not inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def longest_chain_from(start: str, graph: dict[str, set[str]] | None = None) -> list[str]:
    """The longest import path from ``start`` (a cycle is cut where it closes)."""
    graph = graph or import_graph()

    @cache
    def from_node(node: str, stack: frozenset[str]) -> tuple[str, ...]:
        best: tuple[str, ...] = ()
        for dep in sorted(graph[node]):
            if dep in stack:
                continue
            chain = from_node(dep, stack | {dep})
            if len(chain) > len(best):
                best = chain
        return (node, *best)

    return list(from_node(start, frozenset({start})))


def longest_chain(graph: dict[str, set[str]] | None = None) -> list[str]:
    """The longest import path in the project."""
    graph = graph or import_graph()
    return max((longest_chain_from(n, graph) for n in sorted(graph)), key=len)


def reaches(graph: dict[str, set[str]], start: str, target: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == target:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


ENTRY_POINTS = (
    "pipelines.prep",
    "pipelines.train",
    "pipelines.evaluate",
    "pipelines.export_onnx",
    "pipelines.main",
    "pipelines.study",
    "pipelines.sweep",
    "pipelines.reproduce.run",
    "pipelines.compare",
    "pipelines.segment",
    "pipelines.analysis.landscape_run",
    "pipelines.analysis.gradient_flow",
    "pipelines.analysis.feature_maps",
    "pipelines.analysis.invariance",
    "pipelines.classify",
    "pipelines.demo",
)


def test_import_chain_is_short():
    chain = longest_chain()
    assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


def test_entry_points_are_leaves():
    """No entry point imports another at module level: what several share lives below them."""
    graph = import_graph()
    for name in ENTRY_POINTS:
        others = [e for e in ENTRY_POINTS if e != name and reaches(graph, name, e)]
        assert not others, f"{name} imports {others}"


def test_training_entry_points_are_short():
    """The modules that train stay within the target: entry point -> runner -> trained -> data."""
    for name in ("pipelines.train", "pipelines.segment", "pipelines.study", "pipelines.sweep", "pipelines.main"):
        chain = longest_chain_from(name)
        assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


def test_study_does_not_import_main():
    assert not reaches(import_graph(), "pipelines.study", "pipelines.main")


def test_study_and_sweep_do_not_import_each_other():
    graph = import_graph()
    assert not (
        reaches(graph, "pipelines.study", "pipelines.sweep") and reaches(graph, "pipelines.sweep", "pipelines.study")
    )


if __name__ == "__main__":
    chain = longest_chain()
    print(f"{len(chain)} modules: {' -> '.join(chain)}")
