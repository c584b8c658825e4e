"""The Dispatcher's vocabulary: the events it takes, the actions it returns, the views it shows.

Rules of this module:

- Events say what happened (a node joined, a result arrived, time passed); the shell that
  saw it builds the event and hands it to `Dispatcher.handle`. Actions say what the shell
  must do now (send this chunk, close that session) or record (a chunk completed).
- Events are built from untrusted network input, so they do not validate: the Dispatcher
  clamps odd values and ignores unknown ids instead of raising.
- Views are immutable copies of the Dispatcher's state, safe to hand to another thread.
- Everything here is a frozen dataclass or a string enum, so records compare by value and
  states print as their wire values ("running", "idle").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple, TypeAlias


class TaskState(StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class NodeState(StrEnum):
    """What a connected node is doing, as the Dispatcher sees it."""

    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    QUARANTINED = "quarantined"


class ChunkState(StrEnum):
    """Where one chunk is; RETRIED means running or done after at least one failed attempt."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    RETRIED = "retried"
    FAILED = "failed"


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeJoined:
    """A node opened a session: it has `slots` workers and wants `window` chunks held.

    `operations` names the installed operations it can run beyond the built-ins, and
    `resources` what a task may require of it (``gpu: 1``)."""

    node_id: str
    slots: int
    window: int
    operations: frozenset[str] = frozenset()
    resources: Mapping[str, str | float] = field(default_factory=lambda: MappingProxyType({}))
    deadline: float | None = None
    """When the node's walltime ends, on the Dispatcher's clock; None: no end known.
    No chunk expected to outlast it is assigned to the node."""


@dataclass(frozen=True, slots=True)
class CreditChanged:
    """A node changed how many chunks it wants held (and, for a chain link, its slots)."""

    node_id: str
    window: int
    slots: int | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    """A node said it is alive and has nothing else to say."""

    node_id: str


@dataclass(frozen=True, slots=True)
class ResultReceived:
    """A node returned one attempt at a chunk; `valid` is the front-end's verification verdict."""

    node_id: str
    task_id: str
    chunk: int
    attempt: int
    items_ok: int
    elapsed_s: float
    valid: bool = True
    blame: bool = True
    """Whether an invalid result counts against `node_id`: False when the node is a chain
    link that only forwarded it and the error is counted against the node behind it."""
    held_valid: bool | None = None
    """The verdict on the chunk's held result this one was compared with (None: no comparison)."""
    held_blame: bool = True
    """Whether a wrong held result counts against the node that sent it (like `blame`)."""
    confirmed: bool = False
    """This result needs no second computation: the comparison with the held one proved it
    (they agree, or the recomputation settled every item where they differ in its favour),
    or it comes from a source the shell trusts (a chain link's own pool)."""


@dataclass(frozen=True, slots=True)
class ChunkFailed:
    """A node could not compute one attempt at a chunk (its worker crashed, ...)."""

    node_id: str
    task_id: str
    chunk: int
    attempt: int
    reason: str
    retryable: bool = True
    """False when the node says any attempt would fail the same way: the chunk is abandoned at once."""


@dataclass(frozen=True, slots=True)
class ErrorCounted:
    """An invalid result of the node was caught upstream, after this hub had accepted it.

    It counts against the node as an invalid result caught here would (quarantine at
    ``max_node_errors``); the chunk itself is no longer this hub's concern.
    """

    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class HeldChecked:
    """The shell computed a held result's chunk itself (``ConfirmHeld``): right, or wrong."""

    task_id: str
    chunk: int
    attempt: int
    valid: bool
    blame: bool = True
    """Whether a wrong result counts against the node that sent it (see `ResultReceived.blame`)."""


@dataclass(frozen=True, slots=True)
class NodeLeft:
    """A node said goodbye and closed its session."""

    node_id: str


@dataclass(frozen=True, slots=True)
class NodeLost:
    """A node's session dropped without a goodbye."""

    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class DrainRequested:
    """The operator asked a node to finish what it holds and take nothing new."""

    node_id: str


@dataclass(frozen=True, slots=True)
class KickRequested:
    """The operator asked to disconnect a node now."""

    node_id: str


@dataclass(frozen=True, slots=True)
class QuarantineReleased:
    """The operator let a quarantined node take work again."""

    node_id: str


@dataclass(frozen=True, slots=True)
class TaskSubmitted:
    """A task of `items` items was accepted; `chunk_size=None` means sized automatically.

    `completed` holds item ranges already done before a restart (from the journal): they
    are never assigned again and count as done; `completed_failed` says how many of those
    items had failed. `max_chunk_size` bounds automatic chunks (e.g. to keep a chunk's
    arrays under the frame limit). A task of higher `priority` gets chunks before tasks
    of lower priority; tasks of one priority share the nodes.
    """

    task_id: str
    items: int
    chunk_size: int | None
    max_attempts: int
    owner: str = ""
    completed: tuple[tuple[int, int], ...] = ()
    completed_failed: int = 0
    max_chunk_size: int | None = None
    priority: int = 0
    replicate: bool = False
    """Its results have no cheap check of every item: they are confirmed by a second node."""
    operation: str = ""
    """An installed operation its chunks need (only nodes that have it get them); "" for a built-in."""
    requires: Mapping[str, str | float] = field(default_factory=lambda: MappingProxyType({}))
    """What a node must have to get its chunks: at least this number, or exactly this name."""


