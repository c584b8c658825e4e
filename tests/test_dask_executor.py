"""Nodes on a Dask cluster: a real ``distributed.LocalCluster`` (worker processes, 2 × 1 thread),
a real front-end and a real ``chainconsole node --executor dask`` process, results against numpy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest

from console.engine.host import Host
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
            dashboard_address=None, scheduler_kwargs={"dashboard": False}, worker_dashboard_address=None,
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


def generate(count: int, shape: list[int], seed: int, distribution: str = "normal") -> dict:
    return {"generate": {"count": count, "shape": shape, "seed": seed, "distribution": distribution}}


async def test_a_node_on_a_dask_cluster_computes_a_task_right(host: Host, cluster, dask_client, tmp_path) -> None:
    before = await asyncio.to_thread(executed, dask_client)
    start_dask_node(host, cluster.scheduler_address, "dask", tmp_path / "node.log")
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
