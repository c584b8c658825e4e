"""What computes the chunks an upstream assigns: this node's executor.

The agent hands every ``Assign`` to a ``Work`` and sends upstream whatever the work emits
(``Result``, ``Failed``, ``Credit`` …). ``LocalWork`` computes with this node's executor
(``nodes.executor``: its worker processes, or a Dask cluster); a chain link's ``Relay`` (``nodes.relay``) is a ``Work`` that also spreads
chunks over the nodes behind it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nodes.executor import Executor
from nodes.pool import ChunkError, ChunkJob, WorkerCrashed
from protocol.messages import Assign, Credit, Failed, Result

Emit = Callable[[object], None]
ChunkKey = tuple[str, int, int]


class Work(Protocol):
    """The interface between the upstream session and whatever computes."""

    slots: int

    @property
    def window(self) -> int:
        """How many chunks to ask the upstream to hold for us."""

    @property
    def held(self) -> int:
        """Chunks assigned and not yet answered."""

    def attach(self, emit: Emit) -> None:
        """Where to send messages for the upstream."""

    def assign(self, assign: Assign) -> None: ...

    def cancel(self, key: ChunkKey) -> None: ...

    def upstream_lost(self) -> None:
        """The upstream session ended: its assignments were requeued upstream."""

    def handle(self, message: object) -> bool:
        """A chain message from upstream (control, keys …); False if not understood."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def key_of(message: Assign | Result | Failed) -> ChunkKey:
    return (message.task_id, message.chunk, message.attempt)


GROUP_TARGET_S = 0.004
"""A pool job holds as many queued chunks as its worker computes in about this long (by the
chunks' measured times), so the hand-off to a worker is paid once per group."""
MAX_GROUP = 16
"""Chunks in one pool job, at most."""
JOBS_PER_SLOT = 2
"""Pool jobs in flight per slot: one computing, one waiting in the worker's queue."""
HELD_TARGET_S = 0.02
"""Short chunks: the window asks for about this much work per slot, so the next chunks
arrive before a worker runs dry (a round trip is about a millisecond)."""
MAX_WINDOW_PER_SLOT = 48
"""Chunks held per slot, at most, however short they are."""
WINDOW_STEADY = 8
"""A window grows only by more than an eighth, and shrinks only to less than half: chunk times
jitter (a worker that loses its core takes several times as long), each change costs a
``credit`` and a round of the upstream's dispatching, and holding up to twice the work a slot
needs costs nothing. A task not measured yet still drops the window at once."""
TIMES_KEPT = 256
"""Tasks whose chunk time is remembered, at most (the oldest are forgotten first)."""


@dataclass
class _Held:
    assign: Assign
    handle: object | None = None
    """The executor's handle of the group computing it; None while queued here."""


