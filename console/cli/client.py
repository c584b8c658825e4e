"""The CLI's side of the user commands: one SSH connection to a running front-end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from console.engine.statedir import StateDir
from nodes.ssh.client import open_connection
from protocol.addresses import parse_address
from protocol.errors import ChainconsoleError, ExitStatus

DEFAULT_PORT = 8022


class ConnectError(ChainconsoleError):
    """Cannot reach the front-end, or it refused us."""

    status = ExitStatus.CONNECT


@dataclass(frozen=True)
class Endpoint:
    """Where to reach a front-end and with which keys."""

    host: str
    port: int
    key: Path
    host_key: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def resolve_endpoint(state: StateDir, connect: str | None, key: str | None, host_key: str | None) -> Endpoint:
    """The front-end to talk to: ``--connect``, else the one running on this state dir."""
    if connect:
        host, port = parse_address(connect)
    elif state.endpoint.exists():
        data = json.loads(state.endpoint.read_text())
        host, port = data["host"], int(data["port"])
    else:
        host, port = "127.0.0.1", DEFAULT_PORT
    return Endpoint(
        host, port,
        Path(key) if key else state.operator_key,
        Path(host_key) if host_key else state.host_key_pub,
    )


async def connect(endpoint: Endpoint, username: str = "user") -> asyncssh.SSHClientConnection:
    """Open an SSH connection to the front-end, pinning its host key."""
    if not endpoint.key.exists():
        raise ConnectError(f"no key at {endpoint.key} (is --state-dir right?)")
    if not endpoint.host_key.exists():
        raise ConnectError(f"no front-end host key at {endpoint.host_key} (pass --host-key)")
    try:
        return await open_connection(endpoint.host, endpoint.port, username=username, key=endpoint.key,
                                     known_hosts=([str(endpoint.host_key)], [], []))
    except asyncssh.PermissionDenied:
        raise ConnectError(f"{endpoint.address} refused key {endpoint.key}") from None
    except asyncssh.HostKeyNotVerifiable:
        raise ConnectError(f"{endpoint.address} is not the front-end whose host key is "
                           f"{endpoint.host_key}") from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise ConnectError(f"cannot connect to {endpoint.address}: {exc}") from None
