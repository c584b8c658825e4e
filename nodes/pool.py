"""The node's worker processes: one per slot, one BLAS thread each unless told otherwise.

Processes are started with ``spawn`` (never ``fork`` a process that runs an asyncio
loop) and limit their BLAS threads in their initializer, so slots × threads never
oversubscribe the cores. A worker that dies (the OOM killer, a segfault) breaks the
pool: every chunk it held fails with ``WorkerCrashed`` and a fresh pool takes over.

A worker never outlives its node: it watches its parent and exits when the node is
gone, even a node that was SIGKILLed. It ignores SIGINT and SIGHUP, which a terminal
sends to the whole foreground process group: the node decides how to stop, and stops
its workers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from nodes.lifeline import exit_now, watch_parent
from protocol.errors import ChainconsoleError

DEFAULT_BLAS_THREADS = 1
TERMINAL_SIGNALS = {signal.SIGINT, signal.SIGHUP}


class WorkerCrashed(ChainconsoleError):
    """A worker process died while computing a chunk."""


@dataclass(frozen=True)
class ChunkJob:
    """Everything a worker needs to compute one chunk."""

    operation: str
    start: int
    stop: int
    return_mode: str
    generated: Mapping[str, Mapping[str, object]]
    arrays: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ChunkDone:
    """A computed chunk: per-item flags, values (results or norms) and compute time."""

    ok: np.ndarray
    result: np.ndarray | None
    norms: np.ndarray | None
    elapsed_s: float


@contextlib.contextmanager
def _terminal_signals_blocked():
    """Workers started in here begin life with SIGINT and SIGHUP blocked.

    A blocked signal mask survives fork and exec, so a Ctrl-C that arrives while a worker
    is still starting (importing numpy) waits, and is dropped once its initializer
    ignores it: no KeyboardInterrupt traceback from a half-started worker.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _init_worker(blas_threads: int, node_pid: int) -> None:
    for sig in TERMINAL_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINAL_SIGNALS)
    watch_parent(node_pid, exit_now())
    import nodes.kernels  # noqa: F401  (numpy must be loaded for threadpoolctl to find its BLAS)
    from threadpoolctl import threadpool_limits

    threadpool_limits(blas_threads)


def _warm_up() -> int:
    return os.getpid()


def compute_chunk(job: ChunkJob) -> ChunkDone:
    """Run in a worker: build the chunk's inputs and compute it."""
    from nodes.kernels import compute
    from protocol.inputs import GeneratedInput

    began = time.perf_counter()
    inputs = dict(job.arrays)
    for name, spec in job.generated.items():
        inputs[name] = GeneratedInput.from_spec(spec).items(job.start, job.stop)
    out = compute(job.operation, inputs, job.return_mode)
    return ChunkDone(out.ok, out.result, out.norms, time.perf_counter() - began)


class WorkerPool:
    """A pool of worker processes that replaces itself when a worker dies (an ``Executor``)."""

    def __init__(self, slots: int, *, blas_threads: int = DEFAULT_BLAS_THREADS) -> None:
        self.slots = slots
        self.blas_threads = blas_threads
        self._executor = self._new_executor()
        self._warming: asyncio.Task | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.blas_threads, os.getpid()),
        )

    async def start(self, resized: Callable[[int], None]) -> None:
        """Start the workers in the background; the pool never changes size (``resized`` unused)."""
        # Workers start while the node connects: the first chunk finds them ready, and
        # joining does not wait for them.
        self._warming = asyncio.get_running_loop().create_task(self.warm_up())

    async def warm_up(self) -> None:
        """Start every worker now, so the first chunk does not pay for process start-up."""
        with _terminal_signals_blocked():
            futures = [self._executor.submit(_warm_up) for _ in range(self.slots)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    def submit(self, job: ChunkJob) -> Future:
        """Queue ``job``; the future can be cancelled while it has not started."""
        with _terminal_signals_blocked():  # the pool starts (or replaces) workers on submit
            try:
                return self._executor.submit(compute_chunk, job)
            except BrokenProcessPool:
                self._replace()
                return self._executor.submit(compute_chunk, job)

    def cancel(self, future: Future) -> bool:
        """Drop a chunk that has not started; one already computing runs to its end."""
        return future.cancel()

    async def result(self, future: Future) -> ChunkDone:
        """Wait for a submitted job; ``WorkerCrashed`` if its worker died."""
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._replace()
            raise WorkerCrashed("a worker process died while computing this chunk") from None

    def _replace(self) -> None:
        broken = self._executor
        if not getattr(broken, "_broken", False):
            return  # already replaced by another chunk's failure
        self._executor = self._new_executor()
        broken.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
