"""Fault injection with real processes: nodes killed, frozen, workers killed, the front-end killed.

Each test checks the final results against numpy; none may lose or corrupt an item.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from console.engine.host import Host, start_local_node
from console.engine.statedir import StateDir
from protocol.taskfile import parse_task
from tests.conftest import REPO, wait_until
from tests.reference import expected_item

pytestmark = pytest.mark.timeout(120)


def norms_task(count: int, n: int, seed: int, chunk: int = 10, operation: str = "invert") -> dict:
    return {"name": f"faulty-{seed}", "operation": operation, "chunk_size": chunk, "return": "norms",
            "inputs": {"a": {"generate": {"count": count, "shape": [n, n], "seed": seed,
                                          "distribution": "symmetric" if operation == "eigvalsh" else "normal"}}}}


def check_norms(path, document: dict, samples: int = 200) -> None:
    """Every item ok; a spread of items equal to numpy's (all of them when few)."""
    with np.load(path) as data:
        assert data["ok"].all(), f"{np.count_nonzero(~data['ok'])} items not ok"
        count = len(data["ok"])
        for i in range(0, count, max(1, count // samples)):
            want = np.linalg.norm(expected_item(document, i))
            np.testing.assert_allclose(data["norms"][i], want, rtol=1e-7, err_msg=f"item {i}")


def progress(host: Host, task_id: str) -> int:
    return next(r.items_done for r in host.frontend.task_rows() if r.task_id == task_id)


async def test_a_node_killed_mid_task_loses_nothing(host: Host, nodes) -> None:
    victim = nodes("victim")
    nodes("survivor")
    document = norms_task(3000, 64, 31)
    task_id = await host.frontend.submit(parse_task(document), "operator")
    await wait_until(lambda: any(n.name == "victim" and n.items_done > 0 for n in host.frontend.node_rows()),
                     what="the victim's first result")
    victim.send_signal(signal.SIGKILL)
    summary = await asyncio.wait_for(host.frontend.wait(task_id), 100)
    assert summary["state"] == "done" and summary["ok_items"] == 3000
    assert any(e.kind == "lost" and e.node_id == "victim" for e in host.frontend.events)
    check_norms(host.frontend.result_file(task_id), document)


async def test_a_frozen_node_is_found_out_and_its_chunks_run_elsewhere(host: Host, nodes) -> None:
    frozen = nodes("frozen")
    nodes("healthy")
    document = norms_task(3000, 64, 32)
    task_id = await host.frontend.submit(parse_task(document), "operator")
    await wait_until(lambda: any(n.name == "frozen" and n.items_done > 0 for n in host.frontend.node_rows()),
                     what="the frozen node's first result")
    frozen.send_signal(signal.SIGSTOP)
    try:
        stopped_at = asyncio.get_running_loop().time()
        await wait_until(lambda: any(e.kind == "lost" and e.node_id == "frozen" for e in host.frontend.events),
                         timeout=10, what="the frozen node to be declared lost")
        assert asyncio.get_running_loop().time() - stopped_at <= 10
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 100)
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert summary["state"] == "done" and summary["ok_items"] == 3000
    check_norms(host.frontend.result_file(task_id), document)


def _worker_pids(node: subprocess.Popen) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(node.pid)], capture_output=True, text=True).stdout
    # The spawn context's resource tracker is a child too; workers are the ones computing.
    pids = [int(p) for p in out.split()]
    return [p for p in pids if "resource_tracker" not in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def test_a_killed_worker_process_is_replaced_and_the_node_stays(host: Host, nodes) -> None:
    node = nodes("solo", slots=2)
    document = norms_task(4000, 64, 33)
    task_id = await host.frontend.submit(parse_task(document), "operator")
    await wait_until(lambda: progress(host, task_id) > 0, what="first results")
    workers = _worker_pids(node)
    assert workers, "the node has no worker processes"
    os.kill(workers[0], signal.SIGKILL)
    summary = await asyncio.wait_for(host.frontend.wait(task_id), 100)
    assert summary["state"] == "done" and summary["ok_items"] == 4000
    assert node.poll() is None, "the node died with its worker"
    assert not any(e.kind == "lost" for e in host.frontend.events), "the node's session should have survived"
    assert workers[0] not in _worker_pids(node), "the dead worker was not replaced"
    assert _worker_pids(node), "the node has no workers left"
    check_norms(host.frontend.result_file(task_id), document)


def _serve(state: StateDir, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from console.cli.main import main; main()", "serve", "--state-dir", str(state.root),
         "--listen", f"127.0.0.1:{port}"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _two_nodes_and_a_task(state: StateDir, tmp_path, document: dict) -> tuple[int, list, str]:
    """Once ``serve`` listens: two local nodes, and the task submitted. A restarted front-end
    must listen where the first one did — the port the OS gave it — for the nodes to find it."""
    from tests.test_clients import _cli

    await wait_until(lambda: state.endpoint.exists(), what="the front-end to listen")
    port = json.loads(state.endpoint.read_text())["port"]
    workers = [start_local_node(state, ("127.0.0.1", port), f"n{i}") for i in (1, 2)]
    (tmp_path / "task.json").write_text(json.dumps(document))
    status, out, err = await _cli("submit", str(tmp_path / "task.json"), "--state-dir", str(state.root), "--json")
    assert status == 0, err
    return port, workers, json.loads(out)["task_id"]


def _journal(state: StateDir, sql: str) -> list[tuple]:
    with sqlite3.connect(state.journal) as db:
        return db.execute(sql).fetchall()


async def test_the_front_end_killed_mid_task_resumes_without_losing_work(tmp_path) -> None:
    from tests.test_clients import _cli

    state = StateDir(tmp_path / "state")
    # eigvalsh norms are checked item by item: no replicas, so every item computed twice was lost to the crash
    document = norms_task(6000, 64, 34, chunk=20, operation="eigvalsh")
    server, workers = _serve(state, 0), []
    try:
        port, workers, task_id = await _two_nodes_and_a_task(state, tmp_path, document)

        def stored() -> int:
            return _journal(state, f"SELECT COALESCE(SUM(stop - start), 0) FROM chunks WHERE task_id = '{task_id}'")[0][0]

        await wait_until(lambda: stored() >= 2000, timeout=60, what="a third of the task")
        server.send_signal(signal.SIGKILL)
        server.wait()
        kept = stored()
        state.endpoint.unlink(missing_ok=True)
        server = _serve(state, port)
        await wait_until(lambda: _journal(state, f"SELECT state FROM tasks WHERE task_id = '{task_id}'")[0][0]
                         in ("done", "failed"), timeout=90, what="the resumed task to finish")
        assert _journal(state, f"SELECT state FROM tasks WHERE task_id = '{task_id}'")[0][0] == "done"
        status, out, err = await _cli("result", task_id, "-o", str(tmp_path / "out.npz"), "--state-dir", str(state.root))
        assert status == 0, err
        check_norms(tmp_path / "out.npz", document)

        # Work lost to the crash: items the nodes computed beyond the task's size.
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(20)
        logs = "".join((state.root / "logs" / f"n{i}.log").read_text() for i in (1, 2))
        computed = 20 * sum(int(m) for m in re.findall(r"ended after (\d+) results", logs))
        recomputed = computed - 6000
        # nodes × window × chunk size, twice: the results in flight to the front-end, and those
        # it had accepted but its writer had not yet group-committed (fsync, then the journal).
        # These chunks take about a millisecond, so a node's window widens to its largest.
        from nodes.work import MAX_WINDOW_PER_SLOT

        in_flight_bound = 2 * (2 * MAX_WINDOW_PER_SLOT * 20)
        print(f"\nfront-end crash: {kept} items stored before the crash, {recomputed} recomputed "
              f"(at most {in_flight_bound} were in flight)")
        assert 0 <= recomputed <= in_flight_bound
        loose = [p for p in state.root.rglob("*") if p.stat().st_mode & 0o077]
        assert not loose, f"files others may read: {loose}"
    finally:
        for proc in (server, *workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(300)
async def test_the_front_end_killed_at_ten_random_points_still_gets_every_item_right(tmp_path) -> None:
    """SIGKILL serve ten times at seeded random points of one task, restarting it each time."""
    import random

    from tests.test_clients import _cli

    state = StateDir(tmp_path / "state")
    count = 8000
    document = norms_task(count, 48, 35, chunk=20)
    server, workers = _serve(state, 0), []
    try:
        port, workers, task_id = await _two_nodes_and_a_task(state, tmp_path, document)

        def stored() -> int:
            return _journal(state, f"SELECT COALESCE(SUM(stop - start), 0) FROM chunks WHERE task_id = '{task_id}'")[0][0]

        def finished() -> bool:
            return _journal(state, f"SELECT state FROM tasks WHERE task_id = '{task_id}'")[0][0] in ("done", "failed")

        points = sorted(random.Random(13).sample(range(200, count - 1500, 20), 10))
        kills = 0
        for point in points:
            await wait_until(lambda: stored() >= point or finished(), timeout=90, what=f"{point} items stored")
            if finished():
                break
            server.send_signal(signal.SIGKILL)
            server.wait()
            kills += 1
            state.endpoint.unlink(missing_ok=True)
            server = _serve(state, port)
        await wait_until(finished, timeout=120, what="the task to finish after the last restart")
        assert kills == 10, f"the task finished after only {kills} kills: make it longer"
        assert _journal(state, f"SELECT state FROM tasks WHERE task_id = '{task_id}'")[0][0] == "done"
        status, out, err = await _cli("result", task_id, "-o", str(tmp_path / "out.npz"), "--state-dir", str(state.root))
        assert status == 0, err
        check_norms(tmp_path / "out.npz", document, samples=count)  # every single item
    finally:
        for proc in (server, *workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
