"""One node's session, at the front-end or at a chain link: hello, welcome, messages, goodbye.

The session moves messages and nothing else: it reads the node's hello, asks the shell
to admit it, passes every message on, and tells the shell when the session ended and
why. A node that breaks the protocol gets an ``Error`` message and is disconnected; the
hub and every other session carry on.
"""

from __future__ import annotations

import asyncio

import asyncssh

from nodes.hub_shell import HubShell
from nodes.ssh.channel import BROKEN, MessageChannel
from protocol.errors import RemoteProtocolError
from protocol.hub import Refused
from protocol.messages import BATCHES_SINCE, PROTOCOL_VERSION, SUPPORTED_VERSIONS, Bye, Error, Hello, Reject

HELLO_TIMEOUT_S = 10.0


class NodeSession:
    """The node subsystem channel of one connected node."""

    def __init__(self, shell: HubShell, channel: MessageChannel, *, name: str, fingerprint: str,
                 address: str) -> None:
        self.shell = shell
        self.channel = channel
        self.name = name
        """The name to use when the node's hello gives none (the key's enrolment name)."""
        self.fingerprint = fingerprint
        self.address = address
        self.node_id: str | None = None

    @classmethod
    def of_process(cls, shell: HubShell, process: asyncssh.SSHServerProcess, *, name: str,
                   fingerprint: str, address: str) -> NodeSession:
        return cls(shell, MessageChannel.of_server_process(process), name=name, fingerprint=fingerprint,
                   address=address)

    # -- NodeLink, called by the shell ---------------------------------------------------------

    def send(self, message: object) -> None:
        self.channel.send(message)

    def close(self, reason: str, *, farewell: bool = True) -> None:
        """End the session now; with ``farewell`` the node is told to leave, not to come back."""
        if farewell:
            self.channel.send(Bye(reason))
        self.channel.close(reason)

    # -- the read loop -------------------------------------------------------------------------

    async def run(self) -> None:
        clean, reason = False, "connection lost"
        try:
            hello = await asyncio.wait_for(self.channel.receive(), HELLO_TIMEOUT_S)
            if not isinstance(hello, Hello):
                raise RemoteProtocolError(f"expected hello, got {type(hello).__name__}")
            if hello.protocol_version not in SUPPORTED_VERSIONS:
                spoken = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
                self.send(Reject(f"protocol version {hello.protocol_version} not supported; "
                                 f"this front-end speaks versions {spoken}", PROTOCOL_VERSION))
                return
            if hello.via:
                # Every node says hello to the hub it is connected to; links never forward hellos.
                self.send(Reject("hello.via must be empty: a node says hello to the hub it connects to",
                                 PROTOCOL_VERSION))
                return
            self.channel.batching = hello.protocol_version >= BATCHES_SINCE
            try:
                self.node_id = self.shell.admit(self, hello, hello.name or self.name, self.fingerprint, self.address)
            except Refused as exc:
                self.send(Reject(str(exc), PROTOCOL_VERSION))
                return
            while not self.channel.closed:
                message = await self.channel.receive()
                if message is None:
                    break
                if isinstance(message, Bye):
                    clean, reason = True, f"left: {message.reason or 'bye'}"
                    break
                if isinstance(message, Error):
                    # The node found us at fault and is closing; its chunks go back in line.
                    reason = f"the node reported an error ({message.code}): {message.message}"
                    break
                await self.shell.received(self.node_id, message)
        except RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            self.send(Error("protocol", str(exc)[:1000]))
        except asyncio.TimeoutError:
            reason = "no hello in time"
        except BROKEN as exc:
            reason = f"connection lost: {exc}"
        finally:
            if self.node_id is not None:
                self.shell.departed(self.node_id, clean=clean, reason=reason)
            self.channel.close(reason)
