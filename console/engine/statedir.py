"""The state directory: where the front-end keeps its keys, journal and results."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from protocol.errors import ChainconsoleError, ExitStatus

APP_NAME = "chainconsole"


class StateDirInUse(ChainconsoleError):
    """Another front-end holds this state folder; ``status`` is the exit status."""

    status = ExitStatus.CONNECT


def default_state_dir() -> Path:
    """The platform's user data folder for chainconsole."""
    return Path(platformdirs.user_data_dir(APP_NAME))


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StateDir:
    """Paths of everything the front-end keeps on disk, under one root folder."""

    root: Path

    @property
    def host_key(self) -> Path:
        return self.root / "host_key"

    @property
    def host_key_pub(self) -> Path:
        """The public half of the host key: what nodes and users pin."""
        return self.root / "host_key.pub"

    @property
    def operator_key(self) -> Path:
        return self.root / "operator_key"

    @property
    def node_key(self) -> Path:
        """The key that nodes started with ``--local-nodes`` use."""
        return self.root / "node_key"

    @property
    def authorized_nodes(self) -> Path:
        return self.root / "authorized_nodes"

    @property
    def authorized_users(self) -> Path:
        return self.root / "authorized_users"

    @property
    def authorized_operators(self) -> Path:
        return self.root / "authorized_operators"

    @property
    def authorized_observers(self) -> Path:
        return self.root / "authorized_observers"

    @property
    def pending_nodes(self) -> Path:
        return self.root / "pending_nodes.json"

    @property
    def lock(self) -> Path:
        """Held (``flock``) by the one front-end that uses this folder, for its whole life."""
        return self.root / "frontend.lock"

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite3"

    @property
    def tasks(self) -> Path:
        return self.root / "tasks"

    @property
    def endpoint(self) -> Path:
        """Where a running front-end records the address it listens on."""
        return self.root / "endpoint.json"

    def task_dir(self, task_id: str) -> Path:
        return self.tasks / task_id


class StateLock:
    """The exclusive lock of a state folder: one front-end per folder.

    ``flock`` is released by the kernel when the process dies, however it dies, so a
    crashed front-end never leaves a stale lock behind.
    """

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``StateDirInUse`` naming the front-end that holds it."""
        make_private_dir(self.state.root)
        fd = os.open(self.state.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirInUse(f"state folder {self.state.root} is in use by {self.holder()}") from None
        self._fd = fd

    def holder(self) -> str:
        """Who holds the folder, as ``endpoint.json`` tells it."""
        try:
            data = json.loads(self.state.endpoint.read_text())
            return f"the front-end listening on {data['host']}:{data['port']} (pid {int(data['pid'])})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another front-end (starting, or its endpoint.json is missing)"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def fix_permissions(state: StateDir) -> list[str]:
    """Take group and world access away from the state folder and what it holds; say what changed.

    Keys, authorized-keys files, the journal and results are for the owner only: a file
    others could write (an authorized_users anyone may add a key to) is a way in.
    """
    fixed = []
    paths = [state.root, *state.root.iterdir()] if state.root.is_dir() else []
    for path in paths:
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
            continue
        mode = stat.S_IMODE(info.st_mode)
        try:
            os.chmod(path, mode & 0o700)
        except OSError as exc:
            fixed.append(f"{path} is open to others (mode {mode:o}) and cannot be fixed: {exc.strerror}")
            continue
        fixed.append(f"{path} was open to others (mode {mode:o}); now {mode & 0o700:o}")
    return fixed
