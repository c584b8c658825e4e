"""Against a real front-end: honest nodes are never blamed, lying nodes never get a wrong value in.

Hostile tasks — a float32 ``det`` that overflows, inline 1e200 matrices, Hilbert-like
ill-conditioned inversions and solves — computed by real honest nodes end with no
"invalid" event and no node quarantined. Lying nodes (``tests/fake_node.py``) beside an
honest one are told why their results were rejected, and the task ends ``done`` with every
value equal to numpy's.
"""

from __future__ import annotations

import asyncio
import functools

import asyncssh
import numpy as np
import pytest

from console.engine.host import Host
from console.engine.keys import Role
from nodes import hub_shell
from protocol.replication import ReplicationPolicy
from protocol.taskfile import parse_task
from protocol.verify import judge
from tests import fake_node
from tests.conftest import wait_until
from tests.reference import check_npz

pytestmark = pytest.mark.timeout(180)


def hilbert_like(count: int, n: int) -> list:
    i = np.arange(n)
    return [(1.0 / (i[:, None] + i[None, :] + 1.0 + 0.01 * k)).tolist() for k in range(count)]


def symmetric(count: int, n: int, scale: float) -> list:
    m = np.random.default_rng(5).standard_normal((count, n, n))
    return ((m + np.swapaxes(m, 1, 2)) / 2 * scale).tolist()


HOSTILE_TASKS = [
    {"name": "det-overflow", "operation": "det", "chunk_size": 4,
     "inputs": {"a": {"generate": {"count": 16, "shape": [64, 64], "seed": 1, "dtype": "float32"}}}},
    {"name": "eig-1e200", "operation": "eigvalsh", "chunk_size": 3, "inputs": {"a": {"inline": symmetric(9, 12, 1e200)}}},
    {"name": "eig-1e200-norms", "operation": "eigvalsh", "chunk_size": 3, "return": "norms",
     "inputs": {"a": {"inline": symmetric(9, 12, 1e200)}}},
    {"name": "invert-hilbert", "operation": "invert", "chunk_size": 3, "inputs": {"a": {"inline": hilbert_like(9, 11)}}},
    {"name": "solve-hilbert", "operation": "solve", "chunk_size": 3,
     "inputs": {"a": {"inline": hilbert_like(9, 11)}, "b": {"inline": np.ones((9, 11)).tolist()}}},
    {"name": "svd-float32", "operation": "svdvals", "chunk_size": 5,
     "inputs": {"a": {"generate": {"count": 20, "shape": [48, 32], "seed": 2, "dtype": "float32"}}}},
]


async def test_hostile_tasks_never_blame_an_honest_node(host: Host, nodes) -> None:
    nodes("honest1")
    nodes("honest2")
    await wait_until(lambda: len(host.frontend.node_rows()) == 2, what="two nodes")
    frontend = host.frontend
    for _ in range(2):  # every chunk is checked afresh: twice over makes a lucky pass unlikely
        for document in HOSTILE_TASKS:
            summary = await asyncio.wait_for(frontend.wait(await frontend.submit(parse_task(document), "alice")), 120)
            assert summary["state"] in ("done", "failed"), summary
    invalid = [e.message for e in frontend.events if e.kind in ("invalid", "quarantine")]
    assert not invalid, invalid
    assert all(row.state in ("idle", "busy") and row.errors == 0 for row in frontend.node_rows())


async def start_liar(host: Host, tmp_path, tamper) -> fake_node.FakeNode:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(tmp_path / "liar")
    host.frontend.registry.add(Role.NODE, key.export_public_key().decode(), "liar")
    liar = fake_node.FakeNode(host.server.address, tmp_path / "liar", host.state.host_key.with_name("host_key.pub"),
                              name="liar", slots=2, tamper=tamper)
    await liar.start()
    return liar


