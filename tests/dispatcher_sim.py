"""A seeded simulation of a changing fleet around one Dispatcher, with a fake clock.

The world: nodes that join, compute one chunk per slot at their own speed, heartbeat, and
misbehave on cue (leave, die, freeze, slow down, fail chunks, return wrong results, change
their credit, reconnect); an operator who drains, kicks, releases quarantines and cancels
tasks; users who submit tasks with fixed or automatic chunk sizes, some holding poison
items that fail on every node; now and then a front-end restart that resumes from its
journal. Messages take a little time to travel (in order per direction) and results are
verified for a moment before the Dispatcher sees them, so results race cancels, kicks and
node deaths the way they do on a real network.

`Simulation` plays the front-end shell: it turns messages into events, asks `wants_result`
before taking a result, and carries out actions. After every `Dispatcher.handle` the
`Checker` verifies the invariants against its own ledger and mirror:

- every item is resolved (done or failed) exactly once, and tasks report the ledger's totals;
- nothing is assigned to a draining, departed, kicked or quarantined node, nor beyond its
  window, nor twice to one node, nor more than two live copies of a chunk;
- cancels name live copies; completed, abandoned and finished work leaves no copy running;
- completions answer the result just handed in, never one from a quarantined node;
- `wants_result` is true exactly for issued attempts at open chunks of live tasks;
- every few steps the Dispatcher's snapshot matches the mirror.

At the end every task must have finished: healthy anchor nodes stay connected once they join.
`run_scenario(seed)` is the entry point; any failure raises `SimulationError` naming the seed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from protocol.dispatch_events import (
    Action,
    AssignChunk,
    CancelChunk,
    ChunkAbandoned,
    ChunkCompleted,
    ChunkFailed,
    ChunkRequeued,
    CloseNode,
    CreditChanged,
    DrainRequested,
    Event,
    HeartbeatReceived,
    KickRequested,
    NodeDrained,
    NodeJoined,
    NodeLeft,
    NodeLost,
    NodeQuarantined,
    NodeState,
    QuarantineReleased,
    ResultReceived,
    TaskCancelled,
    TaskFinished,
    TaskState,
    TaskSubmitted,
    Tick,
)
from protocol.dispatcher import Dispatcher

TICK_S = 0.5
HEARTBEAT_S = 0.7
MAX_LATENCY_S = 0.05
VERIFY_S = 0.1  # the front-end checks a result for up to this long before the Dispatcher sees it
MAX_SLOWNESS = 30.0  # a slow node takes at most this many times the task's item_s per item
COMPARE_EVERY = 25  # steps between full snapshot comparisons
OPEN, OK, BAD, ABANDONED = 0, 1, 2, 3  # ledger states of one item

ChunkKey = tuple[str, int]  # (task_id, chunk)
CopyKey = tuple[str, int, int]  # (task_id, chunk, attempt)


class SimulationError(AssertionError):
    """An invariant broke, or a task never finished."""


class Kind(Enum):
    """How a node computes."""

    HEALTHY = "healthy"
    SLOW = "slow"
    FLAKY = "flaky"  # some chunks fail
    LIAR = "liar"  # some results are wrong (the front-end's check catches them)


@dataclass(frozen=True)
class SimTask:
    """A task as the users and the ledger know it."""

    task_id: str
    items: int
    chunk_size: int | None
    max_attempts: int
    item_s: float
    poison: frozenset[int]  # chunks holding one of these fail everywhere
    bad: frozenset[int]  # these items fail on their own (items_ok counts them out)
    submit_at: float
    cancel_at: float | None


@dataclass
class _Ledger:
    """What became of each item of one task."""

    items: bytearray
    finished: bool = False
    abandoned_before_restart: int = 0  # journal ranges count as done in a resumed Dispatcher


@dataclass
class _NodeMirror:
    """What the Dispatcher should believe about one open session."""

    slots: int
    window: int
    draining: bool = False
    quarantined: bool = False


@dataclass
class _Job:
    start: int
    stop: int


@dataclass
class SimNode:
    """One compute node: its nature, its session and the chunks it holds."""

    node_id: str
    kind: Kind
    slots: int
    window: int
    speed: float  # seconds per item, as a multiple of the task's item_s
    anchor: bool
    session: int = 0
    connected: bool = False
    frozen: bool = False
    jobs: dict[CopyKey, _Job] = field(default_factory=dict)
    waiting: deque[CopyKey] = field(default_factory=deque)
    running: set[CopyKey] = field(default_factory=set)
    last_sent: float = 0.0
    ready_at: float = 0.0  # messages to the front-end arrive in order: not before this

    def drop_work(self) -> None:
        """Forget every held chunk (the session that carried them is gone)."""
        self.jobs.clear()
        self.waiting.clear()
        self.running.clear()


class Checker:
    """Verifies every step of the Dispatcher against a ledger and a mirror of its nodes."""

    def __init__(self, seed: int, tasks: dict[str, SimTask], prefetch: int, anchors: set[str]) -> None:
        self._seed = seed
        self._tasks = tasks
        self._prefetch = prefetch
        self._anchors = anchors
        self.ledgers = {task_id: _Ledger(bytearray(task.items)) for task_id, task in tasks.items()}
        self.steps = 0
        self.reset()

    def reset(self) -> None:
        """A new Dispatcher (front-end restart): it knows no node and no copy."""
        self.mirror: dict[str, _NodeMirror] = {}
        self.held: dict[str, set[CopyKey]] = {}
        self.copies: dict[ChunkKey, set[tuple[str, int]]] = {}
        self.ranges: dict[ChunkKey, tuple[int, int]] = {}
        self.attempts: dict[ChunkKey, int] = {}

    def fail(self, message: str) -> None:
        """Stop the run with the seed to replay it."""
        raise SimulationError(f"seed {self._seed}, step {self.steps}: {message}")

    def capacity(self, node_id: str) -> int:
        """The most chunks the Dispatcher may leave with that node."""
        mirror = self.mirror[node_id]
        return min(mirror.window, mirror.slots * (1 + self._prefetch))

    def observe(self, event: Event, actions: list[Action], dispatcher: Dispatcher, now: float) -> None:
        """Check one step: the event that went in and the actions that came out."""
        self.steps += 1
        self._before(event)
        completed: list[ChunkKey] = []
        finished: list[str] = []
        for action in actions:
            self._check(action, event, dispatcher, completed, finished)
        for key in completed:
            if self.copies.get(key):
                self.fail(f"chunk {key} completed but copies still run: {self.copies[key]}")
        for task_id in finished:
            running = [key for key in self.copies if key[0] == task_id]
            if running:
                self.fail(f"task {task_id} finished with copies still running: {running}")
        if self.steps % COMPARE_EVERY == 0:
            self.compare(dispatcher, now)

    def _before(self, event: Event) -> None:
        """What the event itself changes, before the actions are checked."""
        if isinstance(event, NodeJoined):
            known = self.mirror.get(event.node_id)
            if known is None:
                self.mirror[event.node_id] = _NodeMirror(max(0, event.slots), max(0, event.window))
                self.held[event.node_id] = set()
            else:  # a new session of a known node: the old session's copies ended silently
                self._forget_copies(event.node_id)
                self.held[event.node_id] = set()
                known.slots, known.window = max(0, event.slots), max(0, event.window)
        elif isinstance(event, CreditChanged) and event.node_id in self.mirror:
            self.mirror[event.node_id].window = max(0, event.window)
            if event.slots is not None:
                self.mirror[event.node_id].slots = max(0, event.slots)
        elif isinstance(event, (NodeLeft, NodeLost)):
            self._remove_node(event.node_id)
        elif isinstance(event, (ResultReceived, ChunkFailed)) and event.node_id in self.held:
            self._end_copy(event.node_id, (event.task_id, event.chunk, event.attempt))
        elif isinstance(event, DrainRequested) and event.node_id in self.mirror:
            self.mirror[event.node_id].draining = True
        elif isinstance(event, QuarantineReleased) and event.node_id in self.mirror:
            self.mirror[event.node_id].quarantined = False

    def _check(
        self, action: Action, event: Event, dispatcher: Dispatcher, completed: list[ChunkKey], finished: list[str],
    ) -> None:
        if isinstance(action, AssignChunk):
            self._check_assign(action, dispatcher)
        elif isinstance(action, CancelChunk):
            key = (action.task_id, action.chunk, action.attempt)
            if key not in self.held.get(action.node_id, ()):
                self.fail(f"{action} names no live copy")
            self._end_copy(action.node_id, key)
        elif isinstance(action, ChunkCompleted):
            if not (
                isinstance(event, ResultReceived) and event.valid
                and (event.task_id, event.chunk, event.attempt, event.node_id)
                == (action.task_id, action.chunk, action.attempt, action.node_id)
            ):
                self.fail(f"{action} does not answer {event}")
            if self.mirror.get(action.node_id, _NodeMirror(0, 0)).quarantined:
                self.fail(f"{action} from a quarantined node")
            self._check_range(action.task_id, action.chunk, action.start, action.stop)
            task = self._tasks[action.task_id]
            self._resolve(action.task_id, action.start, action.stop, lambda item: BAD if item in task.bad else OK)
            expected_ok = sum(1 for item in range(action.start, action.stop) if item not in task.bad)
            if event.items_ok != expected_ok:
                self.fail(f"the simulation sent items_ok={event.items_ok}, expected {expected_ok}")
            completed.append((action.task_id, action.chunk))
        elif isinstance(action, ChunkAbandoned):
            self._check_range(action.task_id, action.chunk, action.start, action.stop)
            if self.copies.get((action.task_id, action.chunk)):
                self.fail(f"{action} while copies still run")
            self._resolve(action.task_id, action.start, action.stop, lambda item: ABANDONED)
        elif isinstance(action, ChunkRequeued):
            self._check_range(action.task_id, action.chunk, action.start, action.stop)
        elif isinstance(action, TaskFinished):
            self._check_finished(action, event)
            finished.append(action.task_id)
        elif isinstance(action, CloseNode):
            if action.node_id not in self.mirror:
                self.fail(f"{action} for a node without a session")
            self._remove_node(action.node_id)
        elif isinstance(action, NodeDrained):
            mirror = self.mirror.get(action.node_id)
            if mirror is None or not mirror.draining or self.held[action.node_id]:
                self.fail(f"{action} but the node is {mirror} holding {self.held.get(action.node_id)}")
        elif isinstance(action, NodeQuarantined):
            if action.node_id in self._anchors or action.node_id not in self.mirror:
                self.fail(f"{action}: an honest or unknown node")
            self.mirror[action.node_id].quarantined = True

    def _check_assign(self, action: AssignChunk, dispatcher: Dispatcher) -> None:
        node_id, task_id, number = action.node_id, action.task_id, action.chunk
        mirror = self.mirror.get(node_id)
        if mirror is None or mirror.draining or mirror.quarantined:
            self.fail(f"{action} to a node that may not take work: {mirror}")
        ledger = self.ledgers[task_id]
        if ledger.finished:
            self.fail(f"{action} for a finished task")
        if not 0 <= action.start < action.stop <= len(ledger.items):
            self.fail(f"{action} outside the task's items")
        if any(ledger.items[action.start:action.stop]):
            self.fail(f"{action} covers items already resolved")
        key = (task_id, number)
        if self.ranges.setdefault(key, (action.start, action.stop)) != (action.start, action.stop):
            self.fail(f"{action} changes the chunk's range {self.ranges[key]}")
        if dispatcher.chunk_range(task_id, number) != (action.start, action.stop):
            self.fail(f"chunk_range disagrees with {action}")
        if action.attempt != self.attempts.get(key, 0) + 1:
            self.fail(f"{action} skips or repeats an attempt number (last {self.attempts.get(key, 0)})")
        self.attempts[key] = action.attempt
        held = self.held[node_id]
        if any(copy[:2] == key for copy in held):
            self.fail(f"{action} to a node that already holds that chunk")
        held.add((task_id, number, action.attempt))
        copies = self.copies.setdefault(key, set())
        copies.add((node_id, action.attempt))
        if len(copies) > 2:
            self.fail(f"{action}: more than two live copies {copies}")
        if len(held) > self.capacity(node_id):
            self.fail(f"{action}: {len(held)} held, window {self.capacity(node_id)}")

    def check_wants_result(self, key: CopyKey, answer: bool) -> None:
        """`wants_result` is true exactly for issued attempts at open chunks of live tasks."""
        ledger = self.ledgers[key[0]]
        chunk_range = self.ranges.get(key[:2])
        expected = (
            not ledger.finished and chunk_range is not None and 1 <= key[2] <= self.attempts[key[:2]]
            and not any(ledger.items[chunk_range[0]:chunk_range[1]])
        )
        if answer != expected:
            self.fail(f"wants_result{key} is {answer}")

    def _check_range(self, task_id: str, number: int, start: int, stop: int) -> None:
        if self.ranges.get((task_id, number)) != (start, stop):
            self.fail(f"chunk {task_id}/{number} reported as {start}..{stop}, assigned as {self.ranges.get((task_id, number))}")

    def _check_finished(self, action: TaskFinished, event: Event) -> None:
        ledger = self.ledgers[action.task_id]
        if ledger.finished:
            self.fail(f"{action} a second time")
        ledger.finished = True
        if action.state is TaskState.CANCELLED:
            if event != TaskCancelled(action.task_id):
                self.fail(f"{action} without a cancel")
            return
        items = ledger.items
        if items.count(OPEN):
            self.fail(f"{action} with {items.count(OPEN)} items unresolved")
        failed = items.count(BAD) + items.count(ABANDONED)
        if (action.items_ok, action.items_failed) != (items.count(OK), failed):
            self.fail(f"{action}, ledger says ok={items.count(OK)} failed={failed}")
        if action.state is not (TaskState.FAILED if failed else TaskState.DONE):
            self.fail(f"{action} in the wrong state")

    def _resolve(self, task_id: str, start: int, stop: int, outcome: Callable[[int], int]) -> None:
        items = self.ledgers[task_id].items
        for item in range(start, stop):
            if items[item] != OPEN:
                self.fail(f"item {task_id}/{item} resolved twice")
            items[item] = outcome(item)

    def _end_copy(self, node_id: str, key: CopyKey) -> None:
        self.held[node_id].discard(key)
        copies = self.copies.get(key[:2])
        if copies is not None:
            copies.discard((node_id, key[2]))
            if not copies:
                del self.copies[key[:2]]

    def _forget_copies(self, node_id: str) -> None:
        for key in list(self.held.get(node_id, ())):
            self._end_copy(node_id, key)

    def _remove_node(self, node_id: str) -> None:
        self._forget_copies(node_id)
        self.held.pop(node_id, None)
        self.mirror.pop(node_id, None)

    def compare(self, dispatcher: Dispatcher, now: float) -> None:
        """The Dispatcher's own snapshot agrees with the mirror and the ledger."""
        snapshot = dispatcher.snapshot(now)
        nodes = {view.node_id: view for view in snapshot.nodes}
        if nodes.keys() != self.mirror.keys():
            self.fail(f"snapshot nodes {sorted(nodes)} != sessions {sorted(self.mirror)}")
        for node_id, view in nodes.items():
            mirror = self.mirror[node_id]
            expected_state = (
                NodeState.QUARANTINED if mirror.quarantined else NodeState.DRAINING if mirror.draining
                else NodeState.BUSY if self.held[node_id] else NodeState.IDLE
            )
            if (view.in_flight, view.window, view.state) != (len(self.held[node_id]), self.capacity(node_id), expected_state):
                self.fail(f"{view} but the mirror holds {len(self.held[node_id])}, {mirror}")
            for key in self.held[node_id]:
                if not dispatcher.wants_result(*key):
                    self.fail(f"wants_result{key} is False for a live copy")
        for view in snapshot.tasks:
            ledger = self.ledgers[view.task_id]
            items = ledger.items
            done = items.count(OK) + items.count(BAD) + ledger.abandoned_before_restart
            failed = items.count(BAD) + items.count(ABANDONED)
            if (view.items_done, view.items_failed) != (done, failed):
                self.fail(f"{view} but the ledger says done={done} failed={failed}")
            if (view.state in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)) != ledger.finished:
                self.fail(f"{view} but finished={ledger.finished}")
            running = sum(1 for key in self.copies if key[0] == view.task_id)
            if view.chunks_in_flight != running:
                self.fail(f"{view} but {running} chunks have live copies")

    def journal(self, task_id: str) -> tuple[tuple[tuple[int, int], ...], int, int]:
        """What a journal holds for a task: resolved ranges, failed items among them, abandoned items."""
        items = self.ledgers[task_id].items
        ranges: list[tuple[int, int]] = []
        for index, state in enumerate(items):
            if state == OPEN:
                continue
            if ranges and ranges[-1][1] == index:
                ranges[-1] = (ranges[-1][0], index + 1)
            else:
                ranges.append((index, index + 1))
        return tuple(ranges), items.count(BAD) + items.count(ABANDONED), items.count(ABANDONED)


