"""The TUI and the CLI are faces of the front-end: they use its public API and nothing behind it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FACES = sorted([*(REPO / "console" / "tui").glob("*.py"), *(REPO / "console" / "cli").glob("*.py")])
BEHIND_THE_FRONT_END = {"dispatcher", "registry"}
"""What the FrontEnd holds and the faces must not reach: its Dispatcher and its key registry."""


def reaches_behind(source: str) -> list[str]:
    """Each ``x.dispatcher`` / ``x.registry`` in ``source``, as ``line: text``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in BEHIND_THE_FRONT_END:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_faces_are_found() -> None:
    names = {path.name for path in FACES}
    assert {"app.py", "snapshot.py", "main.py", "remote.py"} <= names


@pytest.mark.parametrize("path", FACES, ids=lambda path: str(path.relative_to(REPO)))
def test_a_face_uses_only_the_front_ends_api(path: Path) -> None:
    assert reaches_behind(path.read_text(encoding="utf-8")) == []


def test_the_check_sees_what_it_must() -> None:
    assert reaches_behind("x = host.frontend.dispatcher.chunk_map(t)\n") == ["1: host.frontend.dispatcher"]
    assert reaches_behind("def f(server):\n    return server.registry.pending()\n") == ["2: server.registry"]
    assert reaches_behind("registry = KeyRegistry(state)\nregistry.add(k)\n# .dispatcher\n") == []
