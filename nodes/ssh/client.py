"""Opening an SSH connection to a front-end or chain link: one set of options for every client."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from nodes.ssh import CIPHERS, MAX_PACKET, WINDOW

CONNECT_TIMEOUT_S = 10.0


class FirstUseTrust(asyncssh.SSHClient):
    """Trust on first use: accept the server, and remember the key that vouched for it.

    A server presenting an OpenSSH host certificate (a chain link) is vouched for by the
    certificate's signer, the console, so that is the key to pin — not the link's own key,
    which the console itself never presents.
    """

    def __init__(self) -> None:
        self.trusted: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.trusted = key
        return True

    def validate_host_ca_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.trusted = key
        return True


FIRST_USE = ([], [], [])
"""``known_hosts`` for trust on first use: nothing trusted yet, so every key goes to ``FirstUseTrust``."""


async def open_connection(host: str, port: int, *, username: str, key: Path, known_hosts: object,
                          keepalive_interval_s: float = 0.0, keepalive_count: int = 3,
                          connect_timeout_s: float = CONNECT_TIMEOUT_S,
                          client_factory: type[asyncssh.SSHClient] | None = None) -> asyncssh.SSHClientConnection:
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
        client_factory=client_factory,
    )
