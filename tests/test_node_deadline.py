"""A real node with a walltime: it tells the front-end, stops at it, and drains on SIGUSR1."""

from __future__ import annotations

import asyncio
import signal

import numpy as np
import pytest

from console.engine.host import Host, start_local_node
from nodes.cli import walltime
from protocol.taskfile import parse_task
from tests.conftest import wait_until
from tests.reference import expected_item

pytestmark = pytest.mark.timeout(90)

DOCUMENT = {"name": "walltimed", "operation": "invert", "chunk_size": 20, "return": "norms",
            "inputs": {"a": {"generate": {"count": 3000, "shape": [48, 48], "seed": 5}}}}


def start(host: Host, name: str, *extra: str):
    assert host.server is not None
    proc = start_local_node(host.state, host.server.address, name, 1, extra)
    host.nodes.append(proc)
    return proc


def check_norms(host: Host, task_id: str) -> None:
    with np.load(host.frontend.result_file(task_id)) as data:
        assert data["ok"].all()
        for i in range(0, len(data["ok"]), 97):
            np.testing.assert_allclose(data["norms"][i], np.linalg.norm(expected_item(DOCUMENT, i)), rtol=1e-7)


def log_of(host: Host, name: str) -> str:
    return (host.state.root / "logs" / f"{name}.log").read_text()


async def test_a_node_with_a_walltime_stops_at_it_and_its_work_is_finished_by_others(host: Host) -> None:
    frontend = host.frontend
    task_id = await frontend.submit(parse_task(DOCUMENT), "operator")
    timed = start(host, "timed", "--deadline", "4s")
    await wait_until(lambda: any(r.name == "timed" and r.items_done > 0 for r in frontend.node_rows()),
                     what="the walltimed node's first result")
    status = await asyncio.wait_for(asyncio.to_thread(timed.wait), 30)
    assert status == 0
    assert "walltime reached" in log_of(host, "timed")
    row = next(r for r in frontend.node_rows() if r.name == "timed")
    assert row.state == "left"  # said bye ...
    # ... holding nothing: it was given no chunk expected to outlast its walltime
    assert not [e for e in frontend.events if e.kind == "requeue" and e.node_id == "timed"]
    start(host, "steady")
    summary = await asyncio.wait_for(frontend.wait(task_id), 60)
    assert summary["state"] == "done" and summary["ok_items"] == 3000
    assert summary["items_per_node"]["timed"] > 0
    check_norms(host, task_id)


async def test_sigusr1_drains_a_node_before_its_walltime(host: Host) -> None:
    frontend = host.frontend
    task_id = await frontend.submit(parse_task(DOCUMENT), "operator")
    node = start(host, "batch", "--deadline", "1-00:00:00")
    await wait_until(lambda: any(r.name == "batch" and r.items_done > 0 for r in frontend.node_rows()),
                     what="the node's first result")
    node.send_signal(signal.SIGUSR1)
    status = await asyncio.wait_for(asyncio.to_thread(node.wait), 30)
    assert status == 0
    assert "SIGUSR1: the walltime is near, draining" in log_of(host, "batch")
    start(host, "after")
    summary = await asyncio.wait_for(frontend.wait(task_id), 60)
    assert summary["state"] == "done" and summary["ok_items"] == 3000
    check_norms(host, task_id)


@pytest.mark.parametrize("text, seconds", [("3600", 3600), ("90s", 90), ("45m", 2700), ("2h", 7200), ("1d", 86400),
                                           ("10:00", 600), ("01:30:00", 5400), ("1-12:00:00", 129600)])
def test_walltimes_read_as_slurm_writes_them(text: str, seconds: float) -> None:
    assert walltime(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "soon", "1:2:3:4", "inf", "5x"])
def test_a_walltime_that_is_not_one_is_refused(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        walltime(text)
