"""What the Dispatcher keeps of each node, lease and task, and the views it hands out.

These records are the Dispatcher's own mutable state: nothing outside `protocol.dispatcher`
and this module holds one. The shell sees them only as the frozen views built at the end
(`NodeView`, `TaskView`), so the Dispatcher may change a record without anyone noticing.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from types import MappingProxyType

from protocol.chunking import Chunk, ChunkSizer, TaskChunks, merge_ranges
from protocol.dispatch_events import NodeState, NodeView, TaskState, TaskSubmitted, TaskView

HUNGRY, TOPPING = 1, 2
"""Room tiers of a node: an idle slot, or only prefetch room left."""
COMPACT_SLACK = 1024
"""Stale queue entries tolerated beyond twice the live ones before a queue is compacted."""
SLOWNESS_SMOOTHING = 0.3
"""Weight of the newest chunk in a node's measured speeds (for deadlines)."""
SPEEDS_KEPT = 16
"""Tasks whose speed on a node the node remembers (for deadlines)."""


class TrackedNode:
    """A connected node, as the Dispatcher tracks it."""

    __slots__ = (
        "node_id", "slots", "window", "capacity", "leases", "last_seen", "joined_at", "items_done",
        "chunks_done", "errors", "proven", "draining", "quarantined", "gone", "in_hungry", "in_topping",
        "operations", "resources", "deadline", "slowness", "speeds",
    )

    def __init__(self, node_id: str, now: float) -> None:
        self.node_id = node_id
        self.slots = 0
        self.window = 0
        self.capacity = 0
        self.leases: dict[Lease, None] = {}  # a set that iterates in the order leases were given
        self.last_seen = now
        self.joined_at = now
        self.items_done = 0
        self.chunks_done = 0
        self.errors = 0
        self.proven = 0  # results of it a second node confirmed since its last error
        self.operations: frozenset[str] = frozenset()  # installed operations it can run
        self.resources: Mapping[str, str | float] = {}
        self.draining = False
        self.quarantined = False
        self.gone = False
        # whether the node has an entry in each room deque (entries may be stale)
        self.in_hungry = False
        self.in_topping = False
        self.deadline: float | None = None  # when its walltime ends (NodeJoined.deadline)
        self.slowness: float | None = None  # its chunk times over the tasks' expected ones, smoothed
        self.speeds: OrderedDict[str, float] = OrderedDict()  # task → its seconds per item here, smoothed

    def observe_speed(self, task_id: str, items: int, expected_s: float | None, elapsed_s: float) -> None:
        """Fold one chunk's time into the task's speed on this node, and against what the task
        expected of it (the fleet's speed) into ``slowness``, for tasks it has not run yet."""
        if items <= 0 or not 0 <= elapsed_s < float("inf"):
            return
        sample = elapsed_s / items
        old = self.speeds.pop(task_id, None)
        self.speeds[task_id] = sample if old is None else old + SLOWNESS_SMOOTHING * (sample - old)
        while len(self.speeds) > SPEEDS_KEPT:
            self.speeds.popitem(last=False)
        if expected_s is None or not expected_s > 0:
            return
        ratio = elapsed_s / expected_s
        self.slowness = ratio if self.slowness is None else self.slowness + SLOWNESS_SMOOTHING * (ratio - self.slowness)

    @property
    def assignable(self) -> bool:
        """Whether the node may get new work at all."""
        return not (self.gone or self.draining or self.quarantined)

    def room_tier(self) -> int:
        """HUNGRY if a slot is idle, TOPPING if only prefetch room is left, else 0."""
        held = len(self.leases)
        if held >= self.capacity or self.gone or self.draining or self.quarantined:
            return 0
        return HUNGRY if held < self.slots else TOPPING


class Lease:
    """One attempt at a chunk, held by one node until it ends."""

    __slots__ = ("task", "chunk", "attempt", "node", "node_id", "assigned_at", "overdue", "ended")

    def __init__(self, task: TrackedTask, chunk: Chunk, attempt: int, node: TrackedNode, assigned_at: float) -> None:
        self.task = task
        self.chunk = chunk
        self.attempt = attempt
        self.node = node
        self.node_id = node.node_id
        self.assigned_at = assigned_at
        self.overdue = False
        self.ended = False


