"""The front-end's SSH server: roles, and routing of each channel by role.

Roles are decided here and only here, from which authorized-keys file holds the key
that authenticated. A node key may open only the node subsystem; user and operator
keys may run only the user commands. The gate in front of it all — login timeout,
throttle, connection cap, ciphers, no PTYs and no forwarding — is the one every
chainconsole server has (``nodes.ssh.server``).
"""

from __future__ import annotations

import asyncio
import json
import os
import contextlib
import socket

import asyncssh

from console.engine.frontend import FrontEnd
from console.engine.keys import KeyEntry, KeyRegistry, Role, ensure_keypair, fingerprint
from console.engine.statedir import write_private_file
from console.ssh.user_commands import run_user_command
from nodes.node_session import NodeSession
from nodes.ssh import NODE_SUBSYSTEM, NODE_USERNAME
from nodes.ssh.server import GatedServer, ServerSettings, peer_address, refuse

__all__ = ["FrontEndServer", "ServerSettings"]

KEY_CHECK_S = 1.0


class FrontEndServer:
    """The gated SSH server in front of a FrontEnd, with roles from the key registry."""

    def __init__(self, frontend: FrontEnd, settings: ServerSettings | None = None) -> None:
        self.frontend = frontend
        self.settings = settings or ServerSettings()
        self.registry: KeyRegistry = frontend.registry
        self.gate: GatedServer | None = None
        self._watcher: asyncio.Task | None = None
        self.address: tuple[str, int] = (self.settings.host, self.settings.port)

    async def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen (on ``sock`` if given, bound already); return the address bound (port 0 picks a free one)."""
        host_key = ensure_keypair(self.frontend.state.host_key, "chainconsole-host")
        self.gate = GatedServer(self.settings, [host_key], self._authenticate, self._serve,
                                log=lambda line: self.frontend.log("error", line))
        self.address = await self.gate.start(sock)
        self._watcher = asyncio.get_running_loop().create_task(self._watch_keys())
        self._write_endpoint()
        return self.address

    def _authenticate(self, username: str, key: asyncssh.SSHKey, peer: str) -> KeyEntry | None:
        address = peer.rsplit(":", 1)[0]
        entry = self.registry.admit(key, address)
        if entry is None and self.registry.lookup(key) is not None:
            # Known, but its authorized-keys line does not let it in from here (from=).
            self.frontend.log("refused", f"key {fingerprint(key)} may not log in from {address} "
                                         "(its authorized-keys line says from where)")
            return None
        if entry is None and username == NODE_USERNAME:
            # Written on every refused login: on the writer, never on the loop.
            self.frontend.writer.post(self.registry.note_refused, key, peer)
        return entry

    def _write_endpoint(self) -> None:
        host, port = self.address
        data = {"host": host, "port": port, "pid": os.getpid()}
        write_private_file(self.frontend.state.endpoint, (json.dumps(data) + "\n").encode())

    async def _watch_keys(self) -> None:
        """Close the live sessions of keys that were removed (or changed role) on disk."""
        assert self.gate is not None
        while True:
            await asyncio.sleep(KEY_CHECK_S)
            try:
                self.frontend.refresh_node_keys()
                current = {e.fingerprint: e.role for e in self.registry.entries()}
            except Exception as exc:  # one bad pass must not end the watching
                self.frontend.log("error", f"cannot check the authorized keys: {exc!r}")
                continue
            for conn, entry in self.gate.identities():
                if current.get(entry.fingerprint) is not entry.role:
                    self.frontend.log("revoked", f"closing the session of {entry.name}: its key was removed")
                    conn.disconnect(asyncssh.DISC_BY_APPLICATION, "key no longer authorized")

    async def close(self) -> None:
        """Stop accepting, close every connection and wait for them to finish."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self.gate is not None:
            await self.gate.close()
        with contextlib.suppress(OSError, ValueError, AttributeError):  # only ever our own endpoint
            if json.loads(self.frontend.state.endpoint.read_text()).get("pid") == os.getpid():
                self.frontend.state.endpoint.unlink()

    async def _serve(self, process: asyncssh.SSHServerProcess, entry: KeyEntry) -> None:
        """Route one channel by role."""
        if process.subsystem is not None:
            if process.subsystem == NODE_SUBSYSTEM and entry.role is Role.NODE:
                address = peer_address(process.get_extra_info("connection"))
                await NodeSession.of_process(self.frontend, process, name=entry.name,
                                             fingerprint=entry.fingerprint, address=address).run()
            else:
                refuse(process, f"subsystem {process.subsystem!r} is not available to this key")
        elif entry.role is Role.NODE:
            refuse(process, "node keys may only open the node subsystem")
        else:
            await run_user_command(self, process, entry)
