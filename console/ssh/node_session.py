"""One node's session on the front-end: frames in, Dispatcher events out, and back.

The session moves bytes and nothing else: it decodes the node's messages, tells the
FrontEnd what happened, and writes the messages the FrontEnd sends it. A node that
breaks the protocol gets an ``Error`` message and is disconnected; the front-end and
every other session carry on.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncssh

from console.engine.frontend import FrontEnd, FrontEndError
from console.engine.keys import KeyEntry
from protocol.errors import RemoteProtocolError
from protocol.frames import coalesce
from protocol.messages import (
    MAX_NODE_KEYS, PROTOCOL_VERSION, Bye, Credit, Error, Failed, Heartbeat, Hello, MessageReader, NodeKeys,
    Reject, Result, Subtree, Welcome, encode_message,
)

READ_SIZE = 1024 * 1024
HELLO_TIMEOUT_S = 10.0


class NodeSession:
    """The node subsystem channel of one connected node."""

    def __init__(self, frontend: FrontEnd, process: asyncssh.SSHServerProcess, key: KeyEntry,
                 address: str) -> None:
        self.frontend = frontend
        self.process = process
        self.key = key
        self.address = address
        self.node_id: str | None = None
        self._reader = MessageReader()
        self._closed = False

    # -- NodeLink, called by the FrontEnd --------------------------------------------

    def send(self, message: object) -> None:
        if self._closed:
            return
        try:
            for piece in coalesce(encode_message(message)):
                self.process.stdout.write(piece)
        except (BrokenPipeError, asyncssh.Error, ConnectionError):
            self.close("connection broken", farewell=False)

    def close(self, reason: str, *, farewell: bool = True) -> None:
        """End the session now; with ``farewell`` the node is told to leave, not to come back."""
        if self._closed:
            return
        if farewell:
            self.send(Bye(reason))
        self._closed = True
        conn = self.process.get_extra_info("connection")
        with contextlib.suppress(Exception):
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason[:200])

    # -- the read loop ---------------------------------------------------------------

    async def run(self) -> None:
        clean, reason = False, "connection lost"
        try:
            hello = await asyncio.wait_for(self._next_message(), HELLO_TIMEOUT_S)
            if not isinstance(hello, Hello):
                raise RemoteProtocolError(f"expected hello, got {type(hello).__name__}")
            if hello.protocol_version != PROTOCOL_VERSION:
                self.send(Reject(f"protocol version {hello.protocol_version} not supported",
                                 PROTOCOL_VERSION))
                return
            try:
                self.node_id = self.frontend.attach_node(self, hello, self.key.name, self.address,
                                                         self.key.fingerprint)
            except FrontEndError as exc:
                self.send(Reject(str(exc), PROTOCOL_VERSION))
                return
            certificate = self._certify(hello)
            self.send(Welcome(PROTOCOL_VERSION, self.node_id, self.frontend.heartbeat_interval_s,
                              self.frontend.heartbeat_timeout_s, instance=self.frontend.instance,
                              host_certificate=certificate))
            if hello.host_key:
                self.send(NodeKeys(self.frontend.node_key_lines()[:MAX_NODE_KEYS]))
            self.frontend.start_node(self.node_id, hello)
            while not self._closed:
                message = await self._next_message()
                if message is None:
                    break
                if isinstance(message, Bye):
                    clean, reason = True, f"left: {message.reason or 'bye'}"
                    break
                await self._handle(message)
        except RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            self.send(Error("protocol", str(exc)))
        except asyncio.TimeoutError:
            reason = "no hello in time"
        except (asyncssh.Error, ConnectionError, BrokenPipeError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            if self.node_id is not None:
                self.frontend.detach_node(self.node_id, clean=clean, reason=reason)
            self.close(reason, farewell=False)

    def _certify(self, hello: Hello) -> str:
        """A chain link's host key certified by the console; "" for a plain node."""
        if not hello.host_key:
            return ""
        try:
            return self.frontend.certify_host(hello.host_key, self.node_id or hello.name)
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise RemoteProtocolError(f"hello.host_key is not a public key: {exc}") from None

    async def _next_message(self) -> object | None:
        """The next message, or None at a clean end of stream."""
        while True:
            message = self._reader.next_message()
            if message is not None:
                return message
            data = await self.process.stdin.read(READ_SIZE)
            if not data:
                self._reader.close()  # raises if the stream stopped mid-frame
                return None
            self._reader.feed(data)

    async def _handle(self, message: object) -> None:
        node_id = self.node_id
        assert node_id is not None
        match message:
            case Result():
                await self.frontend.node_result(node_id, message)
            case Heartbeat():
                self.frontend.node_alive(node_id)
            case Credit(window=window, slots=slots):
                self.frontend.node_credit(node_id, window, slots)
            case Failed(task_id=task_id, chunk=chunk, attempt=attempt, reason=reason):
                self.frontend.node_failed(node_id, task_id, chunk, attempt, reason)
            case Subtree(nodes=nodes):
                self.frontend.node_subtree(node_id, nodes)
            case _:
                raise RemoteProtocolError(f"a node may not send {type(message).__name__}")
