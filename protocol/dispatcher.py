"""The Dispatcher decides which node computes which chunk, under failure: events in, actions out.

It does no I/O and reads no clock; the shell (the front-end's SSH server, or a chain relay)
turns what it sees into events, calls `handle(event, now)` and carries out the actions.

Rules of this module (docs/architecture.md, "Sans-I/O at the core"):

- Credit: a node holds at most min(window, slots × (1 + prefetch)) attempts, and none if
  it has no slots (a chain link speaks for many nodes, each wanting its own prefetch).
  Room is filled as soon as it appears: nodes with an idle slot before nodes with only
  prefetch room, round-robin among them. Draining, quarantined and departed nodes get
  nothing.
- Fairness: a task of higher priority is offered chunks first; among tasks of one
  priority the next chunk goes to the one that got the least compute time lately (its
  results' elapsed time, fading with a half-life), then the one with the fewest chunks
  in flight, then in turn; so a small task submitted behind a huge one is not stuck
  behind it. A task with nothing for the node asking is skipped.
- Leases: every assignment is a numbered attempt. A departed node's attempts go back in
  line at once; a node not heard from for `heartbeat_timeout_s` is closed and counts as
  lost. An attempt older than max(min_lease_s, straggler_factor x expected time) gets one
  backup copy on another node; the first valid result wins and the other copies are
  cancelled.
- Results are idempotent by (chunk, attempt): an issued attempt at an open chunk of a live
  task is accepted from the node it was issued to, even after that node has gone (except
  while it is quarantined); anything else is ignored.
- Bounded attempts: a chunk's failures (the node reported one, the node was lost holding
  it, the result was invalid) are counted; at `max_attempts`, once no copy is left
  running, the chunk is abandoned and its items fail. A failure reported as not
  retryable uses up every attempt at once. Clean goodbyes, kicks and quarantines are not
  the chunk's fault and do not count.
- Replication: a task whose results have no cheap check of every item (``replicate``)
  has each result held, unstored, until a second node's result for the chunk confirms it
  (``ResultHeld``; the shell compares them and, where they differ, recomputes the items to
  say who is wrong); ``replication`` says which results are held. A held result no other
  node can confirm (none is connected, or the copies failed) is computed by the shell
  itself (``ConfirmHeld``, answered by ``HeldChecked``). Results stored unconfirmed stay
  on their task's books until it ends: when their node is caught with a wrong result,
  they are reopened and computed again (``NodeDistrusted`` tells the shell, which keeps
  the books of finished tasks).
- Standing follows the node: its errors and confirmed results outlive its sessions (the
  hub binds node ids to keys), until the operator releases it or the hub forgets the id.
- Quarantine: invalid results count against their node (unless the node is a chain link
  that only forwarded them: `ResultReceived.blame`), and so do errors caught upstream
  (`ErrorCounted`); at `max_node_errors` it gets no more work and what it holds is
  cancelled and requeued, until the operator releases it.
- Deadlines: a node that reported when its walltime ends (`NodeJoined.deadline`) gets no
  chunk expected to outlast it — the task's measured seconds per item times the chunk's
  size, after what the node already queues on its slots — and the chunk waits for another.
- Nothing from the network makes it raise: unknown ids and stale attempts are ignored.
- Assigning costs the same whatever the number of nodes and chunks (and grows only with
  the number of runnable tasks): deques of nodes with room and of runnable tasks, per-task queues, and queues and heaps of deadlines whose
  stale entries are skipped when they surface (and compacted when they pile up).
- `now` must never go backwards (the shell passes a monotonic clock).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from protocol.chunking import Chunk, Outcome
# Every event and action is importable from here too: shells name them ``dispatcher.X``.
from protocol.dispatch_events import (
    Action,
    AssignChunk,
    CancelChunk,
    ChunkAbandoned,
    ChunkCompleted,
    ChunkFailed,
    ChunkReopened,
    ChunkRequeued,
    ConfirmHeld,
    ChunkView,
    CloseNode,
    CreditChanged,
    DispatcherSnapshot,
    DrainRequested,
    ErrorCounted,
    Event,
    HeartbeatReceived,
    HeldChecked,
    KickRequested,
    NodeDistrusted,
    NodeDrained,
    NodeJoined,
    NodeLeft,
    NodeLost,
    NodeQuarantined,
    QuarantineReleased,
    ResultHeld,
    ResultReceived,
    TaskCancelled,
    TaskFinished,
    TaskState,
    TaskView,
    TaskSubmitted,
    Tick,
)
from protocol.dispatch_replicas import Replicas
from protocol.replication import ReplicationPolicy
from protocol.dispatch_state import (
    COMPACT_SLACK, NodesWithRoom, Lease, TrackedNode, TrackedTask, node_view, suits, task_view, unmet,
)

DEFAULT_PREFETCH = 1
"""Chunks a node may hold beyond its slots, so it never idles between chunks."""
DEFAULT_HEARTBEAT_TIMEOUT_S = 5.0
"""A node not heard from for longer than this is closed and its chunks requeued."""
DEFAULT_TARGET_CHUNK_S = 1.0
"""What an automatically sized chunk should take on one slot."""
DEFAULT_STRAGGLER_FACTOR = 4.0
"""An attempt this many times slower than expected gets a backup copy ..."""
DEFAULT_MIN_LEASE_S = 10.0
"""... but never before it has run this long."""
DEFAULT_MAX_NODE_ERRORS = 3
DEFAULT_SHARE_HALF_LIFE_S = 60.0
"""How fast a task's past share of the nodes is forgotten: a second of compute counts half
after this long, so a task that arrives behind a long one catches up within minutes."""
"""Invalid results after which a node is quarantined."""
DEFAULT_DEADLINE_MARGIN = 1.25
"""Chunk times are taken this much longer than measured when weighed against a node's deadline."""
STANDING_KEPT = 10_000
"""Departed nodes whose errors and confirmed results are remembered."""

