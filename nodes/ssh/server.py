"""One gated SSH server, for the front-end and every chain link alike.

The gate is the same wherever nodes log in: public keys only, a login timeout, a cap on
connections, failed logins throttled per address, the cipher order, no PTYs and no
forwarding of ports, agents or X11. Who a key is comes from the ``authenticate``
callback; what a channel may do is for ``serve`` to decide. An exception escaping a
channel's handler would tear down every channel of its connection, so the edge here
catches it, logs it and answers "internal error" instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import asyncssh

from nodes.ssh import CIPHERS, MAX_PACKET, WINDOW
from nodes.ssh.throttle import DEFAULT_MAX_FAILURES, AuthThrottle
from protocol.errors import ExitStatus

IDENTITY = "chainconsole_identity"
"""The connection's extra-info key under which the authenticated identity is kept."""
CLOSE_WAIT_S = 5.0


@dataclass(frozen=True)
class ServerSettings:
    """How a server listens and how patiently it waits for peers."""

    host: str = "127.0.0.1"
    port: int = 8022
    keepalive_interval_s: float = 1.0
    """SSH keepalive period; a silent peer is dropped after about interval × (count + 1)."""
    keepalive_count: int = 3
    login_timeout_s: float = 20.0
    """An unauthenticated connection is closed after this long."""
    max_connections: int = 2000
    max_unauthenticated_per_address: int = 50
    """Connections from one address still logging in; past it, that address waits, no one else."""
    max_auth_failures: int = DEFAULT_MAX_FAILURES
    """Failed logins from one address within a minute before it is refused outright."""


Authenticate = Callable[[str, asyncssh.SSHKey, str], object | None]
"""(username, key, peer address) → the key's identity, or None to refuse it."""
Serve = Callable[[asyncssh.SSHServerProcess, object], Awaitable[None]]
"""Serves one channel of an authenticated connection, given its identity."""
Log = Callable[[str], None]


def peer_address(conn: asyncssh.SSHServerConnection) -> str:
    peer = conn.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def refuse(process: asyncssh.SSHServerProcess, message: str, status: int = ExitStatus.USAGE) -> None:
    """End a channel with one line on its stderr and an exit status."""
    process.stderr.write(f"chainconsole: {message}\n".encode())
    process.exit(status)


class _Gate(asyncssh.SSHServer):
    """Per-connection authentication: ask who the key is, remember it until login completes."""

    def __init__(self, server: GatedServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None
        self._candidate: object | None = None
        self._counted = True
        self._address = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self._address = host = str(peer[0]) if peer else "?"
        server = self._server
        server.connections.add(conn)
        server.logging_in[host] = server.logging_in.get(host, 0) + 1
        if len(server.connections) > server.settings.max_connections:
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections")
        elif server.logging_in[host] > server.settings.max_unauthenticated_per_address:
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections from this address")
        elif not server.throttle.allowed(host, time.monotonic()):
            conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many failed logins; try later")

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self._conn)
        self._logged_in()

    def begin_auth(self, username: str) -> bool:
        return True  # always require authentication

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        assert self._conn is not None
        if not self._server.throttle.allowed(self._address, time.monotonic()):
            return False  # counted per attempt: one connection cannot offer key after key
        identity = self._server.authenticate(username, key, peer_address(self._conn))
        if identity is None:
            self._server.throttle.failed(self._address, time.monotonic())
            return False
        # The last key validated before success is the one that signed (asyncssh checks
        # the signature right after this call), so remember it until auth completes.
        self._candidate = identity
        return True

    def auth_completed(self) -> None:
        assert self._conn is not None and self._candidate is not None
        self._conn.set_extra_info(**{IDENTITY: self._candidate})
        self._logged_in()

    def _logged_in(self) -> None:
        """This connection no longer counts as one logging in (it did, or it ended)."""
        if self._counted:
            self._counted = False
            host, logging_in = self._address, self._server.logging_in
            logging_in[host] -= 1
            if not logging_in[host]:
                del logging_in[host]


class GatedServer:
    """An asyncssh server behind the gate; ``serve`` gets each channel with its identity."""

    def __init__(self, settings: ServerSettings, host_keys: list, authenticate: Authenticate, serve: Serve,
                 log: Log = lambda line: None) -> None:
        self.settings = settings
        self.authenticate = authenticate
        self.throttle = AuthThrottle(max_failures=settings.max_auth_failures)
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.logging_in: dict[str, int] = {}
        """Connections per address that have not logged in yet."""
        self.address: tuple[str, int] = (settings.host, settings.port)
        self._host_keys = host_keys
        self._serve = serve
        self._log = log
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._handlers: set[asyncio.Task] = set()

    async def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen (on ``sock`` when it is already bound and listening); return the address bound."""
        s = self.settings
        where = {"sock": sock} if sock is not None else {"host": s.host, "port": s.port}
        self._acceptor = await asyncssh.create_server(
            lambda: _Gate(self), **where,
            server_host_keys=self._host_keys, process_factory=self._on_process, encoding=None,
            allow_pty=False, agent_forwarding=False, x11_forwarding=False, line_editor=False,
            keepalive_interval=s.keepalive_interval_s, keepalive_count_max=s.keepalive_count,
            login_timeout=s.login_timeout_s, compression_algs=None, encryption_algs=list(CIPHERS),
            max_pktsize=MAX_PACKET, window=WINDOW,
        )
        sock = self._acceptor.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        return self.address

    def set_host_keys(self, host_keys: list) -> None:
        """Offer other host keys (a chain link that was just certified) to new connections."""
        self._host_keys = host_keys
        if self._acceptor is not None:
            self._acceptor.update(server_host_keys=host_keys)

    def identities(self) -> Iterator[tuple[asyncssh.SSHServerConnection, object]]:
        """Each authenticated connection with its identity."""
        for conn in list(self.connections):
            identity = conn.get_extra_info(IDENTITY)
            if identity is not None:
                yield conn, identity

    async def close(self) -> None:
        """Stop accepting, close every connection and wait for them to finish."""
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
                await asyncio.wait_for(conn.wait_closed(), CLOSE_WAIT_S)
        if self._acceptor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), CLOSE_WAIT_S)

    def _on_process(self, process: asyncssh.SSHServerProcess) -> None:
        handler = asyncio.get_running_loop().create_task(self._channel(process))
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _channel(self, process: asyncssh.SSHServerProcess) -> None:
        """One channel, from the gate to its end; nothing escapes to tear the connection down."""
        identity = process.get_extra_info("connection").get_extra_info(IDENTITY)
        try:
            if identity is None:
                refuse(process, "not authenticated")
            else:
                await self._serve(process, identity)
        except (asyncssh.Error, ConnectionError, BrokenPipeError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the edge
            self._log(f"internal error serving {identity}: {exc!r}")
            with contextlib.suppress(Exception):
                refuse(process, "internal error", ExitStatus.INTERNAL)
        finally:
            with contextlib.suppress(Exception):
                process.exit(process.exit_status if process.exit_status is not None else 0)
