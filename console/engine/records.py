"""What the front-end tells its faces: events, and rows of nodes and tasks.

Plain records, no behaviour: the CLI, the SSH user commands and the console all render
these, and nothing here imports Textual.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from console.engine.results import ResultStore
from protocol.hub import NodeRow
from protocol.taskfile import Task

__all__ = ["Event", "JobRow", "NodeRow", "TaskRecord", "TaskRow"]


@dataclass(frozen=True)
class Event:
    """One line of the events log."""

    time: float
    kind: str
    message: str
    task_id: str = ""
    node_id: str = ""


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
    priority: int = 0
    """The task file's ``priority``."""
    items_by_node: dict[str, int] = field(default_factory=dict)
    """Items each node computed before this front-end started (from the journal)."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)


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
    waiting: str = ""
    """Why no connected node gets its chunks ("no connected node has operation cholesky"), or ""."""
    priority: int = 0
    """The task file's ``priority``: higher goes first."""


@dataclass(frozen=True)
class JobRow:
    """One job or host of a launcher, as the console shows it beside the nodes."""

    launcher: str
    job_id: str
    """The batch system's job id, or the host of ``launch ssh``."""
    state: str
    """``pending``, ``starting``, ``running``, ``draining``, ``ending``, ``restarting``, ``stopped`` …"""
    node: str = ""
    """The name its node goes by once it connects."""
