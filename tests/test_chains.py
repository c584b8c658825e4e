"""Compute chains with real processes: console → A → B → C, and failover when a link dies."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncssh
import numpy as np
import pytest

from console.engine.host import Host
from console.engine.keys import Role
from protocol.taskfile import parse_task
from tests.conftest import REPO, wait_until
from tests.reference import check_npz, expected_item

pytestmark = pytest.mark.timeout(150)


LISTENING = re.compile(r"accepting nodes on \S+:(\d+)")


async def _link_port(tmp: Path, name: str) -> int:
    """The port a chain link started with ``--listen HOST:0`` was given by the OS (from its log)."""

    def port() -> int | None:
        found = LISTENING.search((tmp / f"{name}.log").read_text())
        return int(found.group(1)) if found else None

    await wait_until(lambda: port() is not None, timeout=60, what=f"link {name} to accept nodes")
    return port()


def _node(host: Host, tmp: Path, name: str, upstreams: list[int], listen: int | None = None,
          listen_host: str = "127.0.0.1", pin: bool = True) -> subprocess.Popen:
    """A node process with its own state dir, the console's node key, pinning the console's host key
    (or, without ``pin``, trusting its first upstream on first use)."""
    cmd = [sys.executable, "-m", "nodes", "--name", name, "--slots", "1", "--state-dir", str(tmp / name),
           "--key", str(host.state.node_key)]
    if pin:
        cmd += ["--host-key", str(host.state.host_key) + ".pub"]
    for port in upstreams:
        cmd += ["--connect", f"127.0.0.1:{port}"]
    if listen is not None:
        cmd += ["--listen", f"{listen_host}:{listen}"]
    log = open(tmp / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    host.nodes.append(proc)
    return proc


def _rows(host: Host) -> dict:
    return {row.name: row for row in host.frontend.node_rows()}


def _task(count: int, seed: int) -> dict:
    return {"name": f"chain-{seed}", "operation": "invert", "chunk_size": 10, "return": "norms",
            "inputs": {"a": {"generate": {"count": count, "shape": [64, 64], "seed": seed}}}}


def _check(host: Host, task_id: str, document: dict) -> None:
    with np.load(host.frontend.result_file(task_id)) as data:
        assert data["ok"].all()
        for i in range(0, len(data["ok"]), 37):
            np.testing.assert_allclose(data["norms"][i], np.linalg.norm(expected_item(document, i)), rtol=1e-7)


async def test_a_three_deep_chain_computes_and_the_console_sees_it_all(host: Host, tmp_path) -> None:
    console = host.server.address[1]
    _node(host, tmp_path, "A", [console], listen=0)
    _node(host, tmp_path, "B", [await _link_port(tmp_path, "A")], listen=0)
    _node(host, tmp_path, "C", [await _link_port(tmp_path, "B")])
    await wait_until(lambda: {"A", "B", "C"} <= set(_rows(host)), timeout=60, what="the chain to form")
    rows = _rows(host)
    assert rows["B"].via == ("A",) and rows["C"].via == ("A", "B")

    document = _task(3000, 71)
    task_id = await host.frontend.submit(parse_task(document), "operator")
    summary = await asyncio.wait_for(host.frontend.wait(task_id), 120)
    assert summary["state"] == "done" and summary["ok_items"] == 3000
    assert set(summary["items_per_node"]) == {"A"}  # the console hands work to its link only
    _check(host, task_id, document)
    await wait_until(lambda: _rows(host)["C"].items_done > 0 and _rows(host)["B"].items_done > 0,
                     timeout=10, what="the subtree report to show work done behind the links")

    # Drain is routed down the chain to the node it names.
    host.frontend.drain("C")
    await wait_until(lambda: "C" not in _rows(host), timeout=30, what="C to be drained and leave")


async def test_nodes_behind_a_dead_link_fail_over_and_the_task_finishes(host: Host, tmp_path) -> None:
    console = host.server.address[1]
    link = _node(host, tmp_path, "A", [console], listen=0)
    port_a = await _link_port(tmp_path, "A")
    _node(host, tmp_path, "B", [port_a, console])
    _node(host, tmp_path, "C", [port_a, console])
    await wait_until(lambda: {"A", "B", "C"} <= set(_rows(host)), timeout=60, what="the chain to form")

    document = _task(6000, 72)
    task_id = await host.frontend.submit(parse_task(document), "operator")
    await wait_until(lambda: next(r.items_done for r in host.frontend.task_rows() if r.task_id == task_id) > 1000,
                     timeout=60, what="the task to get going")
    link.send_signal(signal.SIGKILL)
    await wait_until(lambda: _rows(host).get("B") is not None and _rows(host)["B"].via == ()
                     and _rows(host).get("C") is not None and _rows(host)["C"].via == (),
                     timeout=40, what="B and C to reconnect to the console directly")
    summary = await asyncio.wait_for(host.frontend.wait(task_id), 120)
    assert summary["state"] == "done" and summary["ok_items"] == 6000
    assert {"B", "C"} <= set(summary["items_per_node"])
    _check(host, task_id, document)


async def test_a_node_that_first_met_a_link_pins_the_console_and_fails_over_to_it(host: Host, tmp_path) -> None:
    """Trust on first use at a link records the key that certified the link: the console's."""
    console = host.server.address[1]
    link = _node(host, tmp_path, "A", [console], listen=0)
    port_a = await _link_port(tmp_path, "A")
    _node(host, tmp_path, "N", [port_a, console], pin=False)
    await wait_until(lambda: _rows(host).get("N") is not None and _rows(host)["N"].via == ("A",),
                     timeout=60, what="N to join behind A")
    recorded = asyncssh.read_public_key(tmp_path / "N" / "frontend_host_key.pub")
    assert recorded == asyncssh.read_public_key(host.state.host_key_pub)
    link.send_signal(signal.SIGKILL)
    await wait_until(lambda: _rows(host).get("N") is not None and _rows(host)["N"].via == (),
                     timeout=40, what="N to fail over to the console")
    assert "does not match" not in (tmp_path / "N.log").read_text()
    document = _task(300, 75)
    task_id = await host.frontend.submit(parse_task(document), "operator")
    summary = await asyncio.wait_for(host.frontend.wait(task_id), 60)
    assert summary["state"] == "done" and summary["items_per_node"] == {"N": 300}
    _check(host, task_id, document)