@dataclass(frozen=True)
class Params:
    """Dispatcher settings for one scenario, scaled down so simulated time passes quickly."""

    prefetch: int
    heartbeat_timeout_s: float = 2.5
    target_chunk_s: float = 0.5
    straggler_factor: float = 3.0
    min_lease_s: float = 2.0
    max_node_errors: int = 2

    def dispatcher(self) -> Dispatcher:
        """A fresh Dispatcher with these settings."""
        return Dispatcher(
            prefetch=self.prefetch, heartbeat_timeout_s=self.heartbeat_timeout_s,
            target_chunk_s=self.target_chunk_s, straggler_factor=self.straggler_factor,
            min_lease_s=self.min_lease_s, max_node_errors=self.max_node_errors,
        )


@dataclass(frozen=True)
class SimReport:
    """What one run did, for tests that want to see the scenarios were not trivial."""

    seed: int
    steps: int
    nodes: int
    tasks: int
    finished_at: float
    restarts: int
    outcomes: dict[str, TaskState]
    happened: Counter[str]  # action types, requeue reasons, late results accepted


class Simulation:
    """One seeded scenario: the world, the front-end shell around the Dispatcher, the checks."""

    def __init__(self, seed: int, *, big: bool = False) -> None:
        self.seed = seed
        self.rng = rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.params = Params(prefetch=rng.choice((0, 1, 1, 2)), max_node_errors=rng.choice((1, 2, 3)))
        self.dispatcher = self.params.dispatcher()
        self.generation = 0  # front-end restarts so far; messages of older ones are lost
        self.sessions: dict[str, int] = {}  # node id -> open session, as the front-end sees it
        self.outcomes: dict[str, TaskState] = {}
        self.happened: Counter[str] = Counter()
        self.submitted: list[str] = []
        chaos_s = rng.uniform(3.0, 6.0) if big else rng.uniform(5.0, 20.0)
        self.nodes = self._make_nodes(rng.randint(100, 300) if big else rng.randint(1, 12))
        self.tasks = self._make_tasks(rng.randint(1, 4), chaos_s)
        anchors = {node.node_id for node in self.nodes.values() if node.anchor}
        self.checker = Checker(seed, self.tasks, self.params.prefetch, anchors)
        self._schedule_world(chaos_s)
        # Bounded time: the anchors alone could do all the work three times over, plus time
        # for the slowest node to finish a copy it holds (only one backup runs at a time).
        anchor_slots = sum(node.slots for node in self.nodes.values() if node.anchor)
        work_s = sum(task.items * task.item_s for task in self.tasks.values())
        self.deadline = chaos_s + 3 * work_s / anchor_slots + 60.0

    # --- scenario ---------------------------------------------------------------------------

    def _make_nodes(self, count: int) -> dict[str, SimNode]:
        rng = self.rng
        nodes = {}
        anchors = rng.randint(1, min(2, count))
        for index in range(count):
            anchor = index < anchors
            kind = Kind.HEALTHY if anchor else rng.choice(list(Kind))
            node = SimNode(
                node_id=f"n{index}", kind=kind, slots=rng.choice((1, 2, 4) if anchor else (0, 1, 1, 2, 4)),
                window=0, speed=rng.uniform(5, 15) if kind is Kind.SLOW else rng.uniform(0.7, 1.3), anchor=anchor,
            )
            node.window = node.slots + rng.choice((0, 1, 1, 2, 5))
            nodes[node.node_id] = node
        return nodes

    def _make_tasks(self, count: int, chaos_s: float) -> dict[str, SimTask]:
        rng = self.rng
        tasks = {}
        for index in range(count):
            items = rng.choice((0, 1, 7)) if rng.random() < 0.1 else rng.randint(10, 400)
            poison = frozenset(rng.sample(range(items), k=min(items, rng.choice((1, 2)))) if rng.random() < 0.25 else ())
            bad = frozenset(item for item in range(items) if rng.random() < 0.01) if rng.random() < 0.3 else frozenset()
            task = SimTask(
                task_id=f"t{index}", items=items,
                chunk_size=None if rng.random() < 0.5 else rng.randint(1, 40),
                max_attempts=rng.randint(1, 4), item_s=rng.uniform(0.002, 0.03),
                poison=poison, bad=bad, submit_at=rng.uniform(0, chaos_s),
                cancel_at=rng.uniform(0, chaos_s * 1.5) if rng.random() < 0.15 else None,
            )
            tasks[task.task_id] = task
        return tasks

    def _schedule_world(self, chaos_s: float) -> None:
        rng = self.rng
        for task in self.tasks.values():
            self.at(task.submit_at, self._submit, task)
            if task.cancel_at is not None:
                self.at(max(task.cancel_at, task.submit_at), self._cancel, task.task_id)
        for node in self.nodes.values():
            self.at(rng.uniform(0, chaos_s) if rng.random() < 0.7 else 0.0, self._connect, node)
            if node.anchor:
                continue
            for _ in range(rng.choice((0, 1, 1, 2, 3))):
                fate = rng.choice((self._leave, self._die, self._freeze, self._slow_down, self._change_credit,
                                   self._reconnect, self._drain, self._kick))
                self.at(rng.uniform(0, chaos_s), fate, node)
        if rng.random() < 0.15:
            self.at(rng.uniform(0, chaos_s), self._restart)
        self.at(TICK_S, self._tick)

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        """Schedule something to happen at simulated time `when`."""
        heapq.heappush(self._queue, (when, next(self._seq), action, args))

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> SimReport:
        """Play the scenario to its end; raise SimulationError if anything breaks."""
        last_submit = max((task.submit_at for task in self.tasks.values()), default=0.0)
        while self._queue:
            when, _, action, args = heapq.heappop(self._queue)
            if when > self.deadline:
                break
            self.now = when
            action(*args)
            if self.now >= last_submit and all(ledger.finished for ledger in self.checker.ledgers.values()):
                break
        unfinished = [task_id for task_id, ledger in self.checker.ledgers.items() if not ledger.finished]
        if unfinished:
            self.checker.fail(f"tasks {unfinished} unfinished at t={self.now:.1f} (deadline {self.deadline:.1f})")
        self.checker.compare(self.dispatcher, self.now)
        return SimReport(
            seed=self.seed, steps=self.checker.steps, nodes=len(self.nodes), tasks=len(self.tasks),
            finished_at=self.now, restarts=self.generation, outcomes=dict(self.outcomes), happened=self.happened,
        )

    def step(self, event: Event) -> None:
        """Hand one event to the Dispatcher, check the step, carry out the actions."""
        actions = self.dispatcher.handle(event, self.now)
        self.checker.observe(event, actions, self.dispatcher, self.now)
        for action in actions:
            self.happened[type(action).__name__] += 1
            if isinstance(action, ChunkRequeued):
                self.happened[action.reason.split(":")[0]] += 1
            if isinstance(action, AssignChunk):
                self._to_node(action.node_id, self._node_assigned, action)
            elif isinstance(action, CancelChunk):
                self._to_node(action.node_id, self._node_cancelled, action)
            elif isinstance(action, CloseNode):
                self._close_session(action.node_id)
            elif isinstance(action, NodeDrained) and self.rng.random() < 0.5:
                self.at(self.now + self.rng.uniform(0, 1), self._leave, self.nodes[action.node_id])
            elif isinstance(action, NodeQuarantined) and self.rng.random() < 0.6:
                self.at(self.now + self.rng.uniform(1, 5), self._release, action.node_id, self.sessions[action.node_id])
            elif isinstance(action, TaskFinished):
                self.outcomes[action.task_id] = action.state

    def _tick(self) -> None:
        self.step(Tick())
        self.at(self.now + TICK_S, self._tick)

    # --- the front-end's side ---------------------------------------------------------------

    def _submit(self, task: SimTask) -> None:
        self.submitted.append(task.task_id)
        self.step(TaskSubmitted(task.task_id, task.items, task.chunk_size, task.max_attempts, owner="sim"))

    def _cancel(self, task_id: str) -> None:
        if not self.checker.ledgers[task_id].finished:
            self.step(TaskCancelled(task_id))

    def _release(self, node_id: str, session: int) -> None:
        if self.sessions.get(node_id) == session:
            self.step(QuarantineReleased(node_id))

    def _drain(self, node: SimNode) -> None:
        if node.node_id in self.sessions:
            self.step(DrainRequested(node.node_id))

    def _kick(self, node: SimNode) -> None:
        if node.node_id in self.sessions:
            self.step(KickRequested(node.node_id))

    def _close_session(self, node_id: str) -> None:
        session = self.sessions.pop(node_id)
        self._to_node(node_id, self._node_closed, None, session)

    def _restart(self) -> None:
        """The front-end restarts: sessions drop, a new Dispatcher resumes from the journal."""
        self.generation += 1
        for node_id in list(self.sessions):
            node = self.nodes[node_id]
            self.sessions.pop(node_id)
            node.connected = False
            node.drop_work()
            self.at(self.now + self.rng.uniform(0.1, 1.0), self._connect, node)
        self.dispatcher = self.params.dispatcher()
        self.checker.reset()
        for task_id in self.submitted:
            ledger = self.checker.ledgers[task_id]
            if ledger.finished:
                continue
            task = self.tasks[task_id]
            completed, failed, abandoned = self.checker.journal(task_id)
            ledger.abandoned_before_restart = abandoned
            self.step(TaskSubmitted(
                task_id, task.items, task.chunk_size, task.max_attempts, owner="sim",
                completed=completed, completed_failed=failed,
            ))

    def _from_node(self, node: SimNode, message: tuple[Any, ...]) -> None:
        """A node sends a message; it reaches the front-end a little later, in order."""
        node.last_sent = self.now
        arrival = max(self.now + self.rng.uniform(0, MAX_LATENCY_S), node.ready_at)
        node.ready_at = arrival
        self.at(arrival, self._received, node, node.session, self.generation, message)

    def _received(self, node: SimNode, session: int, generation: int, message: tuple[Any, ...]) -> None:
        if generation != self.generation:
            return  # sent to a front-end that has since restarted
        kind, *body = message
        node_id = node.node_id
        if kind == "join":
            self.sessions[node_id] = session  # replacing any session the front-end still had open
            self.step(NodeJoined(node_id, *body))
            return
        if self.sessions.get(node_id) != session:
            return  # the connection it travelled on is gone, and the bytes with it
        if kind == "result":  # verified off the event loop: the session may be gone by then
            self.at(self.now + self.rng.uniform(0, VERIFY_S), self._verified, node_id, session, generation, body)
        elif kind == "failed":
            self.step(ChunkFailed(node_id, *body))
        elif kind == "heartbeat":
            self.step(HeartbeatReceived(node_id))
        elif kind == "credit":
            self.step(CreditChanged(node_id, *body))
        elif kind == "bye":
            self.sessions.pop(node_id)
            self.step(NodeLeft(node_id))

    def _verified(self, node_id: str, session: int, generation: int, body: list[Any]) -> None:
        if generation != self.generation:
            return
        task_id, chunk, attempt, items_ok, elapsed_s, valid = body
        wanted = self.dispatcher.wants_result(task_id, chunk, attempt)
        self.checker.check_wants_result((task_id, chunk, attempt), wanted)
        if wanted:
            self.happened["result" if self.sessions.get(node_id) == session else "late result"] += 1
            self.step(ResultReceived(node_id, task_id, chunk, attempt, items_ok, elapsed_s, valid))

    def _to_node(self, node_id: str, deliver: Callable[..., None], payload: Any, session: int | None = None) -> None:
        """Send over the node's open session; it arrives a little later, only if that session lives on."""
        session = self.sessions[node_id] if session is None else session
        self.at(self.now + self.rng.uniform(0, MAX_LATENCY_S), deliver, self.nodes[node_id], session, payload)

    # --- the nodes' side --------------------------------------------------------------------

    def _connect(self, node: SimNode) -> None:
        if node.connected or node.frozen:
            return
        node.session += 1
        node.connected = True
        node.drop_work()
        self._from_node(node, ("join", node.slots, node.window))
        self.at(self.now + HEARTBEAT_S, self._heartbeat, node, node.session)

    def _reconnect(self, node: SimNode) -> None:
        """The node opens a new session while the front-end may still hold the old one."""
        if node.connected and not node.frozen:
            node.connected = False
            self._connect(node)

    def _heartbeat(self, node: SimNode, session: int) -> None:
        if node.session != session or not node.connected or node.frozen:
            return
        if self.now - node.last_sent >= HEARTBEAT_S * 0.9:
            self._from_node(node, ("heartbeat",))
        self.at(self.now + HEARTBEAT_S, self._heartbeat, node, session)

    def _node_assigned(self, node: SimNode, session: int, action: AssignChunk) -> None:
        if node.session != session or not node.connected or node.frozen:
            return
        key = (action.task_id, action.chunk, action.attempt)
        node.jobs[key] = _Job(action.start, action.stop)
        node.waiting.append(key)
        self._start_jobs(node)

    def _node_cancelled(self, node: SimNode, session: int, action: CancelChunk) -> None:
        if node.session != session or node.frozen:
            return
        key = (action.task_id, action.chunk, action.attempt)
        if node.jobs.pop(key, None) is not None:
            node.running.discard(key)
            self._start_jobs(node)

    def _node_closed(self, node: SimNode, session: int, _: None) -> None:
        if node.session == session and node.connected and not node.frozen:
            node.connected = False
            node.drop_work()
            if not node.anchor and self.rng.random() < 0.3:
                self.at(self.now + self.rng.uniform(0.5, 3), self._connect, node)

    def _start_jobs(self, node: SimNode) -> None:
        while node.waiting and len(node.running) < node.slots:
            key = node.waiting.popleft()
            job = node.jobs.get(key)
            if job is None:
                continue  # cancelled while waiting
            node.running.add(key)
            took = (job.stop - job.start) * self.tasks[key[0]].item_s * node.speed * self.rng.uniform(0.8, 1.2)
            self.at(self.now + took, self._job_done, node, node.session, key, took)

    def _job_done(self, node: SimNode, session: int, key: CopyKey, took: float) -> None:
        if node.session != session or not node.connected or node.frozen or key not in node.running:
            return
        node.running.discard(key)
        job = node.jobs.pop(key)
        task = self.tasks[key[0]]
        items = range(job.start, job.stop)
        rng = self.rng
        if any(item in task.poison for item in items):
            self._from_node(node, ("failed", *key, "poison item"))
        elif node.kind is Kind.FLAKY and rng.random() < 0.3:
            self._from_node(node, ("failed", *key, "worker crashed"))
        else:
            items_ok = sum(1 for item in items if item not in task.bad)
            valid = not (node.kind is Kind.LIAR and rng.random() < 0.4)
            self._from_node(node, ("result", *key, items_ok, took, valid))
        self._start_jobs(node)

    def _leave(self, node: SimNode) -> None:
        if node.connected and not node.frozen:
            self._from_node(node, ("bye",))
            node.connected = False
            node.drop_work()

    def _die(self, node: SimNode) -> None:
        if not node.connected or node.frozen:
            return
        node.connected = False
        node.drop_work()
        self.at(self.now + self.rng.uniform(0, 0.2), self._noticed_loss, node.node_id, node.session, self.generation)
        if self.rng.random() < 0.4:
            self.at(self.now + self.rng.uniform(0.5, 4), self._connect, node)

    def _noticed_loss(self, node_id: str, session: int, generation: int) -> None:
        if generation == self.generation and self.sessions.get(node_id) == session:
            self.sessions.pop(node_id)
            self.step(NodeLost(node_id, "connection reset"))

    def _freeze(self, node: SimNode) -> None:
        """The node stops dead (SIGSTOP, half-open TCP); only the heartbeat timeout notices."""
        if node.connected:
            node.frozen = True
            if self.rng.random() < 0.5:  # thawed, it finds its session gone and starts over
                self.at(self.now + self.params.heartbeat_timeout_s + self.rng.uniform(2, 5), self._thaw, node)

    def _thaw(self, node: SimNode) -> None:
        node.frozen = False
        node.connected = False
        self._connect(node)

    def _slow_down(self, node: SimNode) -> None:
        node.speed = min(MAX_SLOWNESS, node.speed * self.rng.uniform(3, 10))

    def _change_credit(self, node: SimNode) -> None:
        if node.connected and not node.frozen:
            node.window = self.rng.choice((0, 1, node.slots, node.slots + 3, -1))
            self._from_node(node, ("credit", node.window))
            self.at(self.now + self.rng.uniform(1, 4), self._restore_credit, node, node.session)

    def _restore_credit(self, node: SimNode, session: int) -> None:
        if node.session == session and node.connected and not node.frozen:
            node.window = node.slots + 1
            self._from_node(node, ("credit", node.window))


def run_scenario(seed: int) -> SimReport:
    """Run the scenario of that seed (every 20th has a fleet of hundreds) and check it."""
    try:
        return Simulation(seed, big=seed % 20 == 19).run()
    except SimulationError:
        raise
    except Exception as error:  # a crash inside the Dispatcher: name the seed to replay it
        raise SimulationError(f"seed {seed}: {error!r}") from error