class TrackedTask:
    """A submitted task and its running tallies."""

    __slots__ = (
        "task_id", "owner", "items", "max_attempts", "chunks", "sizer", "state", "submitted_at",
        "started_at", "finished_at", "items_resolved", "items_bad", "items_abandoned", "items_computed",
        "items_by_node", "running_chunks", "runnable", "live", "replicate", "unproven", "held_results", "operation",
        "requires",
        "priority", "_service_s", "_service_at",
    )

    def __init__(self, event: TaskSubmitted, target_chunk_s: float, now: float) -> None:
        items = max(0, event.items)
        done = merge_ranges(items, event.completed)
        done_items = sum(stop - start for start, stop in done)
        self.task_id = event.task_id
        self.owner = event.owner
        self.items = items
        self.max_attempts = max(1, event.max_attempts)
        self.sizer = ChunkSizer(items, event.chunk_size, event.max_chunk_size, target_chunk_s)
        self.chunks = TaskChunks(event.task_id, items, done, self.sizer)
        self.state = TaskState.QUEUED
        self.submitted_at = now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.items_resolved = done_items  # items with an accepted result, ok or not
        self.items_bad = min(max(0, event.completed_failed), done_items)  # per-item failures
        self.items_abandoned = 0
        self.items_computed = 0  # items resolved by results in this run, for the rate
        self.items_by_node: dict[str, int] = {}
        self.running_chunks = 0
        self.runnable = False
        self.live = True  # still wants results (not done, failed or cancelled)
        self.priority = event.priority
        self._service_s = 0.0  # compute time its results took, fading (share_half_life_s)
        self._service_at = now
        self.replicate = event.replicate
        self.operation = event.operation
        self.requires = dict(event.requires)
        self.unproven: dict[int, tuple[str, int]] = {}  # chunk → (node, items ok): done, never confirmed
        self.held_results = 0  # results held for a second computation: each costs one more

    def serve(self, elapsed_s: float, now: float, half_life_s: float) -> None:
        """Count a result's compute time towards the task's recent share of the nodes."""
        self._service_s = self.recent_service_s(now, half_life_s) + max(0.0, elapsed_s)
        self._service_at = now

    def recent_service_s(self, now: float, half_life_s: float) -> float:
        """Compute time the task's results took lately: each second counts half after ``half_life_s``."""
        if half_life_s <= 0:
            return self._service_s
        return self._service_s * 0.5 ** (max(0.0, now - self._service_at) / half_life_s)

    @property
    def items_failed(self) -> int:
        """Per-item failures plus the items of abandoned chunks."""
        return self.items_bad + self.items_abandoned


class NodesWithRoom:
    """The nodes that may take more work, in turn: nodes with an idle slot before nodes
    with only prefetch room, round-robin within each.

    A node has at most one entry per tier. Entries go stale when a node's room changes;
    they are skipped when they surface and compacted when they pile up.
    """

    def __init__(self) -> None:
        self._hungry: deque[TrackedNode] = deque()
        self._topping: deque[TrackedNode] = deque()

    def __bool__(self) -> bool:
        return bool(self._hungry or self._topping)

    def offer(self, node: TrackedNode, population: int) -> None:
        """Make sure a node with room has an entry in the deque of its room tier.

        ``population`` (the nodes known) bounds how many stale entries may pile up.
        """
        tier = node.room_tier()
        if tier == HUNGRY and not node.in_hungry:
            node.in_hungry = True
            self._hungry.append(node)
            if len(self._hungry) > 2 * population + COMPACT_SLACK:
                self._hungry = self._compacted(self._hungry, HUNGRY)
        elif tier == TOPPING and not node.in_topping:
            node.in_topping = True
            self._topping.append(node)
            if len(self._topping) > 2 * population + COMPACT_SLACK:
                self._topping = self._compacted(self._topping, TOPPING)

    @staticmethod
    def _compacted(queue: deque[TrackedNode], tier: int) -> deque[TrackedNode]:
        kept: deque[TrackedNode] = deque()
        for node in queue:
            if node.room_tier() == tier:
                kept.append(node)
            elif tier == HUNGRY:
                node.in_hungry = False
            else:
                node.in_topping = False
        return kept

    def pop(self, population: int) -> TrackedNode | None:
        """Pop the next node with room: idle slots first, then prefetch room."""
        while self._hungry:
            node = self._hungry.popleft()
            node.in_hungry = False
            if node.room_tier() == HUNGRY:
                return node
            self.offer(node, population)  # its room changed since it queued
        while self._topping:
            node = self._topping.popleft()
            node.in_topping = False
            if node.room_tier() == TOPPING:
                return node
            self.offer(node, population)
        return None


def suits(task: TrackedTask, node: TrackedNode) -> bool:
    """Whether the node has what the task's chunks need: its operation and its requirements."""
    if task.operation and task.operation not in node.operations:
        return False
    for key, wanted in task.requires.items():
        have = node.resources.get(key)
        if isinstance(wanted, str):
            if have != wanted:
                return False
        elif not isinstance(have, (int, float)) or have < wanted:
            return False
    return True


def unmet(task: TrackedTask) -> str:
    """What a task needs, in words, for a task no connected node suits."""
    needs = [f"operation {task.operation}"] if task.operation else []
    needs += [f"{key} = {wanted}" if isinstance(wanted, str) else f"{key} ≥ {wanted:g}"
              for key, wanted in task.requires.items()]
    return "no connected node has " + " and ".join(needs)


def node_view(node: TrackedNode) -> NodeView:
    """What the shell may see of a node."""
    if node.quarantined:
        state = NodeState.QUARANTINED
    elif node.draining:
        state = NodeState.DRAINING
    else:
        state = NodeState.BUSY if node.leases else NodeState.IDLE
    return NodeView(
        node.node_id, state, node.slots, node.capacity, len(node.leases), node.items_done,
        node.chunks_done, node.errors, node.last_seen, node.joined_at,
    )

def task_view(task: TrackedTask, now: float, waiting: str = "") -> TaskView:
    """What the shell may see of a task at time ``now``."""
    end = task.finished_at if task.finished_at is not None else now
    elapsed = end - task.started_at if task.started_at is not None else 0.0
    return TaskView(
        task_id=task.task_id,
        owner=task.owner,
        state=task.state,
        items=task.items,
        items_done=task.items_resolved,
        items_failed=task.items_failed,
        chunks_in_flight=task.running_chunks,
        submitted_at=task.submitted_at,
        finished_at=task.finished_at,
        items_per_s=task.items_computed / elapsed if elapsed > 0 else 0.0,
        items_by_node=MappingProxyType(dict(task.items_by_node)),
        waiting=waiting,
    )
