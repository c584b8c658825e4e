"""The node's worker processes: one per slot, one BLAS thread each unless told otherwise.

The first workers of a node are forked, before the node has a thread or an event loop
(a node starts them first thing), with numpy (one BLAS thread) and the kernels loaded:
a fork costs no interpreter start-up, no re-import and no ``multiprocessing`` resource
tracker process, and a forked worker exits without tearing its interpreter down. Every other start — a replacement pool, a pool started
from a running loop or beside threads, a platform other than Linux — uses ``spawn``
(never ``fork`` a process that runs an asyncio loop or threads). Workers limit their
BLAS threads in their initializer, after numpy is loaded, so slots × threads never
oversubscribe the cores. A worker that dies (the OOM killer, a segfault) breaks the
pool: every chunk it held fails with ``WorkerCrashed`` and a fresh pool takes over.

Short chunks travel in groups: one pool job computes several chunks and returns an
outcome per chunk, so the hand-off to a worker and back (about 0.7 ms) is paid once per
group. A large result comes back through shared memory (a file in ``/dev/shm`` that the
worker writes and the node maps and unlinks at once) instead of being pickled through a
pipe, which costs several copies of it on both sides.

A worker never outlives its node: it watches its parent and exits when the node is
gone, even a node that was SIGKILLed. It ignores SIGINT and SIGHUP, which a terminal
sends to the whole foreground process group: the node decides how to stop, and stops
its workers itself.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from nodes.startup import start_blas_with
from nodes.lifeline import exit_now, watch_parent
from protocol.errors import ChainconsoleError

if TYPE_CHECKING:  # numpy and asyncio are imported where they are used: a node starts its workers first
    import asyncio

    import numpy as np

DEFAULT_BLAS_THREADS = 1
TERMINAL_SIGNALS = {signal.SIGINT, signal.SIGHUP}
SHARED_RESULT_BYTES = 1024 * 1024
"""Results at least this large come back from a worker through shared memory."""
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "chainconsole-"
"""Shared results are named ``chainconsole-<node pid>-<worker pid>-<n>``."""


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


@dataclass(frozen=True)
class ChunkError:
    """A chunk of a group whose computation raised: why, fit for a ``failed`` message."""

    reason: str


@dataclass(frozen=True)
class SharedArray:
    """A worker's result left in shared memory: where, and how to read it."""

    name: str
    dtype: str
    shape: tuple[int, ...]


_shared = {"node_pid": 0, "dir": None}  # set in a worker by its initializer
_names = itertools.count()


def _shared_dir() -> Path | None:
    """Where shared results go on this machine; None where there is no ``/dev/shm``."""
    return SHM_DIR if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK) else None


def _share(array: np.ndarray) -> np.ndarray | SharedArray:
    """In a worker: put a large array in shared memory and return its handle; small ones stay."""
    import numpy as np

    folder = _shared["dir"]
    if folder is None or array.nbytes < SHARED_RESULT_BYTES:
        return array
    name = f"{SHM_PREFIX}{_shared['node_pid']}-{os.getpid()}-{next(_names)}"
    array = np.ascontiguousarray(array)
    try:
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return array  # no room or no permission: the pipe still works
    try:
        view, done = memoryview(array).cast("B"), 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], done)
    except OSError:  # /dev/shm is full: pickled through the pipe after all
        os.unlink(folder / name)
        return array
    finally:
        os.close(fd)
    return SharedArray(name, array.dtype.str, array.shape)


def _unshare(value: np.ndarray | SharedArray | None) -> np.ndarray | None:
    """In the node: map a shared result (and unlink it: the mapping keeps it alive)."""
    if not isinstance(value, SharedArray):
        return value
    import numpy as np

    path = SHM_DIR / value.name
    dtype = np.dtype(value.dtype)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        size = int(np.prod(value.shape)) * dtype.itemsize
        if size == 0:
            return np.empty(value.shape, dtype)
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return np.frombuffer(mapping, dtype=dtype).reshape(value.shape)


def sweep_shared(node_pid: int, *, everything: bool = False) -> int:
    """Remove shared results left behind: by dead nodes or dead workers (all of ``node_pid``'s
    with ``everything``). Returns how many were removed."""
    folder = _shared_dir()
    if folder is None:
        return 0
    removed = 0
    for path in folder.glob(f"{SHM_PREFIX}*"):
        try:
            owner, worker = (int(part) for part in path.name[len(SHM_PREFIX):].split("-")[:2])
        except ValueError:
            continue
        mine = owner == node_pid
        if (mine and (everything or not _alive(worker))) or (not mine and not _alive(owner)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits its node's handler
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINAL_SIGNALS)
    watch_parent(node_pid, exit_now())
    _shared.update(node_pid=node_pid, dir=_shared_dir())
    start_blas_with(blas_threads)
    import nodes.kernels  # noqa: F401  (numpy must be loaded for threadpoolctl to find its BLAS)
    from threadpoolctl import threadpool_limits

    threadpool_limits(blas_threads)


def _warm_up() -> int:
    return os.getpid()


