"""Keys and their lifecycle: files, modes, approval, removal, pinning, throttling."""

from __future__ import annotations

import asyncio
import json
import stat
import sys

import asyncssh
import pytest

from console.engine.host import Host
from console.engine.keys import KeyRegistry, Role, fingerprint
from console.engine.statedir import StateDir
from nodes.ssh.throttle import AuthThrottle
from tests.conftest import REPO, cli, wait_until

pytestmark = pytest.mark.timeout(90)


def test_state_dir_files_are_private(state: StateDir) -> None:
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    for path in (state.host_key, state.operator_key, state.node_key, state.authorized_nodes,
                 state.authorized_operators):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_keys_show_json_lists_every_documented_path(state: StateDir) -> None:
    result = cli("keys", "show", "--json", "--state-dir", str(state.root))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    for name in ("host_key", "host_key_pub", "operator_key", "operator_key_pub", "node_key", "node_key_pub",
                 "authorized_nodes", "authorized_users"):
        assert (state.root / info[name].rsplit("/", 1)[-1]).exists(), name
    assert info["fingerprints"]["host_key"] == fingerprint(asyncssh.read_private_key(state.host_key))


def test_keys_show_names_the_public_halves_to_copy_and_creates_nothing_on_a_fresh_machine(tmp_path,
                                                                                          state: StateDir) -> None:
    shown = cli("keys", "show", "--state-dir", str(state.root))
    assert shown.returncode == 0, shown.stderr
    assert str(state.host_key_pub) in shown.stdout and "--host-key" in shown.stdout
    for private in (state.host_key, state.operator_key, state.node_key):
        assert f"{private} " not in shown.stdout and not shown.stdout.rstrip().endswith(str(private))
        assert all(not line.split()[-1] == str(private) for line in shown.stdout.splitlines())
    fresh = tmp_path / "fresh"
    looked = cli("keys", "show", "--state-dir", str(fresh))
    assert looked.returncode == 0 and "no state folder" in looked.stdout and str(fresh) in looked.stdout
    looked = cli("keys", "show", "--json", "--state-dir", str(fresh))
    assert looked.returncode == 0 and json.loads(looked.stdout)["exists"] is False
    assert not fresh.exists()


def test_keys_cli_adds_and_removes_a_user(state: StateDir, tmp_path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "alice.pub").write_bytes(key.export_public_key())
    added = cli("keys", "add-user", str(tmp_path / "alice.pub"), "--name", "alice", "--state-dir", str(state.root))
    assert added.returncode == 0, added.stderr
    entry = KeyRegistry(state).lookup(key)
    assert entry is not None and entry.role is Role.USER and entry.name == "alice"
    removed = cli("keys", "remove", entry.fingerprint, "--state-dir", str(state.root))
    assert removed.returncode == 0
    assert KeyRegistry(state).lookup(key) is None
    again = cli("keys", "remove", entry.fingerprint, "--state-dir", str(state.root))
    assert again.returncode == 2 and "no key" in again.stderr and "Traceback" not in again.stderr
    bad = cli("keys", "add-node", "ssh-ed25519 not-a-key", "--state-dir", str(state.root))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


async def test_removing_a_key_closes_its_live_session_at_once(host: Host, nodes) -> None:
    node = nodes("doomed")
    await wait_until(lambda: any(r.name == "doomed" and r.state != "lost" for r in host.frontend.node_rows()),
                     what="the node to join")
    local = host.server.registry.lookup(asyncssh.read_private_key(host.state.node_key))
    assert host.server.registry.remove(local.fingerprint)
    await wait_until(lambda: any(r.name == "doomed" and r.state == "lost" for r in host.frontend.node_rows()),
                     timeout=5, what="the session to be closed")
    # Its retries are now refused and it is listed as pending, for an operator to decide.
    await wait_until(lambda: any(p.fingerprint == local.fingerprint for p in host.server.registry.pending()),
                     timeout=10, what="the refused key to be pending")
    assert node.poll() is None  # the node keeps waiting for approval


async def test_a_node_refuses_a_front_end_with_another_host_key(host: Host, tmp_path) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "other.pub").write_bytes(impostor.export_public_key())
    address = host.server.address
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes", "--connect", f"{address[0]}:{address[1]}", "--key", str(host.state.node_key),
        "--host-key", str(tmp_path / "other.pub"), "--slots", "1", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert b"host key does not match" in err and b"Traceback" not in err


def test_the_login_throttle_refuses_only_the_noisy_address() -> None:
    throttle = AuthThrottle(max_failures=3, window_s=10)
    for t in range(3):
        assert throttle.allowed("10.9.9.9", t)
        throttle.failed("10.9.9.9", t)
    assert not throttle.allowed("10.9.9.9", 3)
    assert throttle.allowed("10.8.8.8", 3)
    assert throttle.allowed("10.9.9.9", 14)  # the window slid past the failures


async def test_failed_logins_get_an_address_refused(state: StateDir, tmp_path) -> None:
    from console.ssh.server import ServerSettings

    stranger = asyncssh.generate_private_key("ssh-ed25519")
    stranger.write_private_key(tmp_path / "stranger")
    async with Host(state, ServerSettings(port=0, max_auth_failures=3)) as hosting:
        address = hosting.server.address
        for _ in range(3):
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect(*address, username="u", client_keys=[str(tmp_path / "stranger")],
                                       known_hosts=None, config=None, agent_path=None, gss_host=None)
        # Now even the operator's own key is turned away from this address, for a while.
        with pytest.raises((asyncssh.DisconnectError, ConnectionError)):
            await asyncssh.connect(*address, username="u", client_keys=[str(state.operator_key)],
                                   known_hosts=None, config=None, agent_path=None, gss_host=None)


async def test_a_key_enrolled_without_a_name_never_takes_the_name_in_its_comment(host: Host, tmp_path) -> None:
    """Ownership comes from the enrolment name: a key calling itself "operator" is not the operator."""
    from protocol.taskfile import parse_task

    sneaky = asyncssh.generate_private_key("ssh-ed25519", comment="operator")
    sneaky.write_private_key(tmp_path / "sneaky")
    entry = host.frontend.registry.add(Role.USER, sneaky.export_public_key().decode())
    assert entry.name != "operator" and entry.name.startswith("key-")
    assert entry.name == "key-" + entry.fingerprint.removeprefix("SHA256:")[:12].replace("+", "-").replace("/", "-")
    task_id = await host.frontend.submit(parse_task({"name": "mine", "operation": "det", "inputs": {
        "a": {"generate": {"count": 2, "shape": [2, 2], "seed": 1}}}}), "operator")
    async with asyncssh.connect(*host.server.address, username="operator", client_keys=[str(tmp_path / "sneaky")],
                                known_hosts=None, config=None, agent_path=None, gss_host=None) as conn:
        listed = await conn.run("tasks", check=False)
        assert listed.exit_status == 0 and json.loads(listed.stdout) == []
        status = await conn.run(f"status {task_id}", check=False)
        assert status.exit_status == 2 and f"no task '{task_id}'" in status.stderr
        cancel = await conn.run(f"cancel {task_id}", check=False)
        assert cancel.exit_status == 2
    assert host.frontend.task(task_id).state != "cancelled"
