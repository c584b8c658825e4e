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
    """The exit status of every chainconsole command, local or over SSH: one table for all."""

    OK = 0
    """Success, or a task that ended ``done``."""
    FAILED = 1
    """A task ended with failed items or was cancelled (or its result is not ready yet)."""
    USAGE = 2
    """Bad usage, an invalid task file, or a request the front-end refused."""
    CONNECT = 3
    """Cannot connect, authentication refused, or the state folder is in use."""
    INTERNAL = 70
    """A bug on our side (``EX_SOFTWARE`` of sysexits.h); the log says more."""
    INTERRUPTED = 130
    """Stopped by SIGINT (128 + 2, as shells report it)."""
