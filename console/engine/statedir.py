"""The state directory: where the front-end keeps its keys, journal and results."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "chainconsole"


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
    def pending_nodes(self) -> Path:
        return self.root / "pending_nodes.json"

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
