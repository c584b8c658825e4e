"""A launcher's node key: trusted while the launcher's operator session holds it, and not otherwise."""

from __future__ import annotations

import asyncio
import json

import asyncssh
import pytest

from console.cli.client import Endpoint, connect
from console.engine.host import Host, start_local_node
from console.engine.keys import KeyError_, KeyRegistry, Role, public_key_line
from protocol.taskfile import parse_task
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(90)

TASK = {"name": "launched", "operation": "det", "chunk_size": 10,
        "inputs": {"a": {"generate": {"count": 200, "shape": [6, 6], "seed": 3}}}}


def fresh_key(tmp_path, name: str):
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / name
    key.write_private_key(path)
    path.chmod(0o600)
    return path, public_key_line(key)


def endpoint(host: Host, key=None) -> Endpoint:
    assert host.server is not None
    address = host.server.address
    return Endpoint(address[0], address[1], key or host.state.operator_key, host.state.host_key_pub)


async def test_nodes_of_a_launcher_get_in_while_it_holds_its_key_and_not_after(host: Host, tmp_path) -> None:
    frontend = host.frontend
    key_path, key_line = fresh_key(tmp_path, "launch_key")
    async with await connect(endpoint(host)) as conn:
        process = await conn.create_process("launcher test-launcher")
        process.stdin.write(key_line + "\n")
        answer = json.loads(await process.stdout.readline())
        assert answer["state"] == "enrolled" and answer["launcher"] == "test-launcher"
        node = start_local_node(host.state, host.server.address, "launched1", 1, ("--key", str(key_path)))
        host.nodes.append(node)
        task_id = await frontend.submit(parse_task(TASK), "operator")
        summary = await asyncio.wait_for(frontend.wait(task_id), 60)
        assert summary["items_per_node"] == {"launched1": 200}
        # Nothing was written: the trust lives only as long as this session.
        for path in (host.state.authorized_nodes, host.state.authorized_users, host.state.authorized_operators):
            assert answer["fingerprint"] not in {e.fingerprint for e in KeyRegistry(host.state).entries()}
            assert key_line.split()[1] not in path.read_text()
        process.stdin.write_eof()
        await asyncio.wait_for(process.wait(), 10)
    # The launcher is gone: its node is sent away and leaves, and its key no longer logs in.
    assert await asyncio.wait_for(asyncio.to_thread(node.wait), 20) == 0
    with pytest.raises(Exception, match="refused"):
        async with await connect(endpoint(host, key_path)):
            pass


async def test_a_dropped_launcher_connection_withdraws_its_key(host: Host, tmp_path) -> None:
    _, key_line = fresh_key(tmp_path, "k")
    conn = await connect(endpoint(host))
    process = await conn.create_process("launcher dropper")
    process.stdin.write(key_line + "\n")
    await process.stdout.readline()
    assert [e.launcher for e in host.frontend.registry.launched()] == ["dropper"]
    conn.abort()
    await wait_until(lambda: not host.frontend.registry.launched(), what="the key to be withdrawn")


async def test_only_an_operator_may_enrol_and_only_a_fresh_key(host: Host, tmp_path) -> None:
    user_path, user_line = fresh_key(tmp_path, "user")
    host.frontend.registry.add(Role.USER, user_line, "alice")
    async with await connect(endpoint(host, user_path)) as conn:
        result = await conn.run("launcher sneaky", check=False)  # refused before it reads a key
        assert result.exit_status == 2 and "only operators" in result.stderr
        result = await conn.run("backlog", check=False)
        assert result.exit_status == 2
    async with await connect(endpoint(host)) as conn:
        result = await conn.run("launcher again", input=user_line + "\n", check=False)  # alice's key
        assert result.exit_status == 2 and "already authorized" in result.stderr
        result = await conn.run("launcher garbage", input="not a key\n", check=False)
        assert result.exit_status == 2 and "not an OpenSSH public key" in result.stderr
        assert host.frontend.registry.launched() == []
        await host.frontend.submit(parse_task(TASK), "operator")
        backlog = json.loads((await conn.run("backlog", check=True)).stdout)
        assert backlog == {"items_waiting": 200, "tasks_unfinished": 1, "nodes": 0, "slots": 0}


def test_a_launched_key_is_a_node_key_and_removable(state) -> None:
    registry = KeyRegistry(state)
    key = asyncssh.generate_private_key("ssh-ed25519")
    entry = registry.enrol_launched(public_key_line(key), "slurm main")
    assert entry.role.value == "node" and entry.launcher == "slurm-main"
    assert registry.lookup(key) == entry
    with pytest.raises(KeyError_):
        registry.enrol_launched(public_key_line(key), "twice")
    assert registry.remove(entry.fingerprint)
    assert registry.lookup(key) is None


async def test_a_launcher_without_an_operator_key_is_told_why(host: Host, tmp_path) -> None:
    from console.launch.control import LaunchError, RemoteControl

    user_path, user_line = fresh_key(tmp_path, "user")
    host.frontend.registry.add(Role.USER, user_line, "bob")
    control = RemoteControl(endpoint(host, user_path))
    with pytest.raises(LaunchError, match="refused the launcher's key: only operators may do that"):
        await control.enrol(fresh_key(tmp_path, "launch")[1], "bobs")
    assert host.frontend.registry.launched() == []
    operator = RemoteControl(endpoint(host))
    await operator.enrol(fresh_key(tmp_path, "launch2")[1], "ops")
    try:
        assert [e.launcher for e in host.frontend.registry.launched()] == ["ops"]
        assert (await operator.backlog()).items_waiting == 0
    finally:
        await operator.close()
    await wait_until(lambda: not host.frontend.registry.launched(), what="the key to be withdrawn on close")
