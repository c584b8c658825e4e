"""Nodes on a Dask cluster: a real ``distributed.LocalCluster`` (worker processes, 2 × 1 thread),
a real front-end and a real ``chainconsole node --executor dask`` process, results against numpy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from console.engine.host import Host
from nodes.dask_executor import DaskExecutor
from nodes.executor import ExecutorUnavailable
from nodes.pool import ChunkError, ChunkJob
from protocol.errors import ExitStatus
from protocol.taskfile import parse_task
from tests.conftest import REPO, wait_until
from tests.reference import check_npz

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
pytestmark = pytest.mark.timeout(180)

WORKERS = 2
THREADS_PER_WORKER = 1


def start_cluster(**config: object) -> distributed.LocalCluster:
    import dask

    with dask.config.set(config):
        return distributed.LocalCluster(
            n_workers=WORKERS, threads_per_worker=THREADS_PER_WORKER, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", worker_dashboard_address=None,
            silence_logs=logging.ERROR,
        )


@pytest.fixture(scope="module")
def cluster():
    """A Dask cluster of worker processes, closed (workers and all) after the module."""
    running = start_cluster()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def dask_client(cluster):
    with distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(WORKERS)
        yield client


def start_dask_node(host: Host, scheduler: str, name: str, log_path) -> subprocess.Popen:
    """A real node process computing on the cluster; the Host stops it at teardown."""
    address = host.server.address
    cmd = [sys.executable, "-m", "nodes", "--connect", f"{address[0]}:{address[1]}", "--name", name,
           "--key", str(host.state.node_key), "--host-key", str(host.state.host_key_pub),
           "--state-dir", str(host.state.root), "--exit-with", str(os.getpid()),
           "--executor", "dask", "--scheduler", scheduler]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO)
    host.nodes.append(proc)
    return proc


def executed(client) -> int:
    """Tasks the cluster's workers have run so far."""
    return sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())


def clients(client) -> int:
    """Clients the scheduler knows now."""
    return len(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients)))


def generate(count: int, shape: list[int], seed: int, distribution: str = "normal") -> dict:
    return {"generate": {"count": count, "shape": shape, "seed": seed, "distribution": distribution}}


async def test_a_node_on_a_dask_cluster_computes_a_task_right(host: Host, cluster, dask_client, tmp_path) -> None:
    before = await asyncio.to_thread(executed, dask_client)
    clients_before = await asyncio.to_thread(clients, dask_client)
    node = start_dask_node(host, cluster.scheduler_address, "dask", tmp_path / "node.log")
    frontend = host.frontend
    await wait_until(lambda: any(n.name == "dask" for n in frontend.node_rows()), 60, "the dask node to join")
    row = next(n for n in frontend.node_rows() if n.name == "dask")
    assert row.slots == WORKERS * THREADS_PER_WORKER  # its slots are the cluster's threads

    document = {"name": "on-dask", "operation": "solve", "chunk_size": 10,
                "inputs": {"a": generate(150, [12, 12], 21, "spd"), "b": generate(150, [12], 22)}}
    task_id = await frontend.submit(parse_task(document), "operator")
    summary = await asyncio.wait_for(frontend.wait(task_id), 120)
    assert summary["state"] == "done", (summary, (tmp_path / "node.log").read_text())
    assert summary["ok_items"] == 150 and summary["items_per_node"] == {"dask": 150}
    assert check_npz(frontend.result_file(task_id), document, rtol=1e-8) == 150
    # The chunks ran on the cluster's workers, not in worker processes of the node.
    assert await asyncio.to_thread(executed, dask_client) - before >= 15

    # SIGTERM: the node stops cleanly and lets go of the cluster, which keeps running.
    assert await asyncio.to_thread(clients, dask_client) > clients_before
    node.terminate()
    assert await asyncio.to_thread(node.wait, 30) == 0
    await wait_until(lambda: clients(dask_client) == clients_before, 30, "the node's Dask client to close")
    assert len(dask_client.nthreads()) == WORKERS


async def test_the_node_follows_the_cluster_as_it_scales(host: Host, cluster, dask_client, tmp_path) -> None:
    start_dask_node(host, cluster.scheduler_address, "scaling", tmp_path / "node.log")
    frontend = host.frontend

    def slots() -> int | None:
        return next((n.slots for n in frontend.node_rows() if n.name == "scaling"), None)

    await wait_until(lambda: slots() == WORKERS, 60, "the node to join with the cluster's threads")
    try:
        await asyncio.to_thread(cluster.scale, WORKERS + 1)
        await wait_until(lambda: slots() == WORKERS + 1, 60, "the front-end to see the cluster grow")
    finally:
        await asyncio.to_thread(cluster.scale, WORKERS)
    await wait_until(lambda: slots() == WORKERS, 60, "the front-end to see the cluster shrink")


async def kill_a_worker_mid_task(host: Host, client, task_id: str) -> int:
    """SIGKILL a worker process while it holds a chunk of ``task_id``; its pid."""
    pids = await asyncio.to_thread(client.run, os.getpid)

    def kill_a_busy_worker() -> int | None:
        # Looked up and killed in one go: the chunk seen has no time to finish in between.
        for worker, keys in client.processing().items():
            if any(str(key).startswith("compute_chunk") for key in keys):
                os.kill(pids[worker], signal.SIGKILL)
                return pids[worker]
        return None

    row = lambda: host.frontend.task_row(task_id)  # noqa: E731
    await wait_until(lambda: row().items_done > 0, 90, "the first results")
    while True:
        assert row().state == "running", "the task ended before a worker could be killed"
        killed = await asyncio.to_thread(kill_a_busy_worker)
        if killed is not None:
            return killed


