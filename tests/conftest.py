"""Shared fixtures: a real front-end on 127.0.0.1 port 0 with keys in a temporary folder."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from console.engine.host import Host, start_local_node
from console.engine.keys import initialize
from console.ssh.server import ServerSettings
from console.engine.statedir import StateDir

REPO = Path(__file__).resolve().parent.parent

# Every process the suite starts inherits this mark in its environment — node processes,
# their spawn workers and resource trackers, serve and CLI subprocesses — and keeps it
# when re-parented to PID 1, so the session check below finds orphans too.
RUN_MARK = f"CHAINCONSOLE_TEST_RUN={uuid.uuid4().hex}".encode()
os.environ[RUN_MARK.decode().partition("=")[0]] = RUN_MARK.decode().partition("=")[2]
LEAK_GRACE_S = 15.0


def processes_of_this_run() -> dict[int, str]:
    """Live processes (other than pytest itself) started by this test run: pid → command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if RUN_MARK not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie is dead; its parent reaps it
            found[int(entry.name)] = cmdline
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite():
    """Fail the run if any process it started is still alive at its end (killing them)."""
    yield
    if not Path("/proc/self/environ").exists():
        return
    deadline = time.monotonic() + LEAK_GRACE_S
    while (left := processes_of_this_run()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        pytest.fail(f"{len(left)} processes started by the tests outlived them: "
                    + "; ".join(f"{pid} {cmd[:120]}" for pid, cmd in sorted(left.items())), pytrace=False)


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
