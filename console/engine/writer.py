"""The front-end's one writer: a thread that carries out every journal and result write, in order.

The event loop never waits on a disk. It hands the writer jobs — store a chunk's results,
mark a range failed, run a journal write or any other call — and goes on; the writer
carries them out one after another in the order they came.

Stored ranges are group-committed, at most every ``DEFAULT_COMMIT_INTERVAL_S``: the writer
writes the values and ``ok`` flags of every range it has queued (``pwrite`` and the ``ok`` memory map), fsyncs each result file they
touched, and only then records the batch's ranges in the journal, in one transaction. A
power loss can lose the last ranges (they are computed again), never make the journal
call a range stored whose values did not reach the disk. A call job first commits every
range queued before it, so whatever a ``call`` returns to comes after them, durably: a
task is sealed by a ``call`` that closes its store.

A job that fails is reported on the loop — a store through its ``on_error``, anything
else through ``report`` — and never stops the jobs after it. Results wait here bounded by
bytes: ``drained()`` blocks the caller (a node's session) while the backlog is full.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from console.engine.journal import Journal
from console.engine.results import ResultStore

DEFAULT_MAX_BACKLOG_BYTES = 64 * 1024 * 1024
"""Result bytes queued for the writer beyond which a node's session waits to be read further."""
DEFAULT_MAX_BACKLOG_RANGES = 512
"""Ranges queued for the writer beyond which a node's session waits, however small they are."""
MAX_BATCH = 512
"""Jobs taken at once, at most, into one group commit."""
DEFAULT_COMMIT_INTERVAL_S = 0.01
"""Group commits of stored ranges start at most this often: ranges arriving meanwhile join
the next one, so a stream of small results costs one pair of fsyncs per interval (about
0.2 ms of CPU each here) instead of one per handful of results."""


@dataclass(eq=False)
class StoreJob:
    """Items ``start..stop-1`` of one task: their values to write (None: mark them failed), then a journal row."""

    task_id: str
    store: ResultStore
    start: int
    stop: int
    node: str
    items_ok: int
    ok: Any = None
    values: Any = None
    on_error: Callable[[Exception], None] | None = None
    confirmed: bool = True
    """False for a replicated result stored without a second computation (it may be distrusted later)."""

    @property
    def nbytes(self) -> int:
        return int(getattr(self.values, "nbytes", 0)) + int(getattr(self.ok, "nbytes", 0))

    def write(self) -> None:
        if self.values is None:
            self.store.fail(self.start, self.stop)
        else:
            self.store.write(self.start, self.stop, self.ok, self.values)


@dataclass(eq=False)
class _CallJob:
    function: Callable[..., Any]
    args: tuple
    task_id: str
    future: asyncio.Future | None


_STOP = object()


class Writer:
    """A bounded thread that owns every journal write and result write, in order, with group commits."""

    def __init__(self, journal: Journal, report: Callable[[str, str], None], *,
                 max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
                 max_backlog_ranges: int = DEFAULT_MAX_BACKLOG_RANGES,
                 commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S) -> None:
        """``report(task_id, message)`` is called on the loop for a failed job nobody awaits."""
        self.journal = journal
        self.report = report
        self.max_backlog_bytes = max_backlog_bytes
        self.max_backlog_ranges = max_backlog_ranges
        self.commit_interval_s = commit_interval_s
        self._last_commit = 0.0  # monotonic time of the last group commit, on the writer's thread
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._backlog = 0  # result bytes queued, counted on the loop
        self._ranges = 0  # ranges queued, counted on the loop
        self._room = asyncio.Event()

    # -- on the loop ---------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._room.set()
        self._thread = threading.Thread(target=self._run, name="chainconsole-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Carry out every queued job, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def store(self, job: StoreJob) -> None:
        """Queue a range to store; ``job.on_error`` runs on the loop if it cannot be."""
        self._require_running()
        self._backlog += job.nbytes
        self._ranges += 1
        if self._backlog > self.max_backlog_bytes or self._ranges > self.max_backlog_ranges:
            self._room.clear()
        self._queue.put(job)

    def post(self, function: Callable[..., Any], *args: Any, task_id: str = "") -> None:
        """Queue a call nobody waits for; a failure is reported (with its task)."""
        self._require_running()
        self._queue.put(_CallJob(function, args, task_id, None))

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` after every job queued before it is durable; its result or its error."""
        self._require_running()
        assert self._loop is not None
        future = self._loop.create_future()
        self._queue.put(_CallJob(function, args, "", future))
        return await future

    async def drained(self) -> None:
        """Return once the results waiting to be written fit the backlog's bound."""
        await self._room.wait()

    def _require_running(self) -> None:
        if self._thread is None:
            raise RuntimeError("the writer is not running")

    def _written(self, nbytes: int, ranges: int) -> None:
        self._backlog -= nbytes
        self._ranges -= ranges
        if self._backlog <= self.max_backlog_bytes and self._ranges <= self.max_backlog_ranges:
            self._room.set()

    # -- on the writer's thread -------------------------------------------------------------

    def _to_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            if isinstance(batch[0], StoreJob):
                wait = self._last_commit + self.commit_interval_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # the ranges that come meanwhile share this commit
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            written: list[StoreJob] = []
            for job in batch:
                if job is _STOP:
                    self._commit(written)
                    return
                if isinstance(job, StoreJob):
                    try:
                        job.write()
                    except Exception as exc:
                        self._store_failed(job, exc)
                        self._to_loop(self._written, job.nbytes, 1)
                    else:
                        written.append(job)
                    continue
                self._commit(written)
                written = []
                self._call(job)
            self._commit(written)

    def _call(self, job: _CallJob) -> None:
        try:
            value = job.function(*job.args)
        except Exception as exc:
            if job.future is not None:
                self._to_loop(_settle, job.future, None, exc)
            else:
                name = getattr(job.function, "__qualname__", repr(job.function))
                self._to_loop(self.report, job.task_id, f"{name} failed: {exc!r}")
            return
        if job.future is not None:
            self._to_loop(_settle, job.future, value, None)

    def _commit(self, jobs: list[StoreJob]) -> None:
        """Make the written ranges durable, then record them in one journal transaction."""
        if not jobs:
            return
        self._last_commit = time.monotonic()
        durable: list[StoreJob] = []
        broken: dict[int, Exception] = {}
        for store in {id(job.store): job.store for job in jobs}.values():
            try:
                store.flush()
            except Exception as exc:
                broken[id(store)] = exc
        for job in jobs:
            if id(job.store) in broken:
                self._store_failed(job, broken[id(job.store)])
            else:
                durable.append(job)
        if durable:
            try:
                self.journal.chunks_stored([(j.task_id, j.start, j.stop, j.node, j.items_ok, j.confirmed)
                                             for j in durable])
            except Exception as exc:
                for job in durable:
                    self._store_failed(job, exc)
        self._to_loop(self._written, sum(job.nbytes for job in jobs), len(jobs))

    def _store_failed(self, job: StoreJob, error: Exception) -> None:
        if job.on_error is not None:
            self._to_loop(job.on_error, error)
        else:
            self._to_loop(self.report, job.task_id,
                          f"cannot store items {job.start}..{job.stop - 1} of task {job.task_id}: {error}")


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():  # its waiter was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
