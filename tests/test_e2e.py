"""End to end over real SSH on 127.0.0.1: a real front-end, real node processes, real numpy."""

from __future__ import annotations

import asyncio
import json

import asyncssh
import numpy as np
import pytest

from console.engine.host import Host
from protocol.taskfile import parse_task
from tests.conftest import wait_until
from tests.reference import check_npz, expected_item

pytestmark = pytest.mark.timeout(90)


def generate(count: int, shape: list[int], seed: int, distribution: str = "normal", dtype: str = "float64") -> dict:
    return {"generate": {"count": count, "shape": shape, "seed": seed, "distribution": distribution, "dtype": dtype}}


EVERY_OPERATION = {
    "invert": {"operation": "invert", "inputs": {"a": generate(60, [12, 12], 1)}},
    "det": {"operation": "det", "inputs": {"a": generate(60, [6, 6], 2)}},
    "solve": {"operation": "solve", "inputs": {"a": generate(60, [10, 10], 3, "spd"), "b": generate(60, [10], 4)}},
    "matmul": {"operation": "matmul", "inputs": {"a": generate(60, [5, 7], 5), "b": generate(60, [7, 3], 6)}},
    "eigvalsh": {"operation": "eigvalsh", "inputs": {"a": generate(60, [9, 9], 7, "symmetric")}},
    "svdvals": {"operation": "svdvals", "inputs": {"a": generate(60, [8, 5], 8, "uniform")}},
    "invert-norms": {"operation": "invert", "return": "norms", "inputs": {"a": generate(60, [16, 16], 9)}},
    "invert-f32": {"operation": "invert", "inputs": {"a": generate(40, [8, 8], 10, "spd", "float32")}},
}


async def test_every_operation_is_computed_right_by_real_nodes(host: Host, nodes) -> None:
    nodes("n1")
    nodes("n2")
    frontend = host.frontend
    submitted = {}
    for name, document in EVERY_OPERATION.items():
        document = {"name": name, "chunk_size": 7, **document}
        submitted[await frontend.submit(parse_task(document), "operator")] = document
    for task_id, document in submitted.items():
        summary = await asyncio.wait_for(frontend.wait(task_id), 60)
        assert summary["state"] == "done", summary
        assert summary["ok_items"] == summary["items"]
        rtol = 1e-3 if "f32" in document["name"] else 1e-8
        count = check_npz(frontend.result_file(task_id), document, rtol=rtol)
        assert count == document["inputs"]["a"]["generate"]["count"]


async def test_tasks_wait_for_nodes_and_a_node_joining_mid_task_gets_work(host: Host, nodes) -> None:
    frontend = host.frontend
    # Far more work than the test waits for: it ends as soon as the late node has helped.
    document = {"name": "long", "operation": "invert", "chunk_size": 10, "return": "norms",
                "inputs": {"a": generate(100_000, [64, 64], 11)}}
    task_id = await frontend.submit(parse_task(document), "operator")

    def row():
        return next(r for r in frontend.task_rows() if r.task_id == task_id)

    await asyncio.sleep(1.0)
    assert row().state == "queued" and row().items_done == 0  # no node yet: it waits

    nodes("first")
    await wait_until(lambda: row().items_done > 0, what="the first node's first result")
    nodes("second")
    await wait_until(lambda: any(n.name == "second" and n.items_done > 0 for n in frontend.node_rows()),
                     what="the late node's first result")
    frontend.cancel(task_id)
    summary = await asyncio.wait_for(frontend.wait(task_id), 20)
    assert summary["state"] == "cancelled"
    assert set(summary["items_per_node"]) == {"first", "second"}
    with np.load(frontend.result_file(task_id)) as data:
        done = np.flatnonzero(data["ok"])
        assert len(done) == sum(summary["items_per_node"].values())
        for i in done[:: max(1, len(done) // 50)]:
            want = np.linalg.norm(expected_item(document, int(i)))
            np.testing.assert_allclose(data["norms"][i], want, rtol=1e-7)


async def _connect(host: Host, key_path, username: str = "user") -> asyncssh.SSHClientConnection:
    address = host.server.address
    return await asyncssh.connect(
        address[0], address[1], username=username, client_keys=[str(key_path)],
        known_hosts=([str(host.state.host_key) + ".pub"], [], []), config=None, agent_path=None, gss_host=None,
    )


async def test_a_user_key_cannot_open_the_node_subsystem(host: Host) -> None:
    async with await _connect(host, host.state.operator_key) as conn:
        process = await conn.create_process(subsystem="chainconsole-node", encoding=None)
        stderr = await process.stderr.read()
        await process.wait_closed()
        assert process.exit_status == 2
        assert b"not available" in stderr
    assert host.frontend.node_rows() == []


async def test_a_node_key_cannot_submit(host: Host) -> None:
    async with await _connect(host, host.state.node_key, username="node") as conn:
        result = await conn.run("submit", check=False)
        assert result.exit_status == 2
        assert "node keys may only open the node subsystem" in result.stderr
    assert host.frontend.task_rows() == []


async def test_an_unknown_key_is_refused_and_listed_as_pending(host: Host, tmp_path) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    stranger.write_private_key(tmp_path / "stranger")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(host, tmp_path / "stranger", username="node")
    await wait_until(lambda: host.server.registry.pending(), what="the refused key to be written down")
    pending = host.server.registry.pending()
    assert [p.fingerprint for p in pending] == [stranger.get_fingerprint("sha256")]

    host.server.registry.approve(pending[0].fingerprint, "newcomer")
    async with await _connect(host, tmp_path / "stranger", username="node") as conn:
        process = await conn.create_process(subsystem="chainconsole-node", encoding=None)
        process.stdin.write_eof()
        await process.wait_closed()
    assert host.server.registry.pending() == []


async def test_user_commands_report_bad_requests_without_harm(host: Host) -> None:
    async with await _connect(host, host.state.operator_key) as conn:
        unknown = await conn.run("format-disk", check=False)
        assert unknown.exit_status == 2 and "unknown command" in unknown.stderr
        junk = await conn.run("submit", input="{not json", check=False)
        assert junk.exit_status == 2 and "JSON" in junk.stderr
        missing = await conn.run("result t999", check=False)
        assert missing.exit_status == 2 and "no task" in missing.stderr
        over_ssh_file = json.dumps({"operation": "det", "inputs": {"a": {"file": "/etc/passwd"}}})
        refused = await conn.run("submit", input=over_ssh_file, check=False)
        assert refused.exit_status == 2 and "inputs.a.file" in refused.stderr
        tasks = await conn.run("tasks", check=True)
        assert json.loads(tasks.stdout) == []
