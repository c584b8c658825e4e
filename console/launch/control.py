"""What a launcher needs of the front-end, in process or over the operator's SSH channel.

``FrontEndControl`` is that need: enrol the launcher's node key for as long as it runs,
read the backlog and the nodes, drain a node, report the launcher's jobs. ``LocalControl``
calls a ``FrontEnd`` in this process; ``RemoteControl`` holds one SSH connection as the
operator: the ``launcher`` command keeps the key enrolled while its channel is open (and
carries the job reports), the other calls are the user commands ``backlog``, ``nodes`` and
``drain``. If that connection drops, the next call connects again and enrols again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import asyncssh

from console.cli.client import ConnectError, Endpoint, connect
from console.engine.frontend import Backlog, FrontEnd, FrontEndError
from console.engine.keys import ensure_keypair, public_key_line
from console.engine.records import JobRow
from console.engine.statedir import make_private_dir
from protocol.errors import ChainconsoleError

LIVE_NODE_STATES = ("connecting", "idle", "busy", "draining")


class LaunchError(ChainconsoleError):
    """A launcher cannot go on (the front-end refused it, the batch system failed)."""


@dataclass(frozen=True)
class NodeInfo:
    """What a launcher sees of one node."""

    name: str
    state: str
    in_flight: int


class FrontEndControl(Protocol):
    """The front-end as a launcher drives it."""

    async def enrol(self, public_key: str, launcher: str) -> None:
        """Trust ``public_key`` as the launcher's node key until ``close``."""

    async def backlog(self) -> Backlog: ...

    async def nodes(self) -> dict[str, NodeInfo]:
        """Nodes by name, connected ones over departed ones."""

    async def drain(self, node: str) -> None: ...

    async def report(self, jobs: list[JobRow]) -> None:
        """Tell the console the launcher's jobs now."""

    async def close(self) -> None:
        """Withdraw the key: the launcher's nodes are trusted no more."""


@dataclass
class LaunchKey:
    """The fresh node key of one launcher: its private key file and its public line."""

    path: Path
    public_line: str

    @classmethod
    def create(cls, folder: Path) -> LaunchKey:
        """A new key in ``folder`` (replacing one an earlier run left there)."""
        make_private_dir(folder)
        path = folder / "node_key"
        for old in (path, path.with_name("node_key.pub")):
            old.unlink(missing_ok=True)
        return cls(path, public_key_line(ensure_keypair(path, "chainconsole-launcher")))


def _node_map(rows: list[tuple[str, str, int]]) -> dict[str, NodeInfo]:
    found: dict[str, NodeInfo] = {}
    for name, state, in_flight in rows:
        if name not in found or state in LIVE_NODE_STATES:
            found[name] = NodeInfo(name, state, in_flight)
    return found


class LocalControl:
    """The FrontEnd of this process."""

    def __init__(self, frontend: FrontEnd) -> None:
        self.frontend = frontend
        self._fingerprint = ""
        self._launcher = ""

    async def enrol(self, public_key: str, launcher: str) -> None:
        try:
            entry = self.frontend.enrol_launcher_key(public_key, launcher)
        except ChainconsoleError as exc:
            raise LaunchError(str(exc)) from None
        self._fingerprint, self._launcher = entry.fingerprint, entry.launcher

    async def backlog(self) -> Backlog:
        return self.frontend.backlog()

    async def nodes(self) -> dict[str, NodeInfo]:
        return _node_map([(r.name, r.state, r.in_flight) for r in self.frontend.node_rows()])

    async def drain(self, node: str) -> None:
        with contextlib.suppress(FrontEndError):  # it left meanwhile
            self.frontend.drain(node, by=self._launcher)

    async def report(self, jobs: list[JobRow]) -> None:
        self.frontend.report_jobs(self._launcher, tuple(jobs))

    async def close(self) -> None:
        if self._fingerprint:
            self.frontend.report_jobs(self._launcher, None)
            self.frontend.withdraw_launcher_key(self._fingerprint)
            self._fingerprint = ""


class RemoteControl:
    """A front-end reached over SSH with the operator's key."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._conn: asyncssh.SSHClientConnection | None = None
        self._holder: asyncssh.SSHClientProcess | None = None
        self._enrolment: tuple[str, str] | None = None

    async def _connection(self) -> asyncssh.SSHClientConnection:
        if self._conn is not None and self._holder is not None and not self._holder.is_closing():
            return self._conn
        await self._drop()
        self._conn = await connect(self.endpoint)
        if self._enrolment is not None:
            await self._hold(*self._enrolment)
        return self._conn

    async def _hold(self, public_key: str, launcher: str) -> None:
        assert self._conn is not None
        holder = await self._conn.create_process(f"launcher {shlex.quote(launcher)}")
        with contextlib.suppress(OSError):  # refused before it read the key: the reason follows
            holder.stdin.write(public_key + "\n")
        line = await holder.stdout.readline()
        if not line:
            problem = (await holder.stderr.read()).strip().removeprefix("chainconsole: ")
            raise LaunchError(f"the front-end refused the launcher's key: {problem or 'no answer'}")
        self._holder = holder

    async def enrol(self, public_key: str, launcher: str) -> None:
        self._conn = await connect(self.endpoint)
        try:
            await self._hold(public_key, launcher)
        except BaseException:
            await self._drop()
            raise
        self._enrolment = (public_key, launcher)

    async def _run(self, command: str) -> str:
        conn = await self._connection()
        try:
            result = await conn.run(command, check=False)
        except (OSError, asyncssh.Error) as exc:
            await self._drop()
            raise ConnectError(f"lost the front-end at {self.endpoint.address}: {exc}") from None
        if result.exit_status != 0:
            raise LaunchError(str(result.stderr).strip().removeprefix("chainconsole: ") or f"{command} failed")
        return str(result.stdout)

    async def backlog(self) -> Backlog:
        return Backlog(**json.loads(await self._run("backlog")))

    async def nodes(self) -> dict[str, NodeInfo]:
        rows = json.loads(await self._run("nodes"))
        return _node_map([(r["name"], r["state"], r["in_flight"]) for r in rows])

    async def drain(self, node: str) -> None:
        with contextlib.suppress(LaunchError):  # it left meanwhile
            await self._run(f"drain {shlex.quote(node)}")

    async def report(self, jobs: list[JobRow]) -> None:
        await self._connection()
        assert self._holder is not None
        rows = [{k: v for k, v in asdict(job).items() if k != "launcher"} for job in jobs]
        self._holder.stdin.write(json.dumps(rows) + "\n")

    async def close(self) -> None:
        self._enrolment = None
        await self._drop()

    async def _drop(self) -> None:
        holder, conn, self._holder, self._conn = self._holder, self._conn, None, None
        if holder is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                holder.stdin.write_eof()
                await asyncio.wait_for(holder.wait(), 5)
        if conn is not None:
            conn.close()
            with contextlib.suppress(OSError, asyncssh.Error):
                await conn.wait_closed()
