"""Node deadlines in the Dispatcher: no chunk expected to outlast a node's walltime, with a fake clock.

A small seeded world of its own (the fleet-wide invariants are ``dispatcher_sim``'s): nodes
of different speeds, some with a walltime after which they are killed as a batch system
kills a job, compute their chunks slot by slot; the clock only moves when the
simulation says so. Every chunk must be done once, none may be running on a node when
its walltime ends once the task's speed is known, and the walltimed nodes must have
done work before it.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest

from protocol.dispatch_events import (
    AssignChunk, HeartbeatReceived, NodeJoined, NodeLost, ResultReceived, TaskFinished, TaskState, TaskSubmitted, Tick,
)
from protocol.dispatcher import Dispatcher
from protocol.frames import FrameDecoder
from protocol.messages import Hello, decode_message, encode_message


@dataclass
class SimNode:
    node_id: str
    slots: int
    sec_per_item: float
    walltime: float | None
    queue: list[AssignChunk] = field(default_factory=list)
    running: dict[int, AssignChunk] = field(default_factory=dict)  # slot → chunk
    alive: bool = True
    items_done: int = 0


class DeadlineWorld:
    """One Dispatcher, a fake clock, and nodes that compute at their own speed until their walltime."""

    def __init__(self, seed: int, *, deadlines_known: bool = True) -> None:
        self.rng = random.Random(seed)
        self.dispatcher = Dispatcher(heartbeat_timeout_s=30.0, min_lease_s=1e6)
        self.now = 0.0
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.deadlines_known = deadlines_known
        self.nodes: dict[str, SimNode] = {}
        self.done: dict[tuple[str, int], int] = {}  # (task, chunk) → results accepted
        self.killed_mid_chunk: list[tuple[str, AssignChunk, float]] = []
        self.finished: list[TaskFinished] = []
        self.measured_from: dict[str, float] = {}  # task → when its first result came in
        self.assigned_at: dict[tuple[str, str, int, int], float] = {}

    def at(self, when: float, kind: str, payload: object) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, payload))

    def handle(self, event: object) -> None:
        for action in self.dispatcher.handle(event, self.now):
            if isinstance(action, AssignChunk):
                node = self.nodes[action.node_id]
                self.assigned_at[(action.node_id, action.task_id, action.chunk, action.attempt)] = self.now
                node.queue.append(action)
                self.start_work(node)
            elif isinstance(action, TaskFinished):
                self.finished.append(action)

    def start_work(self, node: SimNode) -> None:
        for slot in range(node.slots):
            if slot not in node.running and node.queue:
                chunk = node.queue.pop(0)
                node.running[slot] = chunk
                self.at(self.now + (chunk.stop - chunk.start) * node.sec_per_item, "done", (node.node_id, slot, chunk))

    def join(self, node: SimNode) -> None:
        self.nodes[node.node_id] = node
        deadline = None
        if node.walltime is not None:
            self.at(node.walltime, "walltime", node.node_id)
            deadline = node.walltime if self.deadlines_known else None
        self.handle(NodeJoined(node.node_id, node.slots, node.slots * 2, deadline=deadline))
        self.at(self.now + 1.0, "beat", node.node_id)

    def run(self, until: float) -> None:
        self.at(0.5, "tick", None)
        while self.events and len(self.finished) < self.tasks:
            when, _, kind, payload = heapq.heappop(self.events)
            if when > until:
                raise AssertionError(f"tasks not finished by t={until}")
            self.now = max(self.now, when)
            if kind == "tick":
                self.handle(Tick())
                self.at(self.now + 0.5, "tick", None)
            elif kind == "beat":
                node = self.nodes[payload]
                if node.alive:
                    self.handle(HeartbeatReceived(node.node_id))
                    self.at(self.now + 1.0, "beat", node.node_id)
            elif kind == "join":
                self.join(payload)
            elif kind == "walltime":
                node = self.nodes[payload]
                node.alive = False
                for chunk in node.running.values():
                    self.killed_mid_chunk.append((node.node_id, chunk, self.now))
                node.running.clear()
                node.queue.clear()
                self.handle(NodeLost(node.node_id, "walltime reached: killed"))
            elif kind == "done":
                node_id, slot, chunk = payload
                node = self.nodes[node_id]
                if not node.alive or node.running.get(slot) is not chunk:
                    continue
                del node.running[slot]
                size = chunk.stop - chunk.start
                self.done[(chunk.task_id, chunk.chunk)] = self.done.get((chunk.task_id, chunk.chunk), 0) + 1
                self.measured_from.setdefault(chunk.task_id, self.now)
                node.items_done += size
                self.handle(ResultReceived(node_id, chunk.task_id, chunk.chunk, chunk.attempt, size,
                                           size * node.sec_per_item))
                self.start_work(node)

    def submit(self, tasks: int, items: int) -> None:
        self.tasks = tasks
        for t in range(tasks):
            self.handle(TaskSubmitted(f"t{t}", items, None, 5))


def world_of(seed: int, *, deadlines_known: bool = True) -> DeadlineWorld:
    world = DeadlineWorld(seed, deadlines_known=deadlines_known)
    rng = world.rng
    world.submit(tasks=rng.randint(1, 3), items=rng.randint(2000, 6000))
    # Anchors without a walltime make sure every task can finish.
    world.join(SimNode("anchor", 1, 0.01, None))
    for n in range(rng.randint(3, 8)):
        node = SimNode(f"job{n}", rng.randint(1, 4), rng.uniform(0.002, 0.02), None)
        start = rng.uniform(0.0, 20.0)
        node.walltime = start + rng.uniform(5.0, 40.0)
        world.at(start, "join", node)
    return world


@pytest.mark.parametrize("seed", range(40))
def test_no_chunk_runs_into_a_nodes_walltime_once_speeds_are_known(seed: int) -> None:
    world = world_of(seed)
    world.run(until=10_000.0)
    assert all(f.state is TaskState.DONE for f in world.finished)
    assert all(count == 1 for count in world.done.values())  # nothing computed twice, nothing lost
    late = [(node_id, chunk.task_id, chunk.chunk, when) for node_id, chunk, when in world.killed_mid_chunk
            if world.assigned_at[(node_id, chunk.task_id, chunk.chunk, chunk.attempt)]
            > world.measured_from.get(chunk.task_id, float("inf")) + 1.0]
    assert late == [], f"seed {seed}: chunks assigned with known speed still ran at walltime: {late[:5]}"
    assert sum(node.items_done for node in world.nodes.values() if node.walltime is not None) > 0


def test_without_deadlines_the_same_worlds_lose_chunks_to_walltime() -> None:
    """The check above can fail: nodes that do not tell their walltime are caught mid-chunk."""
    lost = 0
    for seed in range(40):
        world = world_of(seed, deadlines_known=False)
        world.run(until=10_000.0)
        lost += len(world.killed_mid_chunk)
    assert lost > 0


def test_a_node_past_its_deadline_gets_nothing_and_the_work_waits_for_another() -> None:
    d = Dispatcher()
    d.handle(TaskSubmitted("t", 100, 10, 3), 0.0)
    assert d.handle(NodeJoined("late", 2, 4, deadline=0.5), 0.0) == []  # a chunk is expected to take ~1 s
    assert d.items_waiting() == 100
    assigned = [a for a in d.handle(NodeJoined("free", 1, 2), 1.0) if isinstance(a, AssignChunk)]
    assert [a.node_id for a in assigned] == ["free", "free"]
    assert d.items_waiting() == 80


def test_hello_carries_the_deadline_only_when_there_is_one() -> None:
    plain = Hello(2, "n", 1, 2)
    assert b"deadline_s" not in b"".join(encode_message(plain))  # what a peer of before knows
    timed = Hello(2, "n", 1, 2, deadline_s=3600.0)
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_message(timed)))
    assert decode_message(decoder.next_frame()) == timed
    with pytest.raises(ValueError):
        Hello(2, "n", 1, 2, deadline_s=-1.0)
