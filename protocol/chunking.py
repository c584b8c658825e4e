"""How a task's items become chunks, and in what order the chunks are handed out.

Rules of this module:

- A chunk is a range [start, stop) of item indexes. Chunk numbers count up per task in the
  order chunks are carved; a chunk keeps its number and range for good.
- Chunks are carved lazily, when a node has room, from the items not carved yet. Ranges
  completed before a restart are never carved, so no chunk spans them.
- A task offers work in three tiers: requeued chunks (their copy was lost or failed) first,
  then fresh chunks, then backup copies of overdue chunks. Backups come last because a
  duplicate only pays off when there is nothing new to run: the task cannot end before its
  fresh work is done anyway.
- A chunk that just failed on a node goes to another node when one can take it; only a
  lone node gets its own failure back (a node with a broken worker would otherwise burn
  every attempt of the chunks it fails). A chunk whose result is held for confirmation
  never goes back to the node that computed it: a node cannot confirm itself.
- A closed chunk may be reopened (its result is no longer trusted); its attempt numbers
  go on from where they were, so an old attempt's late answer never matches a new one.
- Automatic sizes start small, so the first results measure the speed quickly; then they
  aim at `target_chunk_s` from the measured seconds per item, growing at most ×4 per
  chunk; near the end they shrink so the last items spread over every slot.
- A closed chunk leaves a few bytes in arrays behind, so a task of a million chunks stays
  small; only open chunks are objects.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from enum import Enum, IntEnum
from itertools import islice
from operator import itemgetter
from typing import Protocol

from protocol.dispatch_events import ChunkState, ChunkView


class Attempt(Protocol):
    """What a chunk knows of one attempt at it (the Dispatcher's ``Lease``)."""

    node_id: str
    ended: bool


class _Past:
    """An attempt made before the chunk was reopened: ended, and nobody's any more."""

    node_id = ""
    ended = True


PAST_ATTEMPT: Attempt = _Past()


FIRST_CHUNKS_PER_SLOT = 64
"""First automatic chunks hold about items / (this × slots) items ..."""
FIRST_CHUNK_CAP = 16
"""... but no more than this, so the first measurement comes back quickly."""
MAX_GROWTH = 4
"""An automatic chunk is at most this many times the size of the one before."""
SPEED_SMOOTHING = 0.3
"""Weight of the newest sample in the moving average of seconds per item."""
LOOKAHEAD = 4
"""How far down a queue to look for a chunk that suits the node asking."""


class Queue(Enum):
    """Which queue holds an open chunk; entries in any other queue are stale."""

    NONE = "none"
    READY = "ready"
    BACKUP = "backup"


class Outcome(IntEnum):
    """How a carved chunk ended, as stored in the compact table."""

    OPEN = 0
    DONE = 1
    DONE_AFTER_FAILURE = 2
    ABANDONED = 3


_START = itemgetter(1)
"""A ChunkView's start."""
_CLOSED_STATES = {
    Outcome.DONE: ChunkState.DONE,
    Outcome.DONE_AFTER_FAILURE: ChunkState.RETRIED,
    Outcome.ABANDONED: ChunkState.FAILED,
}


class Chunk:
    """An open chunk: its range, the attempts made at it, and its place in the queues."""

    __slots__ = ("number", "start", "stop", "failures", "leases", "live", "queue", "avoid", "held", "held_ok")

    def __init__(self, number: int, start: int, stop: int, past_attempts: int = 0) -> None:
        self.number = number
        self.start = start
        self.stop = stop
        self.failures = 0
        self.leases: list[Attempt] = [PAST_ATTEMPT] * past_attempts  # attempt i + 1 at index i
        self.live = 0  # how many of them are still running
        self.queue = Queue.NONE
        self.avoid: str | None = None  # the node it last went back in line from
        self.held: Attempt | None = None  # the attempt whose result waits for a second node's
        self.held_ok = 0  # its items computed ok

    @property
    def size(self) -> int:
        """Items in the chunk."""
        return self.stop - self.start

    @property
    def attempts(self) -> int:
        """Attempts issued so far."""
        return len(self.leases)

    def lease(self, attempt: int) -> Attempt | None:
        """The lease of that attempt, if it was issued."""
        return self.leases[attempt - 1] if 1 <= attempt <= len(self.leases) else None

    def live_leases(self) -> list[Attempt]:
        """The attempts still running."""
        return [lease for lease in self.leases if not lease.ended] if self.live else []

    def held_by(self, node_id: str) -> bool:
        """Whether that node holds a live copy."""
        return any(lease.node_id == node_id for lease in self.live_leases())

    def may_go_to(self, node_id: str) -> bool:
        """False for the node whose result this chunk holds: it cannot confirm itself."""
        return self.held is None or self.held.node_id != node_id

    def state(self) -> ChunkState:
        """The chunk's state for views."""
        if not self.live:
            return ChunkState.QUEUED
        return ChunkState.RETRIED if self.failures else ChunkState.RUNNING


class ChunkSizer:
    """Picks a task's chunk sizes and measures its speed (seconds per item)."""

    def __init__(self, items: int, fixed: int | None, cap: int | None, target_chunk_s: float) -> None:
        self._items = items
        self._fixed = None if fixed is None else max(1, fixed)
        self._cap = None if cap is None else max(1, cap)
        self._target_s = target_chunk_s
        self._last: int | None = None
        self.sec_per_item: float | None = None

    def observe(self, items: int, elapsed_s: float) -> None:
        """Fold one accepted result into the moving average; nonsense timings are ignored."""
        if items <= 0 or not math.isfinite(elapsed_s) or elapsed_s < 0:
            return
        sample = elapsed_s / items
        if self.sec_per_item is None:
            self.sec_per_item = sample
        else:
            self.sec_per_item += SPEED_SMOOTHING * (sample - self.sec_per_item)

    def expected_s(self, items: int) -> float | None:
        """How long a chunk of that many items should take, once the speed is known."""
        return None if self.sec_per_item is None else self.sec_per_item * items

    def next_size(self, remaining: int, total_slots: int) -> int:
        """Size of the next fresh chunk, given the items left to carve and the fleet's slots."""
        if self._fixed is not None:
            return self._fixed
        slots = max(total_slots, 1)
        size: float
        if self._last is None:
            size = min(FIRST_CHUNK_CAP, math.ceil(self._items / (FIRST_CHUNKS_PER_SLOT * slots)))
        elif self.sec_per_item is None:
            size = self._last  # no measurement yet: keep probing at the same size
        else:
            ideal = self._target_s / self.sec_per_item if self.sec_per_item > 0 else math.inf
            size = min(ideal, self._last * MAX_GROWTH)
        # The tail: leave enough chunks that every slot gets about two of the last items.
        size = min(size, math.ceil(remaining / (2 * slots)))
        if self._cap is not None:
            size = min(size, self._cap)
        chosen = max(1, int(size))
        self._last = chosen
        return chosen


def merge_ranges(items: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges clipped to [0, items), sorted and merged; empty ones dropped."""
    clipped = sorted((max(0, start), min(items, stop)) for start, stop in ranges)
    merged: list[tuple[int, int]] = []
    for start, stop in clipped:
        if start >= stop:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


class TaskChunks:
    """A task's chunks: the compact table of carved ones, the items left to carve, the queues."""

    def __init__(self, task_id: str, items: int, done: list[tuple[int, int]], sizer: ChunkSizer) -> None:
        self._task_id = task_id
        self._sizer = sizer
        self._done_before = done  # merged ranges completed before a restart
        self._gaps: deque[list[int]] = deque()
        cursor = 0
        for start, stop in [*done, (items, items)]:
            if cursor < start:
                self._gaps.append([cursor, start])
            cursor = stop
        self.remaining = sum(stop - start for start, stop in self._gaps)
        self._starts = array("q")
        self._stops = array("q")
        self._outcomes = bytearray()
        self._attempts = array("I")  # of closed chunks; open ones keep theirs in the object
        self._open: dict[int, Chunk] = {}
        self._ready: deque[Chunk] = deque()
        self._backups: deque[Chunk] = deque()

    def has_work(self) -> bool:
        """Whether anything may be waiting for a node (stale queue entries count until taken)."""
        return bool(self.remaining or self._ready or self._backups)

    def take(self, node_id: str, total_slots: int, lone_node: bool) -> Chunk | None:
        """The next chunk for that node, best tier first; None if nothing suits it."""
        chunk = None
        if self._ready:
            chunk = _pick(self._ready, Queue.READY, lambda c: c.avoid != node_id and c.may_go_to(node_id))
        if chunk is None and self.remaining:
            return self._carve(total_slots)
        if chunk is None and lone_node and self._ready:
            chunk = _pick(self._ready, Queue.READY, lambda c: c.may_go_to(node_id))
        if chunk is None and self._backups:
            chunk = _pick(self._backups, Queue.BACKUP, lambda c: not c.held_by(node_id) and c.may_go_to(node_id))
        return chunk

    def requeue(self, chunk: Chunk, avoid: str) -> None:
        """Put a chunk with no live copy back in line, ahead of fresh work."""
        chunk.avoid = avoid
        if chunk.queue is not Queue.READY:
            chunk.queue = Queue.READY
            self._ready.append(chunk)

    def put_back(self, chunk: Chunk) -> None:
        """Return a chunk ``take`` just gave out and that was not issued, to the head of its line."""
        chunk.queue = Queue.BACKUP if chunk.live else Queue.READY
        (self._backups if chunk.live else self._ready).appendleft(chunk)

    def waiting_items(self) -> int:
        """Items no node holds and that wait for one: not carved yet, or back in line."""
        return self.remaining + sum(c.size for c in self._ready if c.queue is Queue.READY)

    def want_backup(self, chunk: Chunk) -> bool:
        """Line an overdue chunk up for one backup copy; False if it is already in line."""
        if chunk.queue is not Queue.NONE:
            return False
        chunk.queue = Queue.BACKUP
        self._backups.append(chunk)
        return True

    def close(self, chunk: Chunk, outcome: Outcome) -> None:
        """Record how a chunk ended and forget its object."""
        chunk.queue = Queue.NONE
        del self._open[chunk.number]
        self._outcomes[chunk.number] = outcome
        self._attempts[chunk.number] = chunk.attempts
        chunk.leases.clear()  # they point back at the chunk: a cycle only the slow cycle collector would free
        chunk.held = None

    def reopen(self, number: int) -> Chunk:
        """Open a closed chunk again (not in line yet); KeyError if it was not carved or is open."""
        if not 0 <= number < len(self._starts) or number in self._open:
            raise KeyError(f"task {self._task_id} has no closed chunk {number}")
        chunk = Chunk(number, self._starts[number], self._stops[number], self._attempts[number])
        self._outcomes[number] = Outcome.OPEN
        self._open[number] = chunk
        return chunk

    def open_chunk(self, number: int) -> Chunk | None:
        """The open chunk with that number, if there is one."""
        return self._open.get(number)

    def open_chunks(self) -> list[Chunk]:
        """Every open chunk (a copy of the list: callers close chunks while iterating)."""
        return list(self._open.values())

    def range_of(self, number: int) -> tuple[int, int]:
        """Items [start, stop) of a carved chunk; KeyError if no such chunk was carved."""
        if not 0 <= number < len(self._starts):
            raise KeyError(f"task {self._task_id} has no chunk {number}")
        return self._starts[number], self._stops[number]

    def views(self) -> list[ChunkView]:
        """Every item range of the task in item order: carved chunks, done-before ranges, the rest."""
        views = list(self._carved_views())
        views += (ChunkView(-1, start, stop, ChunkState.DONE, 0) for start, stop in self._done_before)
        views += (ChunkView(-1, start, stop, ChunkState.QUEUED, 0) for start, stop in self._gaps)
        views.sort(key=_START)  # each part is in item order already: the sort merges them
        return views

    def _carve(self, total_slots: int) -> Chunk:
        gap = self._gaps[0]
        size = self._sizer.next_size(self.remaining, total_slots)
        start = gap[0]
        stop = min(start + size, gap[1])
        if stop == gap[1]:
            self._gaps.popleft()
        else:
            gap[0] = stop
        self.remaining -= stop - start
        chunk = Chunk(len(self._starts), start, stop)
        self._starts.append(start)
        self._stops.append(stop)
        self._outcomes.append(Outcome.OPEN)
        self._attempts.append(0)
        self._open[chunk.number] = chunk
        return chunk

    def _carved_views(self) -> Iterator[ChunkView]:
        open_, opened, attempts = self._open, int(Outcome.OPEN), self._attempts
        for number, (start, stop, outcome) in enumerate(zip(self._starts, self._stops, self._outcomes)):
            if outcome == opened:
                chunk = open_[number]
                yield ChunkView(number, start, stop, chunk.state(), chunk.attempts)
            else:  # the table holds plain numbers, which find their Outcome's entry
                yield ChunkView(number, start, stop, _CLOSED_STATES[outcome], attempts[number])


def _pick(queue: deque[Chunk], tag: Queue, suits: Callable[[Chunk], bool]) -> Chunk | None:
    """Take the first live entry near the head of a queue that suits the node, if any."""
    while queue and queue[0].queue is not tag:
        queue.popleft()  # stale: taken, closed or moved to another queue since
    for index, chunk in enumerate(islice(queue, LOOKAHEAD)):
        if chunk.queue is tag and suits(chunk):
            del queue[index]
            chunk.queue = Queue.NONE
            return chunk
    return None
