"""The import graph: no cycles among the project's modules, and imports only point down.

The layers are ``console → nodes → protocol``: ``protocol`` imports neither of the others,
``nodes`` never imports ``console``. Every ``import`` statement counts, wherever it is — at
the top, inside a function, or under ``if TYPE_CHECKING:`` (a type-only cycle is still a
cycle: the two modules cannot be understood, or split, apart).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "nodes", "console")
LAYER = {"protocol": 0, "nodes": 1, "console": 2}
"""A module may import modules of its own layer or of a lower one, never of a higher one."""

Graph = Mapping[str, set[str]]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every module name an import in ``tree`` may refer to, relative imports resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)  # ``from pkg import module``


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module → the project modules it imports, from the source files under ``root``."""
    paths = {module_name(root, path): path for package in packages for path in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = imported_names(tree, module, path.name == "__init__.py")
        graph[module] = {name for name in names if name in paths and name != module}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def upward_imports(graph: Graph, layer: Mapping[str, int] = LAYER) -> list[str]:
    """Every import from a lower layer into a higher one, as ``a -> b``."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer[target.split(".")[0]] > layer[module.split(".")[0]]:
                found.append(f"{module} -> {target}")
    return found


GRAPH = import_graph(REPO)


def test_the_graph_sees_the_project() -> None:
    assert {"protocol.dispatcher", "nodes.agent", "console.engine.frontend", "console.tui.app"} <= set(GRAPH)
    assert "protocol.dispatch_events" in GRAPH["protocol.dispatcher"]
    assert "protocol.dispatcher" in GRAPH["console.engine.frontend"]  # ``from protocol import dispatcher as d``


def test_no_import_cycles() -> None:
    assert find_cycles(GRAPH) == []


def test_protocol_imports_neither_nodes_nor_console() -> None:
    assert [edge for edge in upward_imports(GRAPH) if edge.startswith("protocol")] == []


def test_nodes_never_import_console() -> None:
    assert [edge for edge in upward_imports(GRAPH) if edge.startswith("nodes")] == []


# -- the checker itself -------------------------------------------------------------------


def test_cycles_are_found_in_a_small_graph() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}}) == [
        ["a", "b", "c"], ["e", "f"]]


def test_upward_imports_are_found_in_a_small_graph() -> None:
    graph = {"protocol.x": {"protocol.y", "nodes.z"}, "nodes.z": {"console.w", "protocol.y"},
             "console.w": {"nodes.z", "protocol.y"}, "protocol.y": set()}
    assert upward_imports(graph) == ["nodes.z -> console.w", "protocol.x -> nodes.z"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("where", ["top", "function", "type_checking", "relative", "from_package"])
def test_every_kind_of_import_is_an_edge(tmp_path: Path, where: str) -> None:
    """A cycle and an upward import, hidden in each place an import can be, are both found."""
    back = {
        "top": "import protocol.a\n",
        "function": "def f():\n    from protocol.a import X\n    return X\n",
        "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from protocol.a import X\n",
        "relative": "from .a import X\n",
        "from_package": "from protocol import a\n",
    }[where]
    _write(tmp_path, {
        "protocol/__init__.py": "", "nodes/__init__.py": "", "console/__init__.py": "",
        "protocol/a.py": "from protocol.b import Y\nX = 1\n",
        "protocol/b.py": back + "Y = 2\n",
        "nodes/n.py": "def g():\n    import console.c\n",
        "console/c.py": "from nodes import n\n",
    })
    graph = import_graph(tmp_path)
    assert find_cycles(graph) == [["console.c", "nodes.n"], ["protocol.a", "protocol.b"]]
    assert upward_imports(graph) == ["nodes.n -> console.c"]
