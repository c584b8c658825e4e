"""The Dispatcher's replication: results held for a second computation, and distrust.

A part of ``protocol.dispatcher.Dispatcher``, kept apart because it is one idea: a
replicated task's result is held (``ResultHeld``) until a second node's result confirms
it, or the shell's own computation (``ConfirmHeld`` / ``HeldChecked``) when no other node
can take the chunk; a node caught with a wrong result has its unconfirmed chunks reopened
(``ChunkReopened``, ``NodeDistrusted``). ``ReplicationPolicy`` says which results are held.
The methods run inside ``Dispatcher.handle`` and use its state and helpers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from protocol.chunking import Chunk
from protocol.dispatch_events import Action, ChunkReopened, ConfirmHeld, HeldChecked, NodeDistrusted, ResultHeld
from protocol.dispatch_state import Lease, TrackedNode, TrackedTask, suits
from protocol.replication import ReplicationPolicy


class Replicas:
    """Holding, confirming and distrusting results; mixed into the Dispatcher, which provides these:"""

    replication: ReplicationPolicy
    _nodes: dict[str, TrackedNode]
    _tasks: dict[str, TrackedTask]
    _open_nodes: int
    _holds: dict[Chunk, TrackedTask]
    _confirming: set[Chunk]
    _standing: OrderedDict[str, tuple[int, int]]
    _end: Callable[[Lease, list[Action]], None]
    _wake: Callable[[TrackedTask], None]
    _complete: Callable[..., None]
    _blame: Callable[[str, float, list[Action]], None]

    def _replica_wanted(self, node: TrackedNode | None) -> bool:
        return node is None or self.replication.wanted(node.proven)

    def _can_replicate(self, task: TrackedTask, node: TrackedNode | None) -> bool:
        """Whether a node other than ``node`` may take the task's work now."""
        if task.operation or task.requires:
            return any(other is not node and other.assignable and other.capacity and suits(task, other)
                       for other in self._nodes.values())
        own = 1 if node is not None and node.assignable and node.capacity else 0
        return self._open_nodes - own > 0

    def _prove(self, node_id: str) -> None:
        node = self._nodes.get(node_id)
        if node is not None:
            node.proven += 1
        elif node_id in self._standing:
            errors, proven = self._standing[node_id]
            self._standing[node_id] = (errors, proven + 1)

    def _hold(self, task: TrackedTask, chunk: Chunk, lease: Lease, items_ok: int, out: list[Action]) -> None:
        """Keep a valid result aside and line the chunk up for a second node."""
        self._release_hold(chunk)
        chunk.held = lease
        chunk.held_ok = items_ok
        self._holds[chunk] = task
        task.held_results += 1
        out.append(ResultHeld(lease.node_id, task.task_id, chunk.number, lease.attempt))
        if not lease.ended:
            self._end(lease, out)
        if not chunk.live:
            task.chunks.requeue(chunk, avoid=lease.node_id)
            self._wake(task)
        if not self._can_replicate(task, self._nodes.get(lease.node_id)):
            self._confirm_here(task, chunk, out)

    def _release_hold(self, chunk: Chunk) -> None:
        chunk.held = None
        self._holds.pop(chunk, None)
        self._confirming.discard(chunk)

    def _confirm_here(self, task: TrackedTask, chunk: Chunk, out: list[Action]) -> None:
        held = chunk.held
        if held is not None and chunk not in self._confirming:
            self._confirming.add(chunk)
            out.append(ConfirmHeld(held.node_id, task.task_id, chunk.number, held.attempt))  # type: ignore[attr-defined]

    def _confirm_unreplicable(self, out: list[Action]) -> None:
        """Held results no other node can confirm now (it left) are confirmed by the shell."""
        for chunk, task in list(self._holds.items()):
            held = chunk.held
            if held is not None and not chunk.live and task.live and chunk not in self._confirming \
                    and not self._can_replicate(task, self._nodes.get(held.node_id)):
                self._confirm_here(task, chunk, out)

    def _held_checked(self, event: HeldChecked, now: float, out: list[Action]) -> None:
        task = self._tasks.get(event.task_id)
        chunk = task.chunks.open_chunk(event.chunk) if task is not None and task.live else None
        held = chunk.held if chunk is not None else None
        if task is None or chunk is None or held is None or held.attempt != event.attempt:  # type: ignore[attr-defined]
            return
        self._confirming.discard(chunk)
        if event.valid:
            self._prove(held.node_id)
            self._complete(task, chunk, self._nodes.get(held.node_id), held.node_id, event.attempt, chunk.held_ok,
                           now, out, proven=True, held=True)
            return
        self._release_hold(chunk)
        if event.blame:
            self._blame(held.node_id, now, out)
        if not chunk.live:
            task.chunks.requeue(chunk, avoid=held.node_id)
            self._wake(task)

    def _reopen_unproven(self, node_id: str, out: list[Action]) -> None:
        """A node was caught: compute again what it completed that nobody confirmed, and drop its holds."""
        out.append(NodeDistrusted(node_id))
        for chunk, task in list(self._holds.items()):
            if chunk.held is not None and chunk.held.node_id == node_id:
                self._release_hold(chunk)
        for task in self._tasks.values():
            if not task.live or not task.unproven:
                continue
            for number, (owner, items_ok) in list(task.unproven.items()):
                if owner != node_id:
                    continue
                del task.unproven[number]
                chunk = task.chunks.reopen(number)
                size = chunk.size
                task.items_resolved -= size
                task.items_bad -= size - items_ok
                task.items_computed -= size
                task.items_by_node[node_id] -= size
                if not task.items_by_node[node_id]:
                    del task.items_by_node[node_id]
                task.chunks.requeue(chunk, avoid=node_id)
                out.append(ChunkReopened(task.task_id, number, chunk.start, chunk.stop, node_id,
                                         "its node was caught with a wrong result"))
                self._wake(task)
