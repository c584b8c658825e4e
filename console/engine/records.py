"""What the front-end tells its faces: events, and rows of nodes and tasks.

Plain records, no behaviour: the CLI, the SSH user commands and the console all render
these, and nothing here imports Textual.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from console.engine.results import ResultStore
from protocol.taskfile import Task


@dataclass(frozen=True)
class Event:
    """One line of the events log."""

    time: float
    kind: str
    message: str
    task_id: str = ""
    node_id: str = ""


@dataclass
class NodeInfo:
    """What the front-end knows of a node beyond the Dispatcher's view."""

    node_id: str
    name: str
    address: str
    slots: int
    via: tuple[str, ...] = ()
    is_link: bool = False
    fingerprint: str = ""
    connected_at: float = field(default_factory=time.time)
    lost_at: float | None = None


@dataclass
class TaskRecord:
    """A task the front-end holds, live or finished."""

    task_id: str
    name: str
    owner: str
    items: int
    operation: str
    return_mode: str
    submitted_at: float
    task: Task | None = None
    store: ResultStore | None = None
    state: str = "queued"
    finished_at: float | None = None
    summary: dict | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class NodeRow:
    """One node as ``nodes --json`` and the console show it."""

    node_id: str
    name: str
    state: str
    slots: int
    in_flight: int
    items_done: int
    errors: int
    via: tuple[str, ...]
    address: str
    heartbeat_age_s: float | None
    items_per_s: float


@dataclass(frozen=True)
class TaskRow:
    """One task as ``tasks --json`` and the console show it."""

    task_id: str
    name: str
    owner: str
    state: str
    items: int
    items_done: int
    items_failed: int
    submitted_at: float
    wall_s: float | None
    items_per_s: float
