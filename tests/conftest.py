"""Shared fixtures: a real front-end on 127.0.0.1 port 0 with keys in a temporary folder."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from console.engine.host import Host, start_local_node
from console.engine.keys import initialize
from console.ssh.server import ServerSettings
from console.engine.statedir import StateDir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    initialize(state)
    return state


@pytest.fixture
async def host(state: StateDir) -> AsyncIterator[Host]:
    """A running front-end with no nodes; nodes are started by the test."""
    hosting = Host(state, ServerSettings(port=0))
    await hosting.start()
    try:
        yield hosting
    finally:
        await hosting.stop()


@pytest.fixture
def nodes(host: Host) -> Callable[..., subprocess.Popen]:
    """Start real node processes against ``host``; they are stopped at teardown by the Host."""

    def start(name: str, slots: int = 1) -> subprocess.Popen:
        assert host.server is not None
        proc = start_local_node(host.state, host.server.address, name, slots)
        host.nodes.append(proc)
        return proc

    return start


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def cli(*args: str, input: bytes | None = None, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``chainconsole`` CLI as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", "from console.cli.main import main; main()", *args],
        input=input, capture_output=True, timeout=timeout, cwd=REPO, text=input is None,
        env={**os.environ, **(env or {})},
    )
