"""Protocol messages over one SSH channel: the read loop, coalesced sends, closing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import asyncssh

from protocol.frames import coalesce
from protocol.messages import MessageReader, encode_message

READ_SIZE = 1024 * 1024
BROKEN = (BrokenPipeError, ConnectionError, asyncssh.Error)
"""What writing to or reading from a channel whose peer went away raises."""


class MessageChannel:
    """Decodes the messages a peer sends on a channel and encodes the ones sent to it.

    ``receive`` returns the next message, or None at a clean end of stream; a stream that
    breaks the protocol raises ``RemoteProtocolError``. ``send`` never raises: a broken
    channel is marked closed and the read loop sees the end.
    """

    def __init__(self, reader: asyncssh.SSHReader, writer: asyncssh.SSHWriter,
                 end: Callable[[str], None]) -> None:
        self._reader = reader
        self._writer = writer
        self._end = end
        self._messages = MessageReader()
        self.closed = False

    async def receive(self) -> object | None:
        while (message := self._messages.next_message()) is None:
            data = await self._reader.read(READ_SIZE)
            if not data:
                self._messages.close()  # raises if the stream stopped mid-frame
                return None
            self._messages.feed(data)
        return message

    def send(self, message: object) -> bool:
        """Write one message (small frames in one write, so one SSH packet); False if closed."""
        if self.closed:
            return False
        try:
            for piece in coalesce(encode_message(message)):
                self._writer.write(piece)
        except BROKEN:
            self.close("connection broken")
            return False
        return True

    def close(self, reason: str) -> None:
        """End the channel (and, on a server, the connection it belongs to); idempotent."""
        if self.closed:
            return
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
