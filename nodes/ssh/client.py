"""Opening an SSH connection to a front-end or chain link: one set of options for every client."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from nodes.ssh import CIPHERS, MAX_PACKET, WINDOW

CONNECT_TIMEOUT_S = 10.0


async def open_connection(host: str, port: int, *, username: str, key: Path, known_hosts: object,
                          keepalive_interval_s: float = 0.0, keepalive_count: int = 3,
                          connect_timeout_s: float = CONNECT_TIMEOUT_S) -> asyncssh.SSHClientConnection:
    """Connect with ``key`` only, checking the host against ``known_hosts``.

    The user's own SSH set-up (config file, agent, Kerberos) never leaks in; errors are
    asyncssh's own (``PermissionDenied``, ``HostKeyNotVerifiable``, ``OSError`` …), for
    the caller to turn into its own words.
    """
    return await asyncssh.connect(
        host, port, username=username, client_keys=[str(key)], known_hosts=known_hosts,
        config=None, agent_path=None, gss_host=None, connect_timeout=connect_timeout_s,
        keepalive_interval=keepalive_interval_s, keepalive_count_max=keepalive_count,
        compression_algs=None, encryption_algs=list(CIPHERS), max_pktsize=MAX_PACKET, window=WINDOW,
    )
