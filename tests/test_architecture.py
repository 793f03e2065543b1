"""The package's layout: no import cycles between geoloc's modules, imports inside functions included.

A function-level import that dodges a cycle at load time is still a cycle in the design (two
modules that each need the other), so every `import` / `from ... import` of a geoloc module
counts, wherever it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from geoloc.x import y` names module geoloc.x.y when y is a module, else geoloc.x.
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            for target in targets:
                if target in modules and target != name and target != "geoloc":
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_in_the_package() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_layout_shows_the_interface_the_two_encoders_and_the_loader() -> None:
    graph = _graph()
    assert "geoloc.encoder.mllm" not in graph["geoloc.encoder.base"]
    assert "geoloc.encoder.dual" not in graph["geoloc.encoder.base"]
    assert graph["geoloc.encoder.loading"] >= {"geoloc.encoder.mllm", "geoloc.encoder.dual"}
    assert "geoloc.encoder.mllm" not in graph["geoloc.encoder.dual"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