@dataclass(frozen=True, slots=True)
class TaskCancelled:
    """A user or the operator cancelled a task."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: look for silent nodes and overdue chunks."""


Event: TypeAlias = (
    NodeJoined
    | CreditChanged
    | HeartbeatReceived
    | ResultReceived
    | ChunkFailed
    | ErrorCounted
    | HeldChecked
    | NodeLeft
    | NodeLost
    | DrainRequested
    | KickRequested
    | QuarantineReleased
    | TaskSubmitted
    | TaskCancelled
    | Tick
)

# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssignChunk:
    """Send items [start, stop) of a task to a node as this attempt at the chunk."""

    node_id: str
    task_id: str
    chunk: int
    start: int
    stop: int
    attempt: int


@dataclass(frozen=True, slots=True)
class CancelChunk:
    """Tell a node to drop an attempt nobody needs any more."""

    node_id: str
    task_id: str
    chunk: int
    attempt: int


@dataclass(frozen=True, slots=True)
class CloseNode:
    """Close a node's session (kicked, or found silent)."""

    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class NodeDrained:
    """A draining node holds nothing any more."""

    node_id: str


@dataclass(frozen=True, slots=True)
class ChunkCompleted:
    """A result was accepted for items [start, stop): journal it."""

    task_id: str
    chunk: int
    start: int
    stop: int
    attempt: int
    node_id: str
    items_ok: int = 0
    held: bool = False
    """The completing result is one held earlier (``ResultHeld``), not the one being handled."""
    confirmed: bool = True
    """False for a result of a replicated task stored without a second computation."""


@dataclass(frozen=True, slots=True)
class ResultHeld:
    """Keep this valid result aside, unstored: a second node computes the chunk to confirm it."""

    node_id: str
    task_id: str
    chunk: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ConfirmHeld:
    """No other node can confirm the held result of this attempt: compute the chunk here and
    answer with ``HeldChecked``."""

    node_id: str
    task_id: str
    chunk: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ChunkReopened:
    """A completed chunk's result is no longer trusted (its node was caught lying): it is
    computed again, and items [start, stop) count as not done until then."""

    task_id: str
    chunk: int
    start: int
    stop: int
    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class NodeDistrusted:
    """A node was caught with a wrong result: what it stored unconfirmed is no longer trusted.

    Its unconfirmed chunks of running tasks are reopened here (``ChunkReopened``); those of
    tasks that already finished are the shell's to reopen.
    """

    node_id: str


@dataclass(frozen=True, slots=True)
class ChunkRequeued:
    """A chunk goes back in line (node lost, failed, overdue, invalid result); for the log."""

    task_id: str
    chunk: int
    start: int
    stop: int
    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChunkAbandoned:
    """A chunk used up its attempts: items [start, stop) are failed."""

    task_id: str
    chunk: int
    start: int
    stop: int
    reason: str


@dataclass(frozen=True, slots=True)
class NodeQuarantined:
    """A node returned too many invalid results and gets no more work."""

    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A task ended: every item is ok or failed, or it was cancelled."""

    task_id: str
    state: TaskState
    items_ok: int
    items_failed: int
    items_by_node: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Items computed by each node in this run of the Dispatcher."""
    replicated_chunks: int = 0
    """Results held for a second computation in this run (replication): each cost one more chunk."""


Action: TypeAlias = (
    AssignChunk
    | CancelChunk
    | CloseNode
    | NodeDrained
    | ChunkCompleted
    | ResultHeld
    | ConfirmHeld
    | ChunkReopened
    | NodeDistrusted
    | ChunkRequeued
    | ChunkAbandoned
    | NodeQuarantined
    | TaskFinished
)

# --- views ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    """One connected node; `window` is the capacity the Dispatcher honours."""

    node_id: str
    state: NodeState
    slots: int
    window: int
    in_flight: int
    items_done: int
    chunks_done: int
    errors: int
    last_seen: float
    joined_at: float


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task: `items_done` counts items with accepted results (ok or not), `items_failed`
    counts per-item failures plus the items of abandoned chunks."""

    task_id: str
    owner: str
    state: TaskState
    items: int
    items_done: int
    items_failed: int
    chunks_in_flight: int
    submitted_at: float
    finished_at: float | None
    items_per_s: float
    items_by_node: Mapping[str, int]
    waiting: str = ""
    """Why no connected node gets its chunks (no node has its operation or requirements), or ""."""


class ChunkView(NamedTuple):
    """One range of a task's items; chunk -1 marks items not carved into chunks (queued, or
    done before a restart).

    A named tuple, not a dataclass like the other views: a chunk map holds one per chunk,
    thousands, and is made anew for every look at it.
    """

    chunk: int
    start: int
    stop: int
    state: ChunkState
    attempts: int


@dataclass(frozen=True, slots=True)
class DispatcherSnapshot:
    """Every connected node and every task the Dispatcher knows, at one moment."""

    nodes: tuple[NodeView, ...]
    tasks: tuple[TaskView, ...]