@pytest.fixture
def isolated_host():
    """A network namespace joined to this one by a veth pair: a machine that cannot see 127.0.0.1 here."""
    name = f"cc{os.getpid() % 100000}"
    outside, inside = f"{name}a", f"{name}b"
    _remove_stale_namespaces()
    setup = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
        ["ip", "link", "set", inside, "netns", name],
        ["ip", "addr", "add", "10.231.0.1/30", "dev", outside],
        ["ip", "link", "set", outside, "up"],
        ["ip", "-n", name, "addr", "add", "10.231.0.2/30", "dev", inside],
        ["ip", "-n", name, "link", "set", inside, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    try:
        for cmd in setup:
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"network namespaces are not permitted here: {exc}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _remove_stale_namespaces() -> None:
    """Those a killed run left, with the address every run gives its veth pair."""
    try:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return
    for line in listed.splitlines():
        stale = line.split()[0] if line.split() else ""
        if re.fullmatch(r"cc\d+", stale) and not os.path.exists(f"/proc/{stale[2:]}"):
            subprocess.run(["ip", "link", "del", f"{stale}a"], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=10)


async def test_a_node_that_can_reach_only_a_link_still_computes(host: Host, tmp_path, isolated_host) -> None:
    """Why chains exist: C cannot reach the console, only the gateway link B."""
    console = host.server.address[1]
    _node(host, tmp_path, "B", [console], listen=0, listen_host="10.231.0.1")  # the gateway
    port_b = await _link_port(tmp_path, "B")
    cmd = ["ip", "netns", "exec", isolated_host, sys.executable, "-m", "nodes", "--name", "C", "--slots", "1",
           "--state-dir", str(tmp_path / "C"), "--key", str(host.state.node_key),
           "--host-key", str(host.state.host_key) + ".pub",
           "--connect", f"127.0.0.1:{console}", "--connect", f"10.231.0.1:{port_b}"]
    log = open(tmp_path / "C.log", "ab")
    host.nodes.append(subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
    log.close()
    await wait_until(lambda: "C" in _rows(host), timeout=60, what="C to join through B")
    assert _rows(host)["C"].via == ("B",)
    document = _task(2000, 73)
    task_id = await host.frontend.submit(parse_task(document), "operator")
    summary = await asyncio.wait_for(host.frontend.wait(task_id), 120)
    assert summary["state"] == "done"
    _check(host, task_id, document)
    await wait_until(lambda: _rows(host)["C"].items_done > 0, timeout=10, what="C's work to show")
    assert f"cannot connect to 127.0.0.1:{console}" in (tmp_path / "C.log").read_text()



async def _start_behind(node, attempts: int = 100):
    """Connect a fake node to a link, which listens once the console has certified it and lets
    a key in once the console's list of enrolled keys has reached it."""
    for _ in range(attempts):
        try:
            return await node.start()
        except (OSError, asyncssh.PermissionDenied):
            await asyncio.sleep(0.1)
    raise AssertionError("the link never let the node in")


def _enrol(host: Host, tmp_path: Path, name: str) -> Path:
    """A node key of its own, enrolled at the console (and so, within a second, at its links)."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(tmp_path / name)
    host.frontend.registry.add(Role.NODE, key.export_public_key().decode(), name)
    return tmp_path / name


async def test_a_lying_node_behind_a_link_is_quarantined_by_the_link_and_stays_out(host: Host, tmp_path) -> None:
    from tests.fake_node import FakeNode, NodeRejected, corrupt
    from tests.reference import check_npz

    _node(host, tmp_path, "A", [host.server.address[1]], listen=0)
    port_a = await _link_port(tmp_path, "A")  # the link listens once the console has certified it
    key = _enrol(host, tmp_path, "liar")

    def liar() -> FakeNode:
        return FakeNode(("127.0.0.1", port_a), key, host.state.host_key_pub, name="liar", tamper=corrupt)

    first = liar()
    await _start_behind(first)
    try:
        # Chunks of about 10 ms: the link's own pool holds few, and the liar gets work all along.
        document = {"name": "behind-link", "operation": "invert", "chunk_size": 10,
                    "inputs": {"a": {"generate": {"count": 400, "shape": [200, 200], "seed": 74}}}}
        task_id = await host.frontend.submit(parse_task(document), "operator")
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 90)
        assert summary["state"] == "done"
        check_npz(host.frontend.result_file(task_id), document, rtol=1e-8)
        await wait_until(lambda: "liar" in _rows(host) and _rows(host)["liar"].state == "quarantined",
                         timeout=10, what="the liar to show as quarantined behind A")
        assert _rows(host)["A"].state != "quarantined" and _rows(host)["A"].errors == 0
    finally:
        await first.close()
    # Reconnecting does not wipe the slate: the link refuses the key itself.
    await wait_until(lambda: "liar" not in _rows(host), timeout=10, what="the liar's session to end")
    with pytest.raises(NodeRejected, match="quarantined"):
        await _start_behind(liar())


async def test_three_sessions_of_one_key_behind_a_link_get_three_ids(host: Host, tmp_path) -> None:
    from tests.fake_node import FakeNode

    _node(host, tmp_path, "A", [host.server.address[1]], listen=0)
    port_a = await _link_port(tmp_path, "A")
    key = _enrol(host, tmp_path, "triplet")
    triplets = [FakeNode(("127.0.0.1", port_a), key, host.state.host_key_pub, name="triplet") for _ in range(3)]
    try:
        ids = [(await _start_behind(node)).node_id for node in triplets]
        assert ids == ["triplet", "triplet-2", "triplet-3"]
        await wait_until(lambda: set(ids) <= set(_rows(host)), timeout=10, what="the console to see all three")
        assert all(_rows(host)[node_id].via == ("A",) for node_id in ids)
    finally:
        for node in triplets:
            await node.close()


def _det_liar(assign, result):
    """Honest everywhere but det, where every value is 0.1 % too large."""
    if assign.operation != "det" or result.result is None:
        return result
    import dataclasses
    return dataclasses.replace(result, result=result.result * 1.001)


async def test_a_liar_behind_a_link_is_blamed_and_the_link_never_is(host: Host, tmp_path) -> None:
    """The liar's wrong det values are caught (the link replicates them on its own pool) and blamed
    on the liar, never on the link; every value of the result is numpy's."""
    from tests.fake_node import FakeNode

    _node(host, tmp_path, "A", [host.server.address[1]], listen=0)
    port_a = await _link_port(tmp_path, "A")
    key = _enrol(host, tmp_path, "liar")
    liar = FakeNode(("127.0.0.1", port_a), key, host.state.host_key_pub, name="liar", slots=2, tamper=_det_liar)
    await _start_behind(liar)
    try:
        await wait_until(lambda: "liar" in _rows(host), timeout=10, what="the liar to show behind A")
        # Chunks of about 10 ms: the link's own pool holds few, and the liar gets work all along.
        document = {"name": "det-behind-link", "operation": "det", "chunk_size": 10,
                    "inputs": {"a": {"generate": {"count": 400, "shape": [200, 200], "seed": 76}}}}
        task_id = await host.frontend.submit(parse_task(document), "operator")
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 90)
        assert summary["state"] == "done"
        await wait_until(lambda: _rows(host)["liar"].state == "quarantined", timeout=10,
                         what="the liar to show as quarantined behind A")
        assert _rows(host)["A"].state != "quarantined" and _rows(host)["A"].errors == 0
        blamed = [e for e in host.frontend.events if e.kind == "blame"]
        invalid = [e for e in host.frontend.events if e.kind == "invalid"]
        assert len(blamed) == len(invalid) and all(e.node_id == "liar" for e in blamed)
        assert check_npz(host.frontend.result_file(task_id), document, rtol=1e-7) == 400  # every value
        assert liar.rejections, "the liar was never told why"
    finally:
        await liar.close()