def fork_is_safe() -> bool:
    """Whether this process may fork workers: Linux, one thread (native ones too), no event loop."""
    if sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods():
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if len(os.listdir("/proc/self/task")) != 1:  # BLAS or other native threads count too
            return False
    except OSError:
        return False
    events = sys.modules.get("asyncio.events")
    if events is not None and events._get_running_loop() is not None:
        return False
    wakeup = signal.set_wakeup_fd(-1)  # an event loop that handles signals left one
    signal.set_wakeup_fd(wakeup)
    return wakeup == -1


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


def compute_chunks(jobs: Sequence[ChunkJob]) -> list[ChunkDone | ChunkError]:
    """Run in a worker: compute a group of chunks, one outcome each; large results shared."""
    outcomes: list[ChunkDone | ChunkError] = []
    for job in jobs:
        try:
            done = compute_chunk(job)
        except Exception as exc:  # a kernel bug: that chunk fails, the group goes on
            outcomes.append(ChunkError(f"{type(exc).__name__}: {exc}"))
            continue
        if done.result is not None:
            done = replace(done, result=_share(done.result))
        outcomes.append(done)
    return outcomes


class WorkerPool:
    """A pool of worker processes that replaces itself when a worker dies (an ``Executor``)."""

    def __init__(self, slots: int, *, blas_threads: int = DEFAULT_BLAS_THREADS) -> None:
        self.slots = slots
        self.blas_threads = blas_threads
        self._warming: list[Future] = []
        self._warm_task: asyncio.Task | None = None
        self._executor: ProcessPoolExecutor | None = None
        """Made when the first worker is needed, not before: whether it may fork is known then."""
        self.start_method: str | None = None
        """How the current workers start (``fork`` or ``spawn``); None before the first one."""
        sweep_shared(os.getpid())

    def _current(self) -> ProcessPoolExecutor:
        if self._executor is None:
            method = "spawn"
            if fork_is_safe():
                # What a forked worker inherits it need not load: numpy (one BLAS thread, so
                # none is running to be forked) and the kernels.
                start_blas_with(1)
                import nodes.kernels  # noqa: F401

                method = "fork" if fork_is_safe() else "spawn"
            self._executor = self._new_executor(method)
        return self._executor

    def _new_executor(self, method: str = "spawn") -> ProcessPoolExecutor:
        self.start_method = method
        return ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(self.blas_threads, os.getpid()),
        )

    async def start(self, resized: Callable[[int], None]) -> None:
        """Start the workers in the background; the pool never changes size (``resized`` unused)."""
        # Workers start while the node connects: the first chunk finds them ready, and
        # joining does not wait for them.
        import asyncio

        self._warm_task = asyncio.get_running_loop().create_task(self.warm_up())

    def start_workers(self) -> None:
        """Start every worker now (no event loop needed), so the first chunk does not wait for one."""
        if not self._warming:
            with _terminal_signals_blocked():
                self._warming = [self._current().submit(_warm_up) for _ in range(self.slots)]

    async def warm_up(self) -> None:
        """Start every worker (unless started already) and wait until they are up."""
        import asyncio

        self.start_workers()
        await asyncio.gather(*(asyncio.wrap_future(f) for f in self._warming))

    def submit(self, jobs: Sequence[ChunkJob]) -> Future:
        """Queue a group of chunks as one job; the future can be cancelled while it has not started."""
        with _terminal_signals_blocked():  # the pool starts (or replaces) workers on submit
            try:
                return self._current().submit(compute_chunks, list(jobs))
            except BrokenProcessPool:
                self._replace()
                return self._current().submit(compute_chunks, list(jobs))

    async def result(self, future: Future) -> list[ChunkDone | ChunkError]:
        """Wait for a submitted group; ``WorkerCrashed`` if its worker died."""
        import asyncio

        try:
            outcomes = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._replace()
            raise WorkerCrashed("a worker process died while computing this chunk") from None
        return [replace(o, result=_unshare(o.result)) if isinstance(o, ChunkDone) else o for o in outcomes]

    def cancel(self, future: Future) -> bool:
        """Drop a group that has not started; one already computing runs to its end."""
        return future.cancel()

    def _replace(self) -> None:
        broken = self._executor
        if not getattr(broken, "_broken", False):
            return  # already replaced by another chunk's failure
        self._executor = self._new_executor()
        broken.shutdown(wait=False, cancel_futures=True)
        sweep_shared(os.getpid())

    async def close(self) -> None:
        import asyncio

        if self._warm_task is not None:
            self._warm_task.cancel()
        await asyncio.to_thread(self.shutdown)  # it waits for a chunk still computing

    def shutdown(self) -> None:
        """Stop the workers (no event loop needed); return once they have ended.

        Queued groups are dropped; one still computing runs to its end, as the interpreter
        would wait for it at exit anyway. Waiting here, before exit, matters: at exit Python
        3.11 wakes a pool's manager thread that is still running through a pipe the thread
        may be closing at that moment, and prints the EBADF as a traceback.
        """
        if self._executor is not None:  # else no worker was ever started
            self._executor.shutdown(wait=True, cancel_futures=True)
        sweep_shared(os.getpid(), everything=True)