LONG_CHUNKS = {"name": "long-chunks", "operation": "invert", "chunk_size": 50, "return": "norms",
               "inputs": {"a": generate(400, [256, 256], 31)}}
"""Eight chunks of a tenth of a second or more each on one thread: a worker is killed inside one."""


async def run_with_a_worker_killed(host: Host, client, tmp_path) -> set[tuple[str, int, int]]:
    """Run LONG_CHUNKS on a dask node, kill a worker mid-task; check everything; the assignments made."""
    frontend = host.frontend
    assigned: set[tuple[str, int, int]] = set()
    frontend.on_assign(assigned.add)
    await wait_until(lambda: any(n.name == "dask" for n in frontend.node_rows()), 60, "the dask node to join")
    task_id = await frontend.submit(parse_task(LONG_CHUNKS), "operator")
    killed = await kill_a_worker_mid_task(host, client, task_id)
    summary = await asyncio.wait_for(frontend.wait(task_id), 150)
    assert summary["state"] == "done", (summary, (tmp_path / "node.log").read_text())
    assert summary["ok_items"] == summary["items"] == 400
    # In a thread: the front-end on this loop keeps answering its node meanwhile.
    assert await asyncio.to_thread(check_npz, frontend.result_file(task_id), LONG_CHUNKS, rtol=1e-7) == 400
    await asyncio.to_thread(client.wait_for_workers, WORKERS)
    assert killed not in (await asyncio.to_thread(client.run, os.getpid)).values()  # it did die
    return assigned


async def test_a_worker_killed_mid_chunk_loses_nothing(host: Host, cluster, dask_client, tmp_path) -> None:
    """Dask reruns the chunk of a dead worker on another one: the node never notices."""
    start_dask_node(host, cluster.scheduler_address, "dask", tmp_path / "node.log")
    await run_with_a_worker_killed(host, dask_client, tmp_path)


async def test_a_chunk_the_cluster_gives_up_on_gets_another_attempt(host: Host, tmp_path) -> None:
    """A cluster that never reruns a task (allowed-failures 0): the front-end gives the chunk another attempt."""
    strict = await asyncio.to_thread(start_cluster, **{"distributed.scheduler.allowed-failures": 0})
    try:
        with distributed.Client(strict, set_as_default=False) as client:
            await asyncio.to_thread(client.wait_for_workers, WORKERS)
            start_dask_node(host, strict.scheduler_address, "dask", tmp_path / "node.log")
            assigned = await run_with_a_worker_killed(host, client, tmp_path)
    finally:
        await asyncio.to_thread(strict.close)
    assert any(attempt > 1 for _, _, attempt in assigned), sorted(assigned)


def invert_job(count: int, n: int, operation: str = "invert") -> ChunkJob:
    spec = {"count": count, "shape": [n, n], "seed": 5, "distribution": "normal", "dtype": "float64"}
    return ChunkJob(operation, 0, count, "full", {"a": spec}, {})


async def test_the_executor_computes_reports_kernel_errors_and_cancels(cluster) -> None:
    executor = DaskExecutor(cluster.scheduler_address)
    resized: list[int] = []
    await executor.start(resized.append)
    try:
        assert executor.slots == WORKERS * THREADS_PER_WORKER
        done, failed = await executor.result(executor.submit([invert_job(4, 8), invert_job(1, 2, "format-disk")]))
        want = np.linalg.inv(np.stack([np.random.default_rng([5, i]).standard_normal((8, 8)) for i in range(4)]))
        np.testing.assert_allclose(done.result, want, rtol=1e-10)
        # A kernel's own error answers its chunk alone; the group's other chunks are computed.
        assert isinstance(failed, ChunkError) and "unknown operation" in failed.reason
        long = executor.submit([invert_job(100, 256)])
        assert executor.cancel(long)
        with pytest.raises(asyncio.CancelledError):
            await executor.result(long)
    finally:
        await executor.close()
    assert resized == []  # the cluster did not change size meanwhile


async def test_an_unreachable_scheduler_is_one_clear_error() -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    executor = DaskExecutor(f"tcp://127.0.0.1:{port}", connect_timeout_s=1.0)
    with pytest.raises(ExecutorUnavailable, match=f"cannot connect to the Dask scheduler tcp://127.0.0.1:{port}") as caught:
        await executor.start(lambda slots: None)
    assert caught.value.status == ExitStatus.CONNECT
    await executor.close()


@pytest.mark.parametrize("args, message", [
    (["--executor", "dask"], "--executor dask needs --scheduler ADDRESS"),
    (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler applies only with --executor dask"),
    (["--executor", "dask", "--scheduler", "no-such-file.json"], "neither an address"),
])
def test_executor_options_misused_are_one_line_and_touch_nothing(tmp_path, args, message) -> None:
    state = tmp_path / "node-state"
    done = subprocess.run([sys.executable, "-m", "nodes", "--connect", "127.0.0.1:8022", "--state-dir", str(state),
                           *args], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == ExitStatus.USAGE
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not state.exists()  # refused before a key was made
