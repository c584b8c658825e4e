"""Process lifetime with real processes: nobody outlives its parent, signals stop cleanly.

A SIGKILLed node takes its workers with it; a SIGKILLed front-end takes its local
nodes; ``run``, ``serve`` and ``node`` stop on SIGINT, SIGTERM and SIGHUP with one
line, no traceback, nothing left running and no temporary folder left on disk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.engine.host import Host
from console.engine.keys import initialize
from console.engine.statedir import StateDir
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-c", "from console.cli.main import main; main()"]


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    parents = {int(p.name): _parent_of(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    found, frontier = set(), {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier and child not in found}
        found |= children
        frontier = children
    return {p for p in found if _alive(p)}


def wait_gone(pids: set[int], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"{what}: {len(left)} still alive after {timeout}s: {sorted(left)}"


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def _kill_if_running(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def _signal_and_wait(proc: subprocess.Popen, sig: signal.Signals) -> tuple[set[int], str]:
    """Send ``sig``; return the processes that were below ``proc`` and its stderr once it exited."""
    below = descendants(proc.pid)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return below, err


def _a_new_front_end_starts(state: StateDir) -> None:
    """A front-end started now takes the folder (its lock is free), then stops."""
    again = _serve(state)
    try:
        wait_for(lambda: (_endpoint(state) or {}).get("pid") == again.pid, 30, "a new front-end to start")
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)


def _workers(node_pid: int) -> set[int]:
    """The node's worker processes: forked (the node's own command line) or spawned, not a resource tracker."""
    return {p for p in descendants(node_pid) if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()}


def _serve(state: StateDir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "serve", "--state-dir", str(state.root), "--listen", "127.0.0.1:0", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _endpoint(state: StateDir) -> dict | None:
    try:
        return json.loads(state.endpoint.read_text())
    except (OSError, ValueError):
        return None


async def test_a_sigkilled_node_takes_its_workers_with_it(host: Host, nodes) -> None:
    node = nodes("doomed", slots=2)
    await wait_until(lambda: any(r.name == "doomed" for r in host.frontend.node_rows()), what="the node to join")
    await wait_until(lambda: len(_workers(node.pid)) == 2, what="its two workers to start")
    workers = _workers(node.pid)
    node.send_signal(signal.SIGKILL)
    node.wait()
    wait_gone(workers, 5, "workers of a SIGKILLed node")
    wait_gone(descendants(node.pid), 5, "the rest of the SIGKILLed node (its resource tracker)")


def test_a_sigkilled_front_end_takes_its_local_nodes_with_it(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    server = _serve(state, "--local-nodes", "2")
    try:
        wait_for(lambda: _endpoint(state) is not None, 30, "the front-end to listen")
        def local_nodes() -> set[int]:
            return {p for p in descendants(server.pid) if _parent_of(p) == server.pid
                    and b"nodes" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")}

        wait_for(lambda: len(nodes := local_nodes()) == 2 and all(_workers(node) for node in nodes), 30,
                 "two local nodes with their workers")
        below = descendants(server.pid)
        server.send_signal(signal.SIGKILL)
        server.wait()
        wait_gone(below, 15, "local nodes (and their workers) of a SIGKILLed front-end")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()
        server.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_run_stopped_by_a_signal_mid_task_cleans_up(tmp_path: Path, sig: signal.Signals) -> None:
    task = {"name": "long", "operation": "invert", "chunk_size": 10, "return": "norms",
            "inputs": {"a": {"generate": {"count": 1_000_000, "shape": [64, 64], "seed": 5}}}}
    (tmp_path / "task.json").write_text(json.dumps(task))
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen([*CLI, "run", str(tmp_path / "task.json"), "--local-nodes", "2"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(temp)})
    try:
        def computing() -> bool:
            return any("connected to" in log.read_text() for log in temp.glob("chainconsole-run-*/state/logs/*.log"))

        wait_for(computing, 60, "a local node to connect")
        below, err = _signal_and_wait(proc, sig)
    finally:
        _kill_if_running(proc)
    assert proc.returncode == 128 + sig
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"chainconsole: stopped by {sig.name} before the task finished"]
    wait_gone(below, 15, "processes started by run")
    assert list(temp.iterdir()) == [], "run left its temporary state folder behind"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_serve_stops_on_a_signal_with_one_line(tmp_path: Path, sig: signal.Signals) -> None:
    state = StateDir(tmp_path / "state")
    server = _serve(state, "--local-nodes", "1")
    try:
        wait_for(lambda: _endpoint(state) is not None and len(descendants(server.pid)) >= 2, 30,
                 "the front-end and its local node with its worker")
        below, err = _signal_and_wait(server, sig)
    finally:
        _kill_if_running(server)
    assert server.returncode == 0
    assert "Traceback" not in err
    # One line says it stops; what follows are event log lines (the local node leaving …).
    lines = err.strip().splitlines()
    after = lines[lines.index("shutting down") + 1:]
    assert all(re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z \w+ ", line) for line in after), after
    wait_gone(below, 15, "local nodes of a stopped front-end")
    assert not state.endpoint.exists()


async def test_ctrl_c_on_a_foreground_node_stops_it_without_a_traceback(host: Host, tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole foreground process group: the node and its workers."""
    address = "%s:%d" % host.server.address
    node = subprocess.Popen([sys.executable, "-m", "nodes", "--connect", address, "--name", "fg", "--slots", "2",
                             "--key", str(host.state.node_key), "--host-key", str(host.state.host_key_pub),
                             "--state-dir", str(tmp_path / "fg")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        await wait_until(lambda: any(r.name == "fg" for r in host.frontend.node_rows()), what="the node to join")
        await wait_until(lambda: len(_workers(node.pid)) == 2, what="its two workers to start")
        below = descendants(node.pid)
        os.killpg(node.pid, signal.SIGINT)
        _, err = node.communicate(timeout=30)
    finally:
        _kill_if_running(node)
    assert node.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    wait_gone(below, 10, "the workers of a stopped node")


def test_a_second_front_end_on_one_state_folder_exits_3_naming_the_first(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    first = _serve(state)
    try:
        wait_for(lambda: _endpoint(state) is not None, 30, "the first front-end to listen")
        endpoint = _endpoint(state)
        second = subprocess.run([*CLI, "serve", "--state-dir", str(state.root), "--listen", "127.0.0.1:0"],
                                cwd=REPO, capture_output=True, text=True, timeout=30)
        assert second.returncode == 3
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert str(state.root) in lines[0] and f"pid {first.pid}" in lines[0]
        assert f"{endpoint['host']}:{endpoint['port']}" in lines[0]
        assert _endpoint(state) == endpoint, "the second front-end touched the first one's endpoint.json"
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
        # The lock goes with the process that held it: the folder is free again.
        _a_new_front_end_starts(state)
    finally:
        _kill_if_running(first)


async def test_the_console_on_a_folder_in_use_exits_3_and_leaves_the_endpoint(host: Host) -> None:
    from console.tui.app import ConsoleApp
    from console.ssh.server import ServerSettings

    before = _endpoint(host.state)
    app = ConsoleApp(Host(host.state, ServerSettings(port=0)))
    async with app.run_test(size=(120, 40)):
        pass
    assert app.return_code == 3
    assert _endpoint(host.state) == before


def test_a_sigkilled_front_end_leaves_the_folder_free(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    initialize(state)
    first = _serve(state)
    wait_for(lambda: _endpoint(state) is not None, 30, "the front-end to listen")
    first.send_signal(signal.SIGKILL)
    first.communicate()
    _a_new_front_end_starts(state)
