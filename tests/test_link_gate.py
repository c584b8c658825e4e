"""A chain link guards its door exactly as the console does: one gate, the same limits, the same answers."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from console.engine.host import Host
from console.engine.statedir import StateDir
from nodes.agent import NodeAgent, NodeSettings
from nodes.relay import Relay, RelaySettings
from nodes.ssh.server import ServerSettings
from nodes.pool import WorkerPool
from nodes.work import LocalWork
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

GATE = ServerSettings(port=0, login_timeout_s=3.0, max_auth_failures=3, max_unauthenticated_per_address=4)


@pytest.fixture(params=["console", "link"])
async def door(request, state: StateDir, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """The address of a console, or of an in-process chain link in front of one, both with ``GATE``."""
    async with Host(state, GATE) as console:
        if request.param == "console":
            yield console.server.address
            return
        relay = Relay(RelaySettings("A", ("127.0.0.1", 0), tmp_path / "link_host_key", server=GATE), LocalWork(WorkerPool(1)))
        agent = NodeAgent(NodeSettings(upstreams=(console.server.address,), key_path=state.node_key, name="A",
                                       slots=1, host_key=state.host_key_pub), relay,
                          host_key_line=relay.host_key_line, out=io.StringIO())
        running = asyncio.get_running_loop().create_task(agent.run())
        try:
            await wait_until(lambda: relay.address is not None and relay.address[1] != 0, 30, "the link to listen")
            yield relay.address
        finally:
            agent.stop()
            await asyncio.wait_for(running, 30)


async def test_an_idle_unauthenticated_connection_is_closed_after_the_login_timeout(door) -> None:
    reader, writer = await asyncio.open_connection(*door)
    try:
        assert (await reader.readline()).startswith(b"SSH-2.0-")
        # We never log in: the server must hang up by itself, long before the 20 s default.
        await asyncio.wait_for(reader.read(), 10)
        assert reader.at_eof()
    finally:
        writer.close()


async def test_failed_logins_get_the_address_refused_with_the_same_answer(door, state: StateDir, tmp_path) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    stranger.write_private_key(tmp_path / "stranger")

    async def login(key: Path) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(*door, username="node", client_keys=[str(key)], known_hosts=None,
                                      config=None, agent_path=None, gss_host=None)

    for _ in range(GATE.max_auth_failures):
        with pytest.raises(asyncssh.PermissionDenied):
            await login(tmp_path / "stranger")
    # Now even an enrolled node key is turned away from this address, for a while: the
    # connection is dropped as it opens (the client may see the reason, or only the reset).
    with pytest.raises((asyncssh.DisconnectError, ConnectionResetError)) as refused:
        await login(state.node_key)
    if isinstance(refused.value, asyncssh.DisconnectError):
        assert refused.value.reason == "too many failed logins; try later"


async def test_one_connection_cannot_offer_key_after_key_past_the_limit(door, state: StateDir, tmp_path) -> None:
    strangers = []
    for i in range(GATE.max_auth_failures + 2):
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(tmp_path / f"stranger{i}")
        strangers.append(str(tmp_path / f"stranger{i}"))
    # The enrolled key comes last: by then this address has failed too often, so it is refused too.
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(*door, username="node", client_keys=[*strangers, str(state.node_key)],
                               known_hosts=None, config=None, agent_path=None, gss_host=None)


async def test_one_address_cannot_hold_every_login_slot(door, state: StateDir) -> None:
    idle = [await asyncio.open_connection(*door) for _ in range(GATE.max_unauthenticated_per_address)]
    try:
        for reader, _ in idle:
            assert (await reader.readline()).startswith(b"SSH-2.0-")
        reader, writer = await asyncio.open_connection(*door)
        with contextlib.suppress(ConnectionResetError):
            # Dropped as it opens, well before the login timeout would have closed it.
            await asyncio.wait_for(reader.read(), GATE.login_timeout_s / 2)
        writer.close()
    finally:
        for _, idle_writer in idle:
            idle_writer.close()
    # Once those are gone, the address may log in again.
    for _ in range(50):
        try:
            async with asyncssh.connect(*door, username="node", client_keys=[str(state.node_key)], known_hosts=None,
                                        config=None, agent_path=None, gss_host=None):
                return
        except (asyncssh.DisconnectError, ConnectionResetError):
            await asyncio.sleep(0.1)
    raise AssertionError("the address stayed locked out after its idle connections closed")
