"""What the console shows and steers: a front-end, hosted here or attached over SSH.

The console reads and acts through ``ConsoleSource`` alone, so the same screens, keys and
dialogs work on both kinds:

- ``HostedFrontEnd`` starts a ``Host`` (front-end, SSH server, local nodes) in this process
  and stops it when the console quits;
- ``AttachedFrontEnd`` (``console.cli.attach``) reads a running front-end's console stream
  over SSH and sends the operator's actions as SSH commands; quitting only disconnects.

Reads are immediate (``snapshot``, ``detail``, ``pending_keys``); actions are coroutines
and raise ``FrontEndError`` or ``KeyError_`` when the front-end refuses them.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import asyncssh

from console.engine.eventlog import EventLog, open_event_log
from console.engine.host import Host
from console.engine.keys import PendingKey, fingerprint
from console.engine.records import Event
from console.tui.snapshot import EMPTY, ConsoleSnapshot, TaskDetail, take_detail, take_snapshot
from protocol.errors import ChainconsoleError, ExitStatus
from protocol.taskfile import Task, TaskLimits

OWNER = "operator"
"""Who the hosted console's submissions belong to: the operator, like the operator key's tasks."""


@dataclass(frozen=True)
class Identity:
    """The front-end the console shows: where it is and its host key's fingerprint."""

    address: tuple[str, int]
    host_key: str
    note: str = ""
    """How the console is joined to it, when not hosting it ("attached as observer")."""


class ConsoleSource(Protocol):
    """A front-end as the console sees it."""

    can_act: bool
    """False for an observer: every key that changes something is dimmed."""
    stops_on_quit: bool
    """True when quitting the console stops the front-end (it is hosted here)."""
    limits: TaskLimits
    """The front-end's task size limits, applied to task files before they are sent."""
    started_at: float
    ended: str
    """Why the front-end went away under the console ("" while it is there)."""

    async def start(self) -> Identity: ...

    async def stop(self) -> None: ...

    def events(self) -> list[Event]:
        """The recent events, oldest first."""

    def on_event(self, listener: Callable[[Event], None]) -> None: ...

    def snapshot(self) -> ConsoleSnapshot: ...

    def detail(self, task_id: str) -> TaskDetail: ...

    def pending_keys(self) -> list[PendingKey]: ...

    async def submit(self, task: Task) -> str: ...

    async def drain(self, node_id: str) -> None: ...

    async def kick(self, node_id: str) -> None: ...

    async def release(self, node_id: str) -> None: ...

    async def cancel(self, task_id: str) -> None: ...

    async def delete(self, task_id: str) -> None: ...

    async def approve(self, fingerprint: str) -> None: ...

    async def save_results(self, task_id: str, target: Path) -> None:
        """Write a finished task's results to ``target`` (an ``.npz``)."""

    def is_local(self, node_id: str) -> bool:
        """Whether ``node_id`` is a node the console started on this machine."""

    def local_running(self, node_id: str) -> bool:
        """Whether the process of local node ``node_id`` still runs."""

    async def add_local_node(self) -> str:
        """Start one more node on this machine; its name."""

    async def restart_local_node(self, node_id: str) -> None:
        """Start local node ``node_id`` again after it was drained, kicked or lost."""

    def running_launchers(self) -> list[str] | None:
        """The launchers this console runs; None where it cannot run any (attached)."""

    def add_launcher(self, spec: str) -> None:
        """Start a launcher (``slurm:N``, ``ssh:HOSTS``) in the console's process."""

    def stop_launcher(self, name: str) -> None:
        """Stop a launcher: its nodes drain, its jobs end."""


BY = "the console"


class CannotListen(ChainconsoleError):
    """The hosted front-end cannot listen on its address (in use, not ours)."""

    status = ExitStatus.CONNECT


class HostedFrontEnd:
    """The front-end hosted in this process, started with the console and stopped with it."""

    can_act = True
    stops_on_quit = True
    ended = ""

    def __init__(self, host: Host, *, live: bool = True) -> None:
        self.host = host
        self.live = live
        """False for snapshot tests: no event log file, and the host key is not read."""
        self._log_file: IO[str] | None = None

    @property
    def _frontend(self):
        assert self.host.frontend is not None, "the front-end is not running"
        return self.host.frontend

    @property
    def limits(self) -> TaskLimits:
        return self._frontend.limits

    @property
    def started_at(self) -> float:
        return self._frontend.started_at

    async def start(self) -> Identity:
        try:
            address = await self.host.start()
        except OSError as exc:
            settings = self.host.settings
            raise CannotListen(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
        if not self.live:
            return Identity(address, "")
        self._log_file = open_event_log(self.host.state)
        log = EventLog(self._log_file)
        for event in list(self._frontend.events):
            log(event)
        self._frontend.on_event(log)
        key = await asyncio.to_thread(asyncssh.read_private_key, self.host.state.host_key)
        return Identity(address, fingerprint(key))

    async def stop(self) -> None:
        await self.host.stop()
        if self._log_file is not None:
            self._log_file.close()

    def events(self) -> list[Event]:
        return list(self._frontend.events) if self.host.frontend is not None else []

    def on_event(self, listener: Callable[[Event], None]) -> None:
        self._frontend.on_event(listener)

    def snapshot(self) -> ConsoleSnapshot:
        return take_snapshot(self.host) if self.host.frontend is not None else EMPTY

    def detail(self, task_id: str) -> TaskDetail:
        return take_detail(self.host, task_id)

    def pending_keys(self) -> list[PendingKey]:
        return self._frontend.pending_keys()

    async def submit(self, task: Task) -> str:
        return await self._frontend.submit(task, OWNER)

    async def drain(self, node_id: str) -> None:
        self._frontend.drain(node_id, by=BY)

    async def kick(self, node_id: str) -> None:
        self._frontend.kick(node_id, by=BY)

    async def release(self, node_id: str) -> None:
        self._frontend.release(node_id, by=BY)

    async def cancel(self, task_id: str) -> None:
        self._frontend.cancel(task_id, by=BY)

    async def delete(self, task_id: str) -> None:
        await self._frontend.delete(task_id)

    async def approve(self, fingerprint: str) -> None:
        self._frontend.approve_key(fingerprint)

    def is_local(self, node_id: str) -> bool:
        return self.host.is_local(node_id)

    def local_running(self, node_id: str) -> bool:
        return self.host.local_running(node_id)

    async def add_local_node(self) -> str:
        return self.host.add_local_node()

    async def restart_local_node(self, node_id: str) -> None:
        self.host.restart_local_node(node_id)

    def running_launchers(self) -> list[str] | None:
        return self.host.running_launchers()

    def add_launcher(self, spec: str) -> None:
        self.host.add_launcher(spec)

    def stop_launcher(self, name: str) -> None:
        self.host.stop_launcher(name)

    async def save_results(self, task_id: str, target: Path) -> None:
        # Building the .npz the first time reads every result from disk: not on the loop.
        source = await asyncio.to_thread(self._frontend.result_file, task_id)
        await asyncio.to_thread(shutil.copyfile, source, target)
