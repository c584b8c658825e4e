"""A cold ``chainconsole run``: local nodes start before the front-end has loaded, a node
forks its first workers, and when the command exits everything it started has exited
with it and the ``.npz`` is whole."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from console.engine import host as host_module
from console.engine.host import Host, listening_socket
from nodes.ssh.server import ServerSettings
from tests.conftest import REPO, cli, wait_until

pytestmark = pytest.mark.timeout(120)

TASK = {"name": "cold", "operation": "det", "chunk_size": 10, "return": "full",
        "inputs": {"a": {"generate": {"count": 20, "shape": [8, 8], "seed": 2024}}}}


def marked(mark: str) -> dict[int, str]:
    """Live processes (not zombies) whose environment carries ``mark``: pid → command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark.encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_run_exits_after_everything_it_started_and_writes_every_item(tmp_path: Path) -> None:
    (tmp_path / "task.json").write_text(json.dumps(TASK))
    mark = f"CHAINCONSOLE_COLD_TEST={uuid.uuid4().hex}"
    done = cli("run", str(tmp_path / "task.json"), "--local-nodes", "2", "-o", str(tmp_path / "out.npz"), "--json",
               env=dict([mark.split("=", 1)]))
    # At the moment run has exited, its nodes and their workers have exited too: they are
    # reaped, not left to notice that their parent is gone.
    left = marked(mark)
    assert done.returncode == 0, done.stderr
    assert left == {}, f"still running after run exited: {left}"
    summary = json.loads(done.stdout)
    assert summary["state"] == "done" and summary["ok_items"] == 20
    with np.load(tmp_path / "out.npz") as out:
        assert out["ok"].all() and out["result"].shape == (20,)
        expected = [np.linalg.det(np.random.default_rng([2024, i]).standard_normal((8, 8))) for i in range(20)]
        np.testing.assert_allclose(out["result"], expected, rtol=1e-10)


def test_an_address_is_bound_at_once_and_a_name_is_left_to_asyncssh() -> None:
    sock = listening_socket("127.0.0.1", 0)
    assert sock is not None
    try:
        client = socket.create_connection(sock.getsockname()[:2], timeout=5)  # queued: nothing accepts yet
        client.close()
    finally:
        sock.close()
    assert listening_socket("localhost", 0) is None


async def test_local_nodes_are_started_before_the_front_end_is_created(state, monkeypatch) -> None:
    seen: list[bool] = []
    real = host_module.start_local_node

    def start(state_dir, address, name, slots=1, extra=()):
        seen.append(hosting.frontend is None)
        return real(state_dir, address, name, slots, extra)

    monkeypatch.setattr(host_module, "start_local_node", start)
    hosting = Host(state, ServerSettings(port=0), local_nodes=2)
    await hosting.start()
    try:
        assert seen == [True, True]
        assert hosting.address == hosting.server.address
        await wait_until(lambda: len(hosting.frontend.node_rows()) == 2, what="both local nodes to join")
    finally:
        await hosting.stop()


async def test_a_front_end_on_a_host_name_still_starts_its_local_nodes(state) -> None:
    hosting = Host(state, ServerSettings(host="localhost", port=0), local_nodes=1)
    await hosting.start()
    try:
        await wait_until(lambda: len(hosting.frontend.node_rows()) == 1, what="the local node to join")
    finally:
        await hosting.stop()


def test_a_port_in_use_is_one_error_before_any_node_starts(state) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        done = cli("serve", "--state-dir", str(state.root), "--listen", f"127.0.0.1:{port}", "--local-nodes", "1")
    finally:
        taken.close()
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"chainconsole: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not (state.root / "logs").exists(), "a local node was started"


def test_the_front_end_stops_on_the_signals_that_stop_a_node() -> None:
    from nodes.agent import STOP_SIGNALS

    assert host_module.STOP_SIGNALS == STOP_SIGNALS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_first_workers_are_forked_with_the_blas_threads_asked_for_and_compute_right() -> None:
    out = python(
        "import asyncio, os\n"
        "from nodes.pool import ChunkJob, WorkerPool\n"
        "pool = WorkerPool(1, blas_threads=2)\n"
        "pool.start_workers()\n"
        "spec = {'count': 20, 'shape': [8, 8], 'seed': 2024, 'distribution': 'normal', 'dtype': 'float64'}\n"
        "from threadpoolctl import threadpool_info\n"
        "threads = [i['num_threads'] for i in pool._current().submit(threadpool_info).result(60) if i['user_api'] == 'blas']\n"
        "[done] = pool.submit([ChunkJob('det', 0, 20, 'full', {'a': spec}, {})]).result(60)\n"
        "import numpy as np\n"
        "expected = [np.linalg.det(np.random.default_rng([2024, i]).standard_normal((8, 8))) for i in range(20)]\n"
        "ok = bool(done.ok.all()) and np.allclose(done.result, expected, rtol=1e-10)\n"
        "pool._current().shutdown(wait=True)\n"
        "mine = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(pool.start_method, threads, ok, mine)\n")
    method, rest = out.split(" ", 1)
    assert method == "fork"
    assert rest == "[2] True [1]"  # the worker has the 2 BLAS threads asked for; the node kept one


async def test_a_pool_started_from_a_running_loop_spawns_its_workers() -> None:
    from nodes.pool import WorkerPool, fork_is_safe

    assert not fork_is_safe()
    pool = WorkerPool(1)
    try:
        await pool.warm_up()
        assert pool.start_method == "spawn"
    finally:
        pool.shutdown()


def test_blas_starts_with_the_threads_asked_for_before_numpy_loads() -> None:
    out = python("import os\nfrom nodes.startup import start_blas_with\n"
                 "first = start_blas_with(1)\nimport numpy\nfrom threadpoolctl import threadpool_info\n"
                 "print(first, start_blas_with(1), [i['num_threads'] for i in threadpool_info()],"
                 " len(os.listdir('/proc/self/task')))")
    assert out == "True False [1] 1"


def test_start_up_pauses_collection_and_then_leaves_what_it_made_alone() -> None:
    out = python("import gc\nfrom nodes.startup import loaded, loading\n"
                 "loading()\npaused = not gc.isenabled()\nimport json, decimal\nloaded()\n"
                 "print(paused, gc.isenabled(), gc.get_freeze_count() > 0)")
    assert out == "True True True"


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_node_stopped_while_it_starts_stops_its_workers_first(state, tmp_path: Path) -> None:
    # Nothing listens here: the node starts, forks its worker, and is stopped before it works.
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    mark = f"CHAINCONSOLE_COLD_TEST={uuid.uuid4().hex}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}
    node = subprocess.Popen([sys.executable, "-m", "nodes", "--connect", f"127.0.0.1:{port}", "--name", "early",
                             "--slots", "1", "--key", str(state.node_key), "--state-dir", str(tmp_path / "node")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(marked(mark)) < 2:  # the node and its worker
            assert time.monotonic() < deadline, "the node's worker never started"
            time.sleep(0.01)
        node.send_signal(signal.SIGTERM)
        _, err = node.communicate(timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate()
    assert marked(mark) == {}, "the worker outlived its node"
    assert node.returncode in (0, 130) and "Traceback" not in err, (node.returncode, err)
