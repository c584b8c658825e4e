"""Key files are hostile input too: a bad byte or a garbage line costs that line only."""

from __future__ import annotations

import asyncio
import stat

import asyncssh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from console.engine.host import Host
from console.engine.keys import KeyRegistry, Role, fingerprint, public_key_line, read_authorized
from console.engine.statedir import StateDir
from console.ssh.server import ServerSettings
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)


async def _login(host: Host, key_path) -> str:
    async with asyncssh.connect(*host.server.address, username="user", client_keys=[str(key_path)],
                                known_hosts=([str(host.state.host_key_pub)], [], []), config=None,
                                agent_path=None, gss_host=None) as conn:
        return (await conn.run("tasks", check=True)).stdout


def _user_key(tmp_path, name: str):
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(tmp_path / name)
    return key, tmp_path / name


async def test_a_bad_byte_in_authorized_users_locks_nobody_out(host: Host, tmp_path) -> None:
    alice, alice_path = _user_key(tmp_path, "alice")
    bob, bob_path = _user_key(tmp_path, "bob")
    lines = [public_key_line(alice, "alice").encode(), b"\xff\xfe not text", b"ssh-ed25519 garbage!!",
             public_key_line(bob, "bob").encode()]
    host.state.authorized_users.write_bytes(b"\n".join(lines) + b"\n")
    assert await _login(host, alice_path) and await _login(host, bob_path)
    assert await _login(host, host.state.operator_key)  # another file, untouched
    warnings = [e.message for e in host.frontend.events if e.kind == "warning"]
    assert any(f"{host.state.authorized_users} line 2" in w for w in warnings), warnings
    assert any(f"{host.state.authorized_users} line 3" in w for w in warnings), warnings
    assert not [e for e in host.frontend.events if e.kind == "error"]

    # The key watcher is alive: removing bob's line closes bob's live session.
    conn = await asyncssh.connect(*host.server.address, username="user", client_keys=[str(bob_path)],
                                  known_hosts=([str(host.state.host_key_pub)], [], []), config=None,
                                  agent_path=None, gss_host=None)
    try:
        host.state.authorized_users.write_bytes(b"\n".join(lines[:3]) + b"\n")
        await asyncio.wait_for(conn.wait_closed(), 10)
    finally:
        conn.close()
    assert any(e.kind == "revoked" for e in host.frontend.events)


def test_adding_and_removing_keys_keeps_bad_lines_as_they_were(state: StateDir, tmp_path) -> None:
    alice, _ = _user_key(tmp_path, "alice")
    state.authorized_users.write_bytes(b"\xff\xfe kept as is\n")
    registry = KeyRegistry(state)
    entry = registry.add(Role.USER, public_key_line(alice), "alice")
    assert registry.find(entry.fingerprint) is not None
    assert registry.remove(entry.fingerprint)
    assert state.authorized_users.read_bytes() == b"\xff\xfe kept as is\n"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_no_file_content_makes_reading_keys_raise(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("keys") / "authorized_users"
    path.write_bytes(data)
    problems: list[str] = []
    assert read_authorized(path, Role.USER, problems.append) == []
    assert all(str(path) in p for p in problems)


async def test_a_key_file_others_may_write_is_fixed_with_a_warning(state: StateDir, tmp_path) -> None:
    state.authorized_users.chmod(0o666)
    state.root.chmod(0o777)
    async with Host(state, ServerSettings(port=0)) as host:
        assert stat.S_IMODE(state.authorized_users.stat().st_mode) == 0o600
        assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
        warnings = [e.message for e in host.frontend.events if e.kind == "warning"]
        assert any(str(state.authorized_users) in w for w in warnings)
        assert any(str(state.root) in w for w in warnings)
        # Made loose again while running: fixed at the next look at the file.
        state.authorized_nodes.chmod(0o662)
        await wait_until(lambda: stat.S_IMODE(state.authorized_nodes.stat().st_mode) == 0o600,
                         what="the key watcher to fix the mode")
        assert any(str(state.authorized_nodes) in e.message for e in host.frontend.events if e.kind == "warning")


def _options_line(options: str, key: asyncssh.SSHKey, name: str) -> str:
    return f"{options} {public_key_line(key, name)}"


async def test_a_from_option_lets_a_key_in_only_from_the_addresses_it_names(host: Host, tmp_path) -> None:
    here, here_path = _user_key(tmp_path, "here")
    away, away_path = _user_key(tmp_path, "away")
    host.state.authorized_users.write_text("\n".join([
        _options_line('from="127.0.0.0/8",no-pty,no-port-forwarding', here, "here"),
        _options_line('from="10.0.0.0/8"', away, "away"),
    ]) + "\n")
    assert await _login(host, here_path)  # 127.0.0.1 is in 127.0.0.0/8
    with pytest.raises(asyncssh.PermissionDenied):
        await _login(host, away_path)  # the key is listed, but not for this address
    refused = [e.message for e in host.frontend.events if e.kind == "refused"]
    assert any(fingerprint(away) in message and "127.0.0.1" in message for message in refused), refused
    # The name is the line's comment, whatever options come before the key.
    entry = host.server.registry.lookup(here)
    assert entry is not None and (entry.role, entry.name) == (Role.USER, "here")
    # Removing a key finds it behind its options too.
    assert host.server.registry.remove(fingerprint(away))
    assert "10.0.0.0/8" not in host.state.authorized_users.read_text()
    assert 'from="127.0.0.0/8"' in host.state.authorized_users.read_text()


async def test_an_option_this_server_cannot_honour_skips_the_line_and_says_so(host: Host, tmp_path) -> None:
    forced, forced_path = _user_key(tmp_path, "forced")
    host.state.authorized_users.write_text(_options_line('command="tasks"', forced, "forced") + "\n")
    # command= would narrow what the key may do: letting it in without would widen it.
    with pytest.raises(asyncssh.PermissionDenied):
        await _login(host, forced_path)
    warnings = [e.message for e in host.frontend.events if e.kind == "warning"]
    assert any("line 1: option command is not supported here; line skipped" in w for w in warnings), warnings
