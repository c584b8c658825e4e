"""What the console reads from the front-end: one snapshot per refresh.

Everything the screens show comes through here, read once per tick, so the screens and
the key checks (``check_action``) agree on what is selected and what state it is in,
and the front-end is asked once per refresh however many widgets show the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from console.engine.frontend import FrontEndError
from console.engine.records import JobRow, NodeRow, TaskRow
from protocol.dispatch_events import ChunkView

if TYPE_CHECKING:
    from console.engine.host import Host


@dataclass(frozen=True)
class ConsoleSnapshot:
    """Nodes, tasks and pending keys at one moment."""

    nodes: tuple[NodeRow, ...] = ()
    tasks: tuple[TaskRow, ...] = ()
    pending_keys: int = 0
    nodes_by_id: Mapping[str, NodeRow] = field(default_factory=dict, compare=False)
    tasks_by_id: Mapping[str, TaskRow] = field(default_factory=dict, compare=False)
    jobs: tuple[JobRow, ...] = ()
    """The launchers' jobs (or hosts), as they last reported them."""

    @classmethod
    def of(cls, nodes: list[NodeRow], tasks: list[TaskRow], pending_keys: int,
           jobs: list[JobRow] | None = None) -> ConsoleSnapshot:
        return cls(
            tuple(nodes), tuple(tasks), pending_keys,
            MappingProxyType({n.node_id: n for n in nodes}),
            MappingProxyType({t.task_id: t for t in tasks}),
            tuple(jobs or ()),
        )


EMPTY = ConsoleSnapshot()


def take_snapshot(host: Host) -> ConsoleSnapshot:
    """Read the front-end's nodes, tasks and pending keys."""
    frontend = host.frontend
    if frontend is None or host.server is None:
        return EMPTY
    return ConsoleSnapshot.of(frontend.node_rows(), frontend.task_rows(), len(frontend.pending_keys()),
                              frontend.job_rows())


@dataclass(frozen=True)
class TaskDetail:
    """One task's chunk map and how many of its items each node computed.

    ``chunks`` is None when the front-end no longer holds the map (a task that finished
    before this front-end started).
    """

    chunks: tuple[ChunkView, ...] | None
    shares: Mapping[str, int]


def take_detail(host: Host, task_id: str) -> TaskDetail:
    """Read one task's chunk map and per-node item counts."""
    frontend = host.frontend
    if frontend is None:
        return TaskDetail(None, {})
    chunk_map = frontend.chunk_map(task_id)
    chunks = tuple(chunk_map) if chunk_map is not None else None
    try:
        return TaskDetail(chunks, frontend.items_by_node(task_id))
    except FrontEndError:
        return TaskDetail(chunks, {})
