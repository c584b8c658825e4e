"""One small hierarchy of errors, split by who is at fault.

Errors are raised where the fault is found and turned into a clear message at the
edge: the CLI prints one line and exits non-zero, a session gets an error frame.
"""

from __future__ import annotations

from enum import IntEnum


class ChainconsoleError(Exception):
    """Base of every error chainconsole raises on purpose."""


class TaskFileError(ChainconsoleError):
    """A task file is not valid; ``problems`` holds one line per problem, naming the field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ProtocolError(ChainconsoleError):
    """Something on the wire broke the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message that break the protocol."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (a bug on our side)."""


class ExitStatus(IntEnum):
    """The exit status of every command, over SSH and on the command line alike."""

    OK = 0
    FAILED = 1
    """The task ended with failed items, or was cancelled."""
    USAGE = 2
    """Bad usage or an invalid task file."""
    CONNECT = 3
    """Cannot connect, or authentication refused."""
    INTERNAL = 70
    """A bug on our side (EX_SOFTWARE)."""