class LocalWork:
    """Chunks computed by this node's executor, as many at once as it has slots.

    Assignments wait in a queue here and go to the executor in groups (``GROUP_TARGET_S``), at
    most ``JOBS_PER_SLOT`` jobs per slot at a time. The window is slots plus prefetch until
    chunks turn out to be short; then it grows so that each slot holds about
    ``HELD_TARGET_S`` of work, and shrinks again (with a ``credit``) as soon as a chunk of a
    task not measured yet, or a slow one, arrives.
    """

    def __init__(self, executor: Executor, *, prefetch: int = 1) -> None:
        self.executor = executor
        self.prefetch = prefetch
        self._held: dict[ChunkKey, _Held] = {}
        self._queue: deque[ChunkKey] = deque()
        self._jobs: set[asyncio.Task] = set()
        self._chunk_s: dict[str, float] = {}  # task id -> seconds per chunk, smoothed
        self._window = self.base_window
        self._emit: Emit = lambda message: None
        self._closed = False

    @property
    def slots(self) -> int:
        return self.executor.slots

    @property
    def base_window(self) -> int:
        return self.slots + self.prefetch

    @property
    def window(self) -> int:
        return self._window

    @property
    def held(self) -> int:
        return len(self._held)

    def attach(self, emit: Emit) -> None:
        self._emit = emit

    async def start(self) -> None:
        """Start the executor (``ExecutorUnavailable`` if it cannot)."""
        await self.executor.start(self._resized)

    async def close(self) -> None:
        self._closed = True
        for handle in {id(h.handle): h.handle for h in self._held.values() if h.handle is not None}.values():
            self.executor.cancel(handle)
        for job in list(self._jobs):
            job.cancel()
        self._held.clear()
        self._queue.clear()
        await self.executor.close()

    def _resized(self, slots: int) -> None:
        """The executor grew or shrank (a Dask cluster scaling): tell the upstream."""
        self._window = max(self._window, self.base_window)
        self._emit(Credit(self.window, slots))

    def assign(self, assign: Assign, *, first: bool = False) -> None:
        """Queue a chunk; ``first`` puts it before those queued (a chain link's replica that a held
        result waits for)."""
        key = key_of(assign)
        if key in self._held:
            return  # the same attempt twice: it is being computed
        self._held[key] = _Held(assign)
        if first:
            self._queue.appendleft(key)
        else:
            self._queue.append(key)
        if assign.task_id not in self._chunk_s and self._window > self.base_window:
            self._set_window(self.base_window)  # a task not measured yet: hold no more of it
        self._start_jobs()

    def cancel(self, key: ChunkKey) -> None:
        held = self._held.get(key)
        if held is not None and held.handle is None:  # still queued here; a computing one finishes
            del self._held[key]

    def upstream_lost(self) -> None:
        """Drop what has not started; chunks already computing finish and are offered later."""
        for key, held in list(self._held.items()):
            if held.handle is None or self.executor.cancel(held.handle):
                del self._held[key]
        self._queue.clear()

    def handle(self, message: object) -> bool:
        return False

    # -- groups of chunks through the pool -------------------------------------------------

    def _start_jobs(self) -> None:
        limit = self.slots * JOBS_PER_SLOT
        while self._queue and len(self._jobs) < limit and not self._closed:
            # Share what is queued among the free job places, so no slot idles while another queues.
            share = -(-len(self._queue) // (limit - len(self._jobs)))
            group = self._take_group(min(share, MAX_GROUP))
            if not group:
                break
            handle = self.executor.submit([_job(held.assign) for held in group])
            for held in group:
                held.handle = handle
            job = asyncio.get_running_loop().create_task(self._finish(group, handle))
            self._jobs.add(job)

    def _take_group(self, most: int) -> list[_Held]:
        """Queued chunks, in order, up to ``most`` and about ``GROUP_TARGET_S`` of work."""
        group: list[_Held] = []
        budget = GROUP_TARGET_S
        while self._queue and len(group) < most:
            held = self._held.get(self._queue[0])
            if held is None or held.handle is not None:
                self._queue.popleft()  # cancelled while queued
                continue
            cost = self._chunk_s.get(held.assign.task_id, GROUP_TARGET_S)
            if group and cost > budget:
                break
            budget -= cost
            group.append(held)
            self._queue.popleft()
        return group

    async def _finish(self, group: list[_Held], handle: object) -> None:
        try:
            try:
                outcomes = await self.executor.result(handle)
            except asyncio.CancelledError:
                return
            except WorkerCrashed as exc:
                outcomes = [ChunkError(str(exc))] * len(group)
            except Exception as exc:  # a bug in the hand-off: report it, never die of it
                outcomes = [ChunkError(f"{type(exc).__name__}: {exc}")] * len(group)
            for held, outcome in zip(group, outcomes):
                a = held.assign
                if self._held.pop(key_of(a), None) is None:
                    continue  # gone with its upstream
                if isinstance(outcome, ChunkError):
                    self._emit(Failed(a.task_id, a.chunk, a.attempt, clean_reason(outcome.reason)))
                else:
                    self._measured(a.task_id, outcome.elapsed_s)
                    # The kernels' own output for a checked assignment: built without the checks again.
                    self._emit(Result.construct(task_id=a.task_id, chunk=a.chunk, attempt=a.attempt, ok=outcome.ok,
                                                result=outcome.result, norms=outcome.norms,
                                                elapsed_s=outcome.elapsed_s, computed_by=""))
        finally:
            self._jobs.discard(asyncio.current_task())  # type: ignore[arg-type]
        if not self._closed:
            self._resize_window()
            self._start_jobs()

    # -- the window ---------------------------------------------------------------------------

    def _measured(self, task_id: str, seconds: float) -> None:
        before = self._chunk_s.pop(task_id, None)
        self._chunk_s[task_id] = seconds if before is None else 0.7 * before + 0.3 * seconds
        if len(self._chunk_s) > TIMES_KEPT:
            del self._chunk_s[next(iter(self._chunk_s))]

    def _resize_window(self) -> None:
        """Size the window to the slowest task held (or just answered) by its chunk time."""
        tasks = {held.assign.task_id for held in self._held.values()} or set(list(self._chunk_s)[-1:])
        if not tasks or any(task not in self._chunk_s for task in tasks):
            return
        slowest = max(self._chunk_s[task] for task in tasks)
        per_slot = min(MAX_WINDOW_PER_SLOT, int(HELD_TARGET_S / max(slowest, 1e-6)))
        window = max(self.base_window, self.slots * per_slot)
        if (window - self._window) * WINDOW_STEADY > self._window or window * 2 < self._window:
            self._set_window(window)

    def _set_window(self, window: int) -> None:
        if window != self._window:
            self._window = window
            self._emit(Credit(window))


def _job(assign: Assign) -> ChunkJob:
    return ChunkJob(assign.operation, assign.start, assign.stop, assign.return_mode,
                    {k: dict(v) for k, v in assign.generated.items()}, dict(assign.arrays))


def clean_reason(text: str, limit: int = 1000) -> str:
    """An exception's text made fit for a message: printable and bounded."""
    return "".join(c if c.isprintable() else " " for c in text)[:limit]
