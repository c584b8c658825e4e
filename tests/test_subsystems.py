"""Subsystems other than the node protocol: a line and exit status 2, or, for sftp, refused in SSH."""

from __future__ import annotations

import asyncssh
import pytest

from console.engine.host import Host

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("key", ["operator_key", "node_key"])
async def test_other_subsystems_are_refused_with_a_line_and_exit_status_2(host: Host, key: str) -> None:
    async with asyncssh.connect(*host.server.address, username="x", client_keys=[str(getattr(host.state, key))],
                                known_hosts=None, config=None, agent_path=None, gss_host=None) as conn:
        refused = await conn.run(subsystem="backup", check=False)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.run(subsystem="sftp", check=False)  # no SFTP server: SSH itself says no
    assert refused.exit_status == 2
    assert refused.stderr.startswith("chainconsole: ") and "backup" in refused.stderr
