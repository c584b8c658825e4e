"""Protocol messages over one SSH channel: the read loop, coalesced sends, closing."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import asyncssh

from protocol import batching
from protocol.errors import RemoteProtocolError
from protocol.frames import Buffer, join_pieces
from protocol.messages import Assigns, MessageReader, Results, encode_message

READ_SIZE = 1024 * 1024
BROKEN = (BrokenPipeError, ConnectionError, asyncssh.Error)
"""What writing to or reading from a channel whose peer went away raises."""


class MessageChannel:
    """Decodes the messages a peer sends on a channel and encodes the ones sent to it.

    ``receive`` returns the next message, or None at a clean end of stream; a stream that
    breaks the protocol raises ``RemoteProtocolError``. ``send`` never raises: a broken
    channel is marked closed and the read loop sees the end.

    Sends are coalesced: every message sent during one turn of the event loop is written
    when the turn ends, small frames joined into one write. asyncssh makes each write an
    SSH packet of its own (encrypted, with its own system call), so the dozens of
    assignments a credit releases, or the results of a batch of short chunks, cost one
    packet instead of one each. The order of messages never changes; ``close`` writes what
    is queued first.

    With ``batching`` on (a session of protocol version 4), the assignments or results of
    one task queued in a row also share one frame (``protocol.batching``), and batches
    received are handed out as the messages they stand for; with it off, a batch received
    breaks the protocol.
    """

    def __init__(self, reader: asyncssh.SSHReader, writer: asyncssh.SSHWriter,
                 end: Callable[[str], None]) -> None:
        self._reader = reader
        self._writer = writer
        self._end = end
        self._messages = MessageReader()
        self._pending: list[object] = []
        """Encoded pieces (``bytes``/``memoryview``), and messages that may yet join a batch."""
        self._received: deque[object] = deque()
        self._flush_scheduled = False
        self.closed = False
        self.batching = False

    async def receive(self) -> object | None:
        if self._received:
            return self._received.popleft()
        while (message := self._messages.next_message()) is None:
            data = await self._reader.read(READ_SIZE)
            if not data:
                self._messages.close()  # raises if the stream stopped mid-frame
                return None
            self._messages.feed(data)
        if isinstance(message, (Assigns, Results)):
            if not self.batching:
                raise RemoteProtocolError(f"{message.TYPE} needs protocol version 4")
            first, *rest = batching.split(message)
            self._received.extend(rest)
            return first
        return message

    def send(self, message: object) -> bool:
        """Queue one message for the write at the end of this loop turn; False if closed."""
        if self.closed:
            return False
        if self.batching and batching.joinable(message):
            self._pending.append(message)  # encoded at the flush, with the ones it may join
        else:
            self._pending.extend(encode_message(message))
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test driving the channel by hand): write now
                self.flush()
            else:
                self._flush_scheduled = True
                loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        """Write every queued message now, small pieces joined; a broken channel closes."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if self.closed or not pending:
            return
        try:
            for piece in join_pieces(self._encoded(pending) if self.batching else pending):  # type: ignore[arg-type]
                self._writer.write(piece)
        except BROKEN:
            self.close("connection broken")

    @staticmethod
    def _encoded(pending: list[object]) -> list[Buffer]:
        """Queued pieces and messages as pieces, runs of messages that fit together as one batch."""
        pieces: list[Buffer] = []
        for item in batching.join(pending):
            if isinstance(item, (bytes, bytearray, memoryview)):
                pieces.append(item)
            else:
                pieces.extend(encode_message(item))  # type: ignore[arg-type]
        return pieces

    def close(self, reason: str) -> None:
        """End the channel (and, on a server, the connection it belongs to); idempotent."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        with contextlib.suppress(Exception):
            self._end(reason)

    @classmethod
    def of_server_process(cls, process: asyncssh.SSHServerProcess) -> MessageChannel:
        """The node's side of a server channel: its whole connection ends with the channel."""
        conn = process.get_extra_info("connection")
        return cls(process.stdin, process.stdout,
                   lambda reason: conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason[:200]))

    @classmethod
    def of_client_process(cls, process: asyncssh.SSHClientProcess) -> MessageChannel:
        def end(reason: str) -> None:
            process.stdin.write_eof()
            process.close()
        return cls(process.stdout, process.stdin, end)
