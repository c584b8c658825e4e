"""``chainconsole launch ssh`` against a real OpenSSH sshd on 127.0.0.1, nodes dialling back to a real front-end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from console.engine.host import Host
from console.launch.ssh_hosts import HostSpec, HostSpecError, parse_hosts
from protocol.taskfile import parse_task
from tests.conftest import REPO, wait_until
from tests.real_services import start_sshd, stop_group
from tests.reference import expected_item

pytestmark = pytest.mark.timeout(120)

TASK = {"name": "over-ssh", "operation": "invert", "chunk_size": 25,
        "inputs": {"a": {"generate": {"count": 400, "shape": [16, 16], "seed": 21}}}}


def node_pids(name: str) -> list[int]:
    """Node agents (not their workers) running under ``--name name``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if b"nodes" in args and name.encode() in args and b"--name" in args:
                found[int(entry.name)] = parent
    # Forked workers carry their node's command line: a node is the one whose parent is not a node.
    return [pid for pid, parent in found.items() if parent not in found]


@pytest.fixture
def sshd(tmp_path):
    server = start_sshd(tmp_path / "sshd")
    with open(server.known_hosts, "a") as known:  # the same sshd as a second "host"
        known.write(f"[localhost]:{server.port} " + (tmp_path / "sshd" / "host_key.pub").read_text())
    yield server
    stop_group(server.proc)


async def test_launch_ssh_keeps_a_node_on_each_host_restarts_one_that_dies_and_stops_them_all(
        host: Host, sshd, tmp_path) -> None:
    frontend = host.frontend
    assert host.server is not None
    address = "{}:{}".format(*host.server.address)
    hosts = f"127.0.0.1:{sshd.port},{sshd.user}@localhost:{sshd.port}"
    log = open(tmp_path / "launcher.log", "w+")
    launcher = subprocess.Popen(
        [sys.executable, "-c", "from console.cli.main import main; main()", "launch", "ssh", hosts,
         "--state-dir", str(host.state.root), "--connect", address, "--name", "farm", "--slots", "1",
         "--ssh-key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts), "--no-ssh-config",
         "--node-command", f"{sys.executable} -m nodes", "--remote-dir", str(tmp_path / "remote")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    names = {"farm-127.0.0.1", "farm-localhost"}
    try:
        def live() -> set[str]:
            return {r.name for r in frontend.node_rows() if r.state in ("idle", "busy")}

        await wait_until(lambda: live() >= names, timeout=60, what="a node on each host")
        await wait_until(lambda: {(j.job_id, j.state) for j in frontend.job_rows()}
                         == {(f"127.0.0.1:{sshd.port}", "running"), (f"localhost:{sshd.port}", "running")},
                         what="the launcher's report of its hosts")
        task_id = await frontend.submit(parse_task(TASK), "operator")
        summary = await asyncio.wait_for(frontend.wait(task_id), 60)
        assert summary["state"] == "done" and summary["ok_items"] == 400
        assert set(summary["items_per_node"]) <= names
        with np.load(frontend.result_file(task_id)) as data:
            for i in range(0, 400, 37):
                np.testing.assert_allclose(data["result"][i], expected_item(TASK, i), rtol=1e-8)

        # A node that dies is started again.
        (victim,) = node_pids("farm-localhost")
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: "farm-localhost" not in live(), what="the killed node to be gone")
        await wait_until(lambda: "farm-localhost" in live() and node_pids("farm-localhost") != [victim],
                         timeout=60, what="the node to be started again")
        log.seek(0)
        output = log.read()
        assert f"localhost:{sshd.port}: restarting (node" in output

        # On stop every node drains and goes, and the launcher's key is trusted no more.
        launcher.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(asyncio.to_thread(launcher.wait), 60) == 0
        await wait_until(lambda: not live() and not node_pids("farm-"), what="every node to stop")
        assert {r.state for r in frontend.node_rows() if r.name in names} <= {"drained", "left"}  # none lost
        await wait_until(lambda: any(e.kind == "keys" and "launcher farm withdrew" in e.message
                                     for e in frontend.events), what="the key to be withdrawn")
        assert frontend.job_rows() == []
        log.seek(0)
        output = log.read()
        assert f"127.0.0.1:{sshd.port}: stopped" in output and f"localhost:{sshd.port}: stopped" in output
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        log.close()


def test_nodes_are_named_after_their_hosts_and_ports_only_where_hosts_repeat(tmp_path) -> None:
    from console.launch.settings import SshSettings
    from console.launch.ssh_hosts import SshLauncher

    launcher = SshLauncher("farm", parse_hosts("a:22,a:2222,b:22"), SshSettings("fe:8022", tmp_path / "k"),
                           None, tmp_path)  # type: ignore[arg-type]
    assert [h.node for h in launcher.hosts.values()] == ["farm-a-22", "farm-a-2222", "farm-b"]


def test_host_lists_read_as_ssh_users_write_them(tmp_path) -> None:
    assert parse_hosts("a, bob@b:2222 c") == [HostSpec("a"), HostSpec("b", 2222, "bob"), HostSpec("c")]
    listing = tmp_path / "hosts"
    listing.write_text("# the rack\nn1\nn2  # spare\n")
    assert [h.host for h in parse_hosts(f"@{listing}")] == ["n1", "n2"]


@pytest.mark.parametrize("text, problem", [("", "no hosts"), ("a,a", "twice"), ("a:99999", "port"),
                                           ("bob@", "not a host"), ("a b@", "not a host"), ("@/nonexistent", "cannot read")])
def test_a_bad_host_list_is_refused_with_its_reason(text: str, problem: str) -> None:
    with pytest.raises(HostSpecError, match=problem):
        parse_hosts(text)
