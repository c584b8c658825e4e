"""protocol/ stays pure: no sockets, no asyncio, no asyncssh, no Textual, directly or not."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "protocol"
MODULES = sorted(f"protocol.{path.stem}" for path in PROTOCOL_DIR.glob("*.py") if path.stem != "__init__")
# Never imported by protocol/ itself (checked in the source).
FORBIDDEN = ("asyncio", "asyncssh", "textual", "socket", "selectors", "ssl", "subprocess", "console", "nodes")
# Never loaded at all, even indirectly. socket and selectors cannot be on this list:
# pydantic loads the standard library's email.utils, which imports socket.
NEVER_LOADED = ("asyncio", "asyncssh", "textual", "console", "nodes")


def test_protocol_modules_are_found() -> None:
    assert {"protocol.errors", "protocol.frames", "protocol.messages"} <= set(MODULES)


def test_importing_protocol_pulls_in_no_io() -> None:
    # A fresh interpreter: pytest and its plugins have long since imported asyncio here.
    script = (
        "import importlib, json, sys\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {NEVER_LOADED!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROTOCOL_DIR.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("path", sorted(PROTOCOL_DIR.glob("*.py")), ids=lambda path: path.name)
def test_no_io_imports_in_source(path: Path) -> None:
    """A static check as well, so a lazy import inside a function cannot slip through."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint(FORBIDDEN)