LIES = {
    "invert-scaled": ("invert", fake_node.scale_invert, {"a": {"count": 60, "shape": [24, 24], "seed": 11}}),
    "invert-one-item": ("invert", fake_node.one_item_per_chunk, {"a": {"count": 60, "shape": [16, 16], "seed": 12}}),
    "solve-one-item": ("solve", fake_node.one_item_per_chunk,
                       {"a": {"count": 60, "shape": [16, 16], "seed": 13}, "b": {"count": 60, "shape": [16], "seed": 14}}),
    "matmul-nan": ("matmul", fake_node.nan_marked_ok,
                   {"a": {"count": 60, "shape": [12, 10], "seed": 15}, "b": {"count": 60, "shape": [10, 6], "seed": 16}}),
    "eigvalsh-power-sums": ("eigvalsh", fake_node.keep_power_sums,
                            {"a": {"count": 60, "shape": [16, 16], "seed": 17, "distribution": "symmetric"}}),
    "svdvals-power-sums": ("svdvals", fake_node.keep_power_sums, {"a": {"count": 60, "shape": [14, 10], "seed": 18}}),
    "det-scaled": ("det", fake_node.scale_slightly, {"a": {"count": 60, "shape": [12, 12], "seed": 21}}),
    "det-one-item": ("det", fake_node.one_item_per_chunk, {"a": {"count": 60, "shape": [12, 12], "seed": 22}}),
    "det-some-chunks": ("det", fake_node.some_chunks, {"a": {"count": 60, "shape": [12, 12], "seed": 23}}),
    "invert-norms-some-chunks": ("invert", fake_node.some_chunks, {"a": {"count": 60, "shape": [12, 12], "seed": 24}},
                                 "norms"),
    "solve-norms-scaled": ("solve", fake_node.scale_slightly,
                           {"a": {"count": 60, "shape": [10, 10], "seed": 25}, "b": {"count": 60, "shape": [10], "seed": 26}},
                           "norms"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
async def test_a_lying_node_gets_no_wrong_value_into_a_done_task(host: Host, nodes, tmp_path, lie: str) -> None:
    operation, tamper, inputs, *mode = LIES[lie]
    liar = await start_liar(host, tmp_path, tamper)
    try:
        document = {"name": lie, "operation": operation, "chunk_size": 5, "return": mode[0] if mode else "full",
                    "inputs": {name: {"generate": spec} for name, spec in inputs.items()}}
        task_id = await host.frontend.submit(parse_task(document), "alice")
        await wait_until(lambda: liar.results_sent >= 1, what="the liar's first answer")
        nodes("honest")
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 120)
        assert summary["state"] == "done", summary
        if tamper is not fake_node.some_chunks:  # (an honest chunk of a part-time liar may be stored)
            assert "liar" not in summary["items_per_node"]
        assert check_npz(host.frontend.result_file(task_id), document, rtol=1e-7) == 60  # every value
        assert liar.rejections, "the liar was never told"
        assert all(r.task_id == task_id and r.reason for r in liar.rejections)
    finally:
        await liar.close()


def det_task(name: str, seed: int) -> dict:
    return {"name": name, "operation": "det", "chunk_size": 4,
            "inputs": {"a": {"generate": {"count": 40, "shape": [12, 12], "seed": seed}}}}


async def test_a_node_caught_later_has_its_unconfirmed_chunks_of_finished_tasks_computed_again(
        host: Host, nodes, tmp_path, monkeypatch) -> None:
    frontend = host.frontend
    # The liar is lucky at first: no spot recomputation and no replica of its results.
    monkeypatch.setattr(hub_shell, "judge", functools.partial(judge, recompute_fraction=0.0))
    frontend.hub.dispatcher.replication = ReplicationPolicy(probation=0, rate=0.0)
    liar = await start_liar(host, tmp_path, fake_node.scale_slightly)
    try:
        nodes("honest")
        await wait_until(lambda: len(frontend.node_rows()) == 2, what="two nodes")
        first = det_task("first", 31)
        first_id = await frontend.submit(parse_task(first), "alice")
        summary = await asyncio.wait_for(frontend.wait(first_id), 60)
        assert summary["state"] == "done" and summary["items_per_node"].get("liar"), summary  # the lie got in

        frontend.hub.dispatcher.replication = ReplicationPolicy(probation=0, rate=1.0)  # its luck runs out
        second = det_task("second", 32)
        summary = await asyncio.wait_for(frontend.wait(await frontend.submit(parse_task(second), "alice")), 60)
        assert summary["state"] == "done"
        await wait_until(lambda: any(e.kind == "reopen" and e.task_id == first_id for e in frontend.events),
                         what="the first task reopened")
        summary = await asyncio.wait_for(frontend.wait(first_id), 60)
        assert summary["state"] == "done"
        assert check_npz(frontend.result_file(first_id), first, rtol=1e-7) == 40  # every value right again
    finally:
        await liar.close()