_FROM_NODES = frozenset({NodeJoined, CreditChanged, HeartbeatReceived, ResultReceived, ChunkFailed, NodeLeft})


class Dispatcher(Replicas):
    """Delegates the chunks of tasks to nodes and keeps every item accounted for."""

    def __init__(
        self,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        target_chunk_s: float = DEFAULT_TARGET_CHUNK_S,
        straggler_factor: float = DEFAULT_STRAGGLER_FACTOR,
        min_lease_s: float = DEFAULT_MIN_LEASE_S,
        max_node_errors: int = DEFAULT_MAX_NODE_ERRORS,
        share_half_life_s: float = DEFAULT_SHARE_HALF_LIFE_S,
        deadline_margin: float = DEFAULT_DEADLINE_MARGIN,
        replication: ReplicationPolicy = ReplicationPolicy(),
    ) -> None:
        self._prefetch = max(0, prefetch)
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._target_chunk_s = target_chunk_s
        self._straggler_factor = straggler_factor
        self._min_lease_s = min_lease_s
        self._max_node_errors = max(1, max_node_errors)
        self._share_half_life_s = share_half_life_s
        self._deadline_margin = max(1.0, deadline_margin)
        self.replication = replication
        """Which results of replicated tasks wait for a second computation (may be changed at any time)."""
        self._standing: OrderedDict[str, tuple[int, int]] = OrderedDict()  # departed: (errors, proven)
        self._holds: dict[Chunk, TrackedTask] = {}  # chunks whose result waits for a second node's
        self._confirming: set[Chunk] = set()  # held chunks the shell is computing itself
        self._nodes: dict[str, TrackedNode] = {}
        self._tasks: dict[str, TrackedTask] = {}  # in submission order
        self._runnable: deque[TrackedTask] = deque()
        self._room = NodesWithRoom()
        # Live leases not checked yet, in the order given: none is overdue before min_lease_s
        # and `now` only grows, so their first checks come in this order (no heap on the hot
        # path), and an ending lease leaves at once (nothing dead is kept alive).
        self._unchecked: dict[Lease, None] = {}
        self._lease_deadlines: list[tuple[float, int, Lease]] = []  # leases checked once, due later
        self._live_leases = 0
        self._silence_deadlines: list[tuple[float, int, TrackedNode]] = []
        self._seq = itertools.count()  # tie-breaker for heap entries
        self._total_slots = 0  # of assignable nodes, for chunk sizing
        self._open_nodes = 0  # assignable nodes with any capacity
        self._handlers: dict[type, Callable[[Any, float, list[Action]], None]] = {
            NodeJoined: self._node_joined,
            CreditChanged: self._credit_changed,
            HeartbeatReceived: self._heartbeat_received,
            ResultReceived: self._result_received,
            ChunkFailed: self._chunk_failed,
            ErrorCounted: self._error_counted,
            HeldChecked: self._held_checked,
            NodeLeft: self._node_left,
            NodeLost: self._node_lost,
            DrainRequested: self._drain_requested,
            KickRequested: self._kick_requested,
            QuarantineReleased: self._quarantine_released,
            TaskSubmitted: self._task_submitted,
            TaskCancelled: self._task_cancelled,
            Tick: self._tick,
        }

    # --- the one entry point ------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time `now` and return what the shell must do, in order."""
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"not a dispatcher event: {event!r}")
        if type(event) in _FROM_NODES:
            node = self._nodes.get(event.node_id)  # type: ignore[union-attr]
            if node is not None and now > node.last_seen:
                node.last_seen = now
        out: list[Action] = []
        handler(event, now, out)
        if self._runnable and self._room:
            self._fill(now, out)
        return out

    # --- queries ------------------------------------------------------------------------------

    def wants_result(self, task_id: str, chunk: int, attempt: int) -> bool:
        """True iff that attempt was issued, the chunk is not completed and the task is live."""
        task = self._tasks.get(task_id)
        if task is None or not task.live:
            return False
        open_chunk = task.chunks.open_chunk(chunk)
        return open_chunk is not None and 1 <= attempt <= open_chunk.attempts

    def lease_running(self, node_id: str, task_id: str, chunk: int, attempt: int) -> bool:
        """True iff that attempt was issued to `node_id` and is still running (not answered or ended)."""
        task = self._tasks.get(task_id)
        open_chunk = task.chunks.open_chunk(chunk) if task is not None and task.live else None
        lease = open_chunk.lease(attempt) if open_chunk is not None else None
        return lease is not None and not lease.ended and lease.node_id == node_id

    def items_waiting(self) -> int:
        """Items of live tasks that wait for a node: no node has room for them (a launcher's backlog)."""
        return sum(task.chunks.waiting_items() for task in self._tasks.values() if task.live)

    def held_attempt(self, task_id: str, chunk: int) -> int | None:
        """The attempt whose result the chunk holds for confirmation, if any."""
        task = self._tasks.get(task_id)
        open_chunk = task.chunks.open_chunk(chunk) if task is not None and task.live else None
        held = open_chunk.held if open_chunk is not None else None
        return None if held is None else held.attempt  # type: ignore[attr-defined]

    def forget_node(self, node_id: str) -> None:
        """Drop a departed node's standing (released by the operator, or its id given to another key)."""
        self._standing.pop(node_id, None)

    def forget(self, task_id: str) -> None:
        """Drop what is kept of a finished task (a chain link makes a task per upstream chunk)."""
        task = self._tasks.get(task_id)
        if task is not None and not task.live:
            del self._tasks[task_id]

    def chunk_range(self, task_id: str, chunk: int) -> tuple[int, int]:
        """Items [start, stop) of a chunk; KeyError for an unknown task or chunk."""
        return self._tasks[task_id].chunks.range_of(chunk)

    def snapshot(self, now: float) -> DispatcherSnapshot:
        """Every connected node and every task, as immutable views."""
        return DispatcherSnapshot(
            nodes=tuple(node_view(node) for node in self._nodes.values()),
            tasks=tuple(task_view(task, now, self._waiting(task)) for task in self._tasks.values()),
        )

    def task_view(self, task_id: str, now: float) -> TaskView | None:
        """One task's view, or None once it is not held (finished and forgotten, or unknown)."""
        task = self._tasks.get(task_id)
        return None if task is None else task_view(task, now, self._waiting(task))

    def _waiting(self, task: TrackedTask) -> str:
        """Why nobody gets the task's chunks, if no assignable node suits it."""
        if not (task.operation or task.requires) or not task.live or task.running_chunks:
            return ""
        if any(node.assignable and suits(task, node) for node in self._nodes.values()):
            return ""
        return unmet(task)

    def chunk_map(self, task_id: str) -> list[ChunkView]:
        """Every item range of a task in item order, with its state; KeyError for an unknown task."""
        return self._tasks[task_id].chunks.views()

    # --- nodes --------------------------------------------------------------------------------

    def _node_joined(self, event: NodeJoined, now: float, out: list[Action]) -> None:
        node = self._nodes.get(event.node_id)
        if node is None:
            node = self._nodes[event.node_id] = TrackedNode(event.node_id, now)
            node.errors, node.proven = self._standing.pop(event.node_id, (0, 0))
            self._watch_silence(node, now)
        else:
            # The same node opened a new session: what the old session held went with it.
            # Its standing (draining, quarantine, errors) stays: it is the same node.
            self._release_leases(node, "node rejoined", False, now, out)
        self._account(node, -1)
        node.slots = max(0, event.slots)
        node.window = max(0, event.window)
        node.operations = frozenset(event.operations)
        node.resources = dict(event.resources)
        node.deadline = event.deadline
        node.capacity = self._capacity(node)
        self._account(node, +1)
        self._room.offer(node, len(self._nodes))
        if node.draining and not node.leases:
            out.append(NodeDrained(node.node_id))

    def _credit_changed(self, event: CreditChanged, now: float, out: list[Action]) -> None:
        node = self._nodes.get(event.node_id)
        if node is None:
            return
        self._account(node, -1)
        node.window = max(0, event.window)
        if event.slots is not None:  # a chain link whose subtree grew or shrank
            node.slots = max(0, event.slots)
        node.capacity = self._capacity(node)
        self._account(node, +1)
        self._room.offer(node, len(self._nodes))

    def _heartbeat_received(self, event: HeartbeatReceived, now: float, out: list[Action]) -> None:
        pass  # handle() notes every node's sign of life

    def _node_left(self, event: NodeLeft, now: float, out: list[Action]) -> None:
        self._node_gone(event.node_id, "node left", False, now, out)

    def _node_lost(self, event: NodeLost, now: float, out: list[Action]) -> None:
        self._node_gone(event.node_id, "node lost", True, now, out)

    def _node_gone(self, node_id: str, reason: str, counts: bool, now: float, out: list[Action]) -> None:
        """Forget a node; its copies go back in line (`counts`: as failures of their chunks)."""
        node = self._nodes.get(node_id)
        if node is None:
            return
        self._account(node, -1)
        node.gone = True
        del self._nodes[node_id]
        self._standing[node_id] = (node.errors, node.proven)
        while len(self._standing) > STANDING_KEPT:
            self._standing.popitem(last=False)
        self._release_leases(node, reason, counts, now, out)

    def _drain_requested(self, event: DrainRequested, now: float, out: list[Action]) -> None:
        node = self._nodes.get(event.node_id)
        if node is None:
            return
        self._account(node, -1)
        node.draining = True
        if not node.leases:
            out.append(NodeDrained(node.node_id))

    def _kick_requested(self, event: KickRequested, now: float, out: list[Action]) -> None:
        if event.node_id in self._nodes:
            out.append(CloseNode(event.node_id, "kicked by the operator"))
            self._node_gone(event.node_id, "node kicked", False, now, out)

    def _quarantine(self, node: TrackedNode, now: float, out: list[Action]) -> None:
        self._account(node, -1)
        node.quarantined = True
        out.append(NodeQuarantined(node.node_id, f"{node.errors} invalid results"))
        for lease in list(node.leases):
            out.append(CancelChunk(node.node_id, lease.task.task_id, lease.chunk.number, lease.attempt))
        self._release_leases(node, "node quarantined", False, now, out)

    def _quarantine_released(self, event: QuarantineReleased, now: float, out: list[Action]) -> None:
        node = self._nodes.get(event.node_id)
        if node is None or not node.quarantined:
            return
        node.quarantined = False
        node.errors = 0  # a fresh start, or the next slip would quarantine it again
        node.proven = 0  # on probation again
        self._account(node, +1)
        self._room.offer(node, len(self._nodes))

    def _capacity(self, node: TrackedNode) -> int:
        return min(node.window, node.slots * (1 + self._prefetch))

    def _account(self, node: TrackedNode, sign: int) -> None:
        """Add (+1) or remove (-1) an assignable node's share of the fleet totals."""
        if node.assignable:
            self._total_slots += sign * node.slots
            if node.capacity:
                self._open_nodes += sign

    def _watch_silence(self, node: TrackedNode, since: float) -> None:
        heapq.heappush(self._silence_deadlines, (since + self._heartbeat_timeout_s, next(self._seq), node))

    # --- tasks and results --------------------------------------------------------------------

    def _task_submitted(self, event: TaskSubmitted, now: float, out: list[Action]) -> None:
        if event.task_id in self._tasks:
            return
        task = self._tasks[event.task_id] = TrackedTask(event, self._target_chunk_s, now)
        if not self._finish_if_resolved(task, now, out):
            self._wake(task)

    def _task_cancelled(self, event: TaskCancelled, now: float, out: list[Action]) -> None:
        task = self._tasks.get(event.task_id)
        if task is None or not task.live:
            return
        for chunk in task.chunks.open_chunks():
            for lease in chunk.live_leases():
                out.append(CancelChunk(lease.node_id, task.task_id, chunk.number, lease.attempt))
                self._end(lease, out)
        self._finish(task, TaskState.CANCELLED, now, out)

    def _result_received(self, event: ResultReceived, now: float, out: list[Action]) -> None:
        task = self._tasks.get(event.task_id)
        chunk = task.chunks.open_chunk(event.chunk) if task is not None and task.live else None
        lease = chunk.lease(event.attempt) if chunk is not None else None
        if task is None or chunk is None or lease is None or lease.node_id != event.node_id or chunk.held is lease:
            return
        node = self._nodes.get(event.node_id)
        if node is not None and node.quarantined:
            return  # its answers are not trusted until the operator releases it
        held = chunk.held if event.held_valid is not None else None  # what this result was compared with
        if held is not None and not event.held_valid:
            self._release_hold(chunk)
            if event.held_blame:
                self._blame(held.node_id, now, out)
        if event.valid:
            items_ok = min(max(0, event.items_ok), chunk.size)  # a count from the network
            if node is not None:
                node.observe_speed(task.task_id, chunk.size, task.sizer.expected_s(chunk.size), event.elapsed_s)
            task.sizer.observe(chunk.size, event.elapsed_s)
            task.serve(event.elapsed_s, now, self._share_half_life_s)
            if event.confirmed:
                if held is not None:
                    if event.held_valid:
                        self._prove(held.node_id)
                    self._prove(event.node_id)
                self._complete(task, chunk, node, event.node_id, event.attempt, items_ok, now, out, proven=True)
            elif task.replicate and (held is not None or self._replica_wanted(node)):
                self._hold(task, chunk, lease, items_ok, out)
            else:
                self._complete(task, chunk, node, event.node_id, event.attempt, items_ok, now, out,
                               proven=not task.replicate)
        elif not lease.ended and node is not None:
            # (an invalid copy that already ended was counted when its node went)
            chunk.failures += 1
            self._end(lease, out)
            self._settle(task, chunk, node.node_id, "invalid result", now, out)
            if event.blame:
                self._count_error(node, now, out)

    def _count_error(self, node: TrackedNode, now: float, out: list[Action]) -> None:
        if node.quarantined:
            return  # its answers are ignored already; what it had stored was distrusted then
        node.errors += 1
        node.proven = 0
        self._reopen_unproven(node.node_id, out)
        if node.errors >= self._max_node_errors and not node.quarantined:
            self._quarantine(node, now, out)

    def _blame(self, node_id: str, now: float, out: list[Action]) -> None:
        """Count an error against a node, connected or departed."""
        node = self._nodes.get(node_id)
        if node is not None:
            self._count_error(node, now, out)
            return
        errors = self._standing.pop(node_id, (0, 0))[0] + 1
        self._standing[node_id] = (errors, 0)
        self._reopen_unproven(node_id, out)
        if errors == self._max_node_errors:
            out.append(NodeQuarantined(node_id, f"{errors} invalid results"))

    def _error_counted(self, event: ErrorCounted, now: float, out: list[Action]) -> None:
        node = self._nodes.get(event.node_id)
        if node is not None:
            self._count_error(node, now, out)

    def _complete(
        self, task: TrackedTask, chunk: Chunk, node: TrackedNode | None, node_id: str, attempt: int, items_ok: int,
        now: float, out: list[Action], *, proven: bool, held: bool = False,
    ) -> None:
        size = chunk.size
        out.append(ChunkCompleted(task.task_id, chunk.number, chunk.start, chunk.stop, attempt, node_id,
                                  items_ok, held, proven))
        for lease in chunk.live_leases():
            if lease.attempt != attempt:
                out.append(CancelChunk(lease.node_id, task.task_id, chunk.number, lease.attempt))
            self._end(lease, out)
        self._release_hold(chunk)
        if not proven:
            task.unproven[chunk.number] = (node_id, items_ok)
        task.chunks.close(chunk, Outcome.DONE_AFTER_FAILURE if chunk.failures else Outcome.DONE)
        task.items_resolved += size
        task.items_bad += size - items_ok
        task.items_computed += size
        task.items_by_node[node_id] = task.items_by_node.get(node_id, 0) + size
        if node is not None:
            node.items_done += size
            node.chunks_done += 1
        self._finish_if_resolved(task, now, out)

    def _chunk_failed(self, event: ChunkFailed, now: float, out: list[Action]) -> None:
        task = self._tasks.get(event.task_id)
        chunk = task.chunks.open_chunk(event.chunk) if task is not None and task.live else None
        lease = chunk.lease(event.attempt) if chunk is not None else None
        if task is None or chunk is None or lease is None or lease.ended or lease.node_id != event.node_id:
            return
        # A failure the node calls permanent (an operation it cannot run, an input it
        # cannot read) uses up the chunk's attempts: retrying would only burn them.
        chunk.failures = chunk.failures + 1 if event.retryable else max(chunk.failures + 1, task.max_attempts)
        self._end(lease, out)
        reason = f"failed: {event.reason}" if event.retryable else f"failed, not retryable: {event.reason}"
        self._settle(task, chunk, event.node_id, reason, now, out)

    def _finish_if_resolved(self, task: TrackedTask, now: float, out: list[Action]) -> bool:
        if task.items_resolved + task.items_abandoned < task.items:
            return False
        self._finish(task, TaskState.FAILED if task.items_failed else TaskState.DONE, now, out)
        return True

    def _finish(self, task: TrackedTask, state: TaskState, now: float, out: list[Action]) -> None:
        task.state = state
        task.live = False
        task.finished_at = now
        task.unproven.clear()
        for chunk in [chunk for chunk, holder in self._holds.items() if holder is task]:
            self._release_hold(chunk)
        items_ok = task.items_resolved - task.items_bad
        out.append(TaskFinished(task.task_id, state, items_ok, task.items_failed,
                                MappingProxyType(dict(task.items_by_node)), task.held_results))

    # --- leases -------------------------------------------------------------------------------

    def _issue(self, task: TrackedTask, chunk: Chunk, node: TrackedNode, now: float, out: list[Action]) -> None:
        attempt = len(chunk.leases) + 1
        lease = Lease(task, chunk, attempt, node, now)
        chunk.leases.append(lease)
        if not chunk.live:
            task.running_chunks += 1
        chunk.live += 1
        node.leases[lease] = None
        self._live_leases += 1
        self._unchecked[lease] = None
        if task.state is TaskState.QUEUED:
            task.state = TaskState.RUNNING
            task.started_at = now
        out.append(AssignChunk(node.node_id, task.task_id, chunk.number, chunk.start, chunk.stop, attempt))

    def _end(self, lease: Lease, out: list[Action]) -> None:
        """A live copy ends (result, failure, cancel, its node gone); free its node's room."""
        lease.ended = True
        chunk = lease.chunk
        chunk.live -= 1
        if not chunk.live:
            lease.task.running_chunks -= 1
        self._live_leases -= 1
        self._unchecked.pop(lease, None)
        if len(self._lease_deadlines) > 2 * self._live_leases + COMPACT_SLACK:
            self._lease_deadlines = [entry for entry in self._lease_deadlines if not entry[2].ended]
            heapq.heapify(self._lease_deadlines)
        node = lease.node
        if node.gone:
            return  # _release_leases lets go of all its leases at once
        del node.leases[lease]
        if node.draining and not node.leases:
            out.append(NodeDrained(node.node_id))
        self._room.offer(node, len(self._nodes))

    def _release_leases(self, node: TrackedNode, reason: str, counts: bool, now: float, out: list[Action]) -> None:
        """End every copy a node holds and put the chunks back in line."""
        for lease in list(node.leases):
            if counts:
                lease.chunk.failures += 1
            self._end(lease, out)
            self._settle(lease.task, lease.chunk, node.node_id, reason, now, out)
        node.leases.clear()

    def _settle(self, task: TrackedTask, chunk: Chunk, node_id: str, reason: str, now: float, out: list[Action]) -> None:
        """After a copy ended without a result: requeue, back up, wait or abandon the chunk."""
        if chunk.live:
            # Another copy still runs; if it is overdue it may have a backup again.
            (other, *more) = chunk.live_leases()
            if not more and other.overdue and chunk.failures < task.max_attempts:
                if task.chunks.want_backup(chunk):
                    out.append(ChunkRequeued(task.task_id, chunk.number, chunk.start, chunk.stop, node_id, reason))
                    self._wake(task)
            return
        if chunk.failures >= task.max_attempts and chunk.held is not None:
            self._confirm_here(task, chunk, out)  # no second node could confirm it: the shell does
            return
        if chunk.failures >= task.max_attempts:
            task.chunks.close(chunk, Outcome.ABANDONED)
            task.items_abandoned += chunk.size
            out.append(ChunkAbandoned(
                task.task_id, chunk.number, chunk.start, chunk.stop,
                f"failed {chunk.failures} times, last: {reason}",
            ))
            self._finish_if_resolved(task, now, out)
            return
        task.chunks.requeue(chunk, avoid=node_id)
        out.append(ChunkRequeued(task.task_id, chunk.number, chunk.start, chunk.stop, node_id, reason))
        self._wake(task)

    def _tick(self, event: Tick, now: float, out: list[Action]) -> None:
        self._close_silent(now, out)
        self._back_up_overdue(now, out)
        if self._holds:
            self._confirm_unreplicable(out)

    def _close_silent(self, now: float, out: list[Action]) -> None:
        deadlines = self._silence_deadlines
        while deadlines and deadlines[0][0] < now:
            _, _, node = heapq.heappop(deadlines)
            if node.gone:
                continue
            if node.last_seen + self._heartbeat_timeout_s < now:
                out.append(CloseNode(node.node_id, f"silent for {now - node.last_seen:.1f} s"))
                self._node_gone(node.node_id, "node lost", True, now, out)
            else:
                self._watch_silence(node, node.last_seen)

    def _back_up_overdue(self, now: float, out: list[Action]) -> None:
        due = list(itertools.takewhile(lambda lease: lease.assigned_at + self._min_lease_s < now, self._unchecked))
        for lease in due:
            del self._unchecked[lease]
            self._check_lease(lease, now, out)
        deadlines = self._lease_deadlines
        while deadlines and deadlines[0][0] < now:
            self._check_lease(heapq.heappop(deadlines)[2], now, out)

    def _check_lease(self, lease: Lease, now: float, out: list[Action]) -> None:
        """Back up a lease past its limit; one not yet past it waits in the heap for its due time."""
        if lease.ended:
            return
        task = lease.task
        chunk = lease.chunk
        expected_s = task.sizer.expected_s(chunk.size)
        limit = self._min_lease_s
        if expected_s is not None:
            limit = max(limit, self._straggler_factor * expected_s)
        due = lease.assigned_at + limit
        if not due < now:
            heapq.heappush(self._lease_deadlines, (due, next(self._seq), lease))
            return
        lease.overdue = True
        if chunk.live == 1 and chunk.failures < task.max_attempts and task.chunks.want_backup(chunk):
            out.append(ChunkRequeued(
                task.task_id, chunk.number, chunk.start, chunk.stop, lease.node_id, "overdue, re-issued",
            ))
            self._wake(task)

    # --- assigning ----------------------------------------------------------------------------

    def _wake(self, task: TrackedTask) -> None:
        if not task.runnable and task.live:
            task.runnable = True
            self._runnable.append(task)

    def _fill(self, now: float, out: list[Action]) -> None:
        """Give work to every node with room while some task has work for it."""
        passed_over: list[TrackedNode] = []
        while self._runnable:
            node = self._room.pop(len(self._nodes))
            if node is None:
                break
            if self._assign_one(node, now, out):
                self._room.offer(node, len(self._nodes))  # to the back of the line: nodes take turns
            else:
                passed_over.append(node)  # nothing suits it now; offer it again next time
        for node in passed_over:
            self._room.offer(node, len(self._nodes))

    def _assign_one(self, node: TrackedNode, now: float, out: list[Action]) -> bool:
        lone_node = self._open_nodes <= 1
        for task in self._tasks_in_turn(now):
            if task.live and (task.operation or task.requires) and not suits(task, node):
                continue  # not for this node: it stays runnable for others
            chunk = task.chunks.take(node.node_id, self._total_slots, lone_node) if task.live else None
            if chunk is None:
                if not (task.live and task.chunks.has_work()):
                    self._runnable.remove(task)
                    task.runnable = False
                continue
            if self._outlasts_deadline(node, task, chunk, now):
                task.chunks.put_back(chunk)
                continue
            # The task goes to the back of the line: among equals, the next one comes first. A
            # task with nothing left to hand out (a chain link's one-chunk tasks) leaves it now
            # rather than after another pass; ``_wake`` brings it back if a chunk returns.
            self._runnable.remove(task)
            if task.chunks.has_work():
                self._runnable.append(task)
            else:
                task.runnable = False
            self._issue(task, chunk, node, now, out)
            return True
        return False

    def _tasks_in_turn(self, now: float) -> list[TrackedTask]:
        """The runnable tasks in the order they are offered the next chunk.

        Higher priority first. Within a priority, the task that got the least compute
        lately (least attained service, fading with ``share_half_life_s``): a small task
        submitted behind a huge one is served first and finishes, instead of waiting its
        turn behind the huge one's chunks; two long tasks even out. Then the fewest chunks
        in flight, then the order of the line, which turns.
        """
        line = list(self._runnable)
        if len(line) == 1:
            return line
        turn = {id(task): i for i, task in enumerate(line)}
        half_life = self._share_half_life_s
        return sorted(line, key=lambda t: (-t.priority, t.recent_service_s(now, half_life), t.running_chunks,
                                           turn[id(t)]))

    def _outlasts_deadline(self, node: TrackedNode, task: TrackedTask, chunk: Chunk, now: float) -> bool:
        """Whether the chunk would still run on the node when the node's walltime ends.

        A chunk is expected to take, with a margin, its items times the seconds per item the
        node itself took on the task's chunks; for a task it has not run yet, the task's
        measured time for its size (the target chunk time before any is measured) times how
        much slower than that the node has been (never taken as faster); it starts after the chunks the node holds,
        shared out over its slots, as if none of them had begun.
        """
        if node.deadline is None:
            return False
        held_s = sum(self._expected_on(node, lease.task, lease.chunk) for lease in node.leases)
        start = now + held_s / max(node.slots, 1)
        return start + self._expected_on(node, task, chunk) > node.deadline

    def _expected_on(self, node: TrackedNode, task: TrackedTask, chunk: Chunk) -> float:
        own = node.speeds.get(task.task_id)
        if own is not None:  # how fast this very node ran the task's chunks
            return own * chunk.size * self._deadline_margin
        expected_s = task.sizer.expected_s(chunk.size)
        if expected_s is None:
            expected_s = self._target_chunk_s
        return expected_s * max(1.0, node.slowness or 1.0) * self._deadline_margin
