"""The front-end's SSH server: authentication, roles, and routing of each channel.

Roles are decided here and only here, from which authorized-keys file holds the key
that authenticated. A node key may open only the node subsystem; user and operator
keys may run only the user commands. Everything else SSH could do — shells, PTYs,
forwarding of ports, agents or X11 — is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass

import asyncssh

from console.engine.frontend import FrontEnd
from console.engine.keys import KeyEntry, KeyRegistry, Role, ensure_keypair
from console.ssh.node_session import NodeSession
from console.engine.statedir import write_private_file
from console.ssh.throttle import DEFAULT_MAX_FAILURES, AuthThrottle
from console.ssh.user_commands import run_user_command

NODE_SUBSYSTEM = "chainconsole-node"
NODE_USERNAME = "node"

# AES-GCM first: the fastest cipher asyncssh offers on these machines (PITFALLS.md).
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes256-ctr"]
MAX_PACKET = 256 * 1024
KEY_CHECK_S = 1.0
WINDOW = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """How the SSH server listens and how patiently it waits for peers."""

    host: str = "127.0.0.1"
    port: int = 8022
    keepalive_interval_s: float = 1.0
    """SSH keepalive period; a silent peer is dropped after about interval × (count + 1)."""
    keepalive_count: int = 3
    login_timeout_s: float = 20.0
    max_connections: int = 2000
    max_auth_failures: int = DEFAULT_MAX_FAILURES
    """Failed logins from one address within a minute before it is refused outright."""


def _peer(conn: asyncssh.SSHServerConnection) -> str:
    peer = conn.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def _peer_host(conn: asyncssh.SSHServerConnection) -> str:
    peer = conn.get_extra_info("peername")
    return str(peer[0]) if peer else "?"


class _Gate(asyncssh.SSHServer):
    """Per-connection authentication: look the key up, remember who it is."""

    def __init__(self, server: FrontEndServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None
        self._candidate: KeyEntry | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server.connections.add(conn)
        if len(self._server.connections) > self._server.settings.max_connections:
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections")
        elif not self._server.throttle.allowed(_peer_host(conn), time.monotonic()):
            conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many failed logins; try later")

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always require authentication

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        entry = self._server.registry.lookup(key)
        if entry is None:
            if self._conn is not None:
                self._server.throttle.failed(_peer_host(self._conn), time.monotonic())
                if username == NODE_USERNAME:
                    self._server.registry.note_refused(key, _peer(self._conn))
            return False
        # The last key validated before success is the one that signed (asyncssh checks
        # the signature right after this call), so remember it until auth completes.
        self._candidate = entry
        return True

    def auth_completed(self) -> None:
        assert self._conn is not None and self._candidate is not None
        self._conn.set_extra_info(chainconsole_key=self._candidate)


class FrontEndServer:
    """The asyncssh server in front of a FrontEnd."""

    def __init__(self, frontend: FrontEnd, settings: ServerSettings | None = None) -> None:
        self.frontend = frontend
        self.settings = settings or ServerSettings()
        self.registry: KeyRegistry = frontend.registry
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.throttle = AuthThrottle(max_failures=self.settings.max_auth_failures)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._watcher: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()
        self.address: tuple[str, int] = (self.settings.host, self.settings.port)

    async def start(self) -> tuple[str, int]:
        """Listen; return the address actually bound (port 0 picks a free one)."""
        host_key = ensure_keypair(self.frontend.state.host_key, "chainconsole-host")
        s = self.settings
        self._acceptor = await asyncssh.create_server(
            lambda: _Gate(self), s.host, s.port,
            server_host_keys=[host_key],
            process_factory=self._on_process,
            encoding=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            line_editor=False,
            keepalive_interval=s.keepalive_interval_s,
            keepalive_count_max=s.keepalive_count,
            login_timeout=s.login_timeout_s,
            compression_algs=None,
            encryption_algs=CIPHERS,
            max_pktsize=MAX_PACKET,
            window=WINDOW,
        )
        self._watcher = asyncio.get_running_loop().create_task(self._watch_keys())
        sock = self._acceptor.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        self._write_endpoint()
        return self.address

    def _write_endpoint(self) -> None:
        host, port = self.address
        data = {"host": host, "port": port, "pid": os.getpid()}
        write_private_file(self.frontend.state.endpoint, (json.dumps(data) + "\n").encode())

    async def _watch_keys(self) -> None:
        """Close the live sessions of keys that were removed (or changed role) on disk."""
        while True:
            await asyncio.sleep(KEY_CHECK_S)
            self.frontend.refresh_node_keys()
            current = {e.fingerprint: e.role for e in self.registry.entries()}
            for conn in list(self.connections):
                entry: KeyEntry | None = conn.get_extra_info("chainconsole_key")
                if entry is not None and current.get(entry.fingerprint) is not entry.role:
                    self.frontend.log("revoked", f"closing the session of {entry.name}: its key was removed")
                    conn.disconnect(asyncssh.DISC_BY_APPLICATION, "key no longer authorized")

    async def close(self) -> None:
        """Stop accepting, close every connection and wait for them to finish."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self.connections):
            conn.close()
        for handler in list(self._handlers):
            handler.cancel()
        for handler in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        if self._acceptor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), 5)
        with contextlib.suppress(FileNotFoundError):
            self.frontend.state.endpoint.unlink()

    def _on_process(self, process: asyncssh.SSHServerProcess) -> None:
        handler = asyncio.get_running_loop().create_task(self._serve(process))
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _serve(self, process: asyncssh.SSHServerProcess) -> None:
        """Route one channel by role; nothing escapes to tear the connection down."""
        conn = process.get_extra_info("connection")
        entry: KeyEntry | None = conn.get_extra_info("chainconsole_key")
        try:
            if entry is None:
                _refuse(process, "not authenticated")
            elif process.subsystem is not None:
                if process.subsystem == NODE_SUBSYSTEM and entry.role is Role.NODE:
                    await NodeSession(self.frontend, process, entry, _peer(conn)).run()
                else:
                    _refuse(process, f"subsystem {process.subsystem!r} is not available to this key")
            elif entry.role is Role.NODE:
                _refuse(process, "node keys may only open the node subsystem")
            else:
                await run_user_command(self, process, entry)
        except (asyncssh.Error, ConnectionError, BrokenPipeError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the edge: never let one channel take the connection down
            self.frontend.log("error", f"internal error serving {entry.name if entry else '?'}: {exc!r}")
            with contextlib.suppress(Exception):
                _refuse(process, "internal error", 70)
        finally:
            with contextlib.suppress(Exception):
                process.exit(process.exit_status if process.exit_status is not None else 0)


def _refuse(process: asyncssh.SSHServerProcess, message: str, status: int = 2) -> None:
    process.stderr.write(f"chainconsole: {message}\n".encode())
    process.exit(status)
