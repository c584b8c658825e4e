"""An executor on an existing Dask cluster: a node's chunks computed by the cluster's workers.

The node connects to the cluster's scheduler as an asynchronous ``distributed.Client`` on
its own event loop and submits each chunk as one Dask task running the same function as a
worker process would (``nodes.pool.compute_chunk``); the workers need chainconsole
installed, and the node checks that they can import it when it starts. Without a fixed
``slots`` the node's slots are the cluster's total threads, polled every few seconds and
reported upstream when they change (an adaptive cluster scaling up or down).

Dask reruns a task whose worker died on another worker; a task that keeps killing
workers, or that the cluster drops (the scheduler restarted, the client reconnected),
comes back as ``WorkerCrashed`` so the front-end gives the chunk another attempt.
Results are checked by the front-end like any node's: the cluster is not trusted more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

from nodes.executor import ExecutorUnavailable, Resized
from nodes.pool import ChunkDone, ChunkError, ChunkJob, WorkerCrashed, compute_chunk
from protocol.errors import ExitStatus

try:
    import distributed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker
except ImportError:  # the optional extra is not installed: the node says so and exits
    distributed = None

DEFAULT_CONNECT_TIMEOUT_S = 20.0
"""How long to try reaching the scheduler before the node gives up (exit status 3)."""
DEFAULT_POLL_S = 2.0
"""How often the cluster's thread count is read, to follow it as it scales."""
CLOSE_TIMEOUT_S = 5.0
CANCELLED_KEPT = 4096


def _probe() -> str:
    """Run on every worker at start: can it compute chunks?"""
    import nodes.kernels  # noqa: F401
    import numpy

    return numpy.__version__


class DaskExecutor:
    """Chunks computed as tasks on a Dask cluster (an ``Executor``)."""

    def __init__(self, scheduler: str, *, slots: int | None = None,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, poll_s: float = DEFAULT_POLL_S,
                 say: Callable[[str], None] = lambda message: None) -> None:
        if distributed is None:
            raise ExecutorUnavailable("--executor dask needs Dask: pip install 'chainconsole[dask]'",
                                      ExitStatus.USAGE)
        self.scheduler = scheduler
        self._where = _scheduler_argument(scheduler)
        self.fixed_slots = slots
        """Slots given by the operator; None follows the cluster's threads."""
        self.connect_timeout_s = connect_timeout_s
        self.poll_s = poll_s
        self._say = say
        self._slots = slots or 0
        self._client: distributed.Client | None = None
        self._following: asyncio.Task | None = None
        self._cancelled: dict[str, None] = {}
        """Keys of the chunks this node cancelled (oldest first, at most ``CANCELLED_KEPT``)."""
        self._pending_cancels: set[asyncio.Task] = set()

    @property
    def slots(self) -> int:
        return self._slots

    async def start(self, resized: Resized) -> None:
        try:
            self._client = await distributed.Client(**self._where, asynchronous=True, timeout=self.connect_timeout_s,
                                                    set_as_default=False)
        except (OSError, TimeoutError, asyncio.TimeoutError, ValueError) as exc:
            raise ExecutorUnavailable(f"cannot connect to the Dask scheduler {self.scheduler}: "
                                      f"{type(exc).__name__}: {exc}") from None
        threads = await self._threads()
        await self._check_workers()
        if self.fixed_slots is None:
            self._slots = threads
            self._following = asyncio.get_running_loop().create_task(self._follow(resized))
        self._say(f"computing on the Dask cluster at {self._client.scheduler.address}: "
                  f"{_threads(threads)}, {self._slots} slots"
                  + ("" if self.fixed_slots is not None else " (following the cluster as it scales)"))

    async def _threads(self) -> int:
        return sum((await self._client.nthreads()).values())

    async def _check_workers(self) -> None:
        """Every worker present must be able to import the kernels; refuse to start if none can."""
        answers = await self._client.run(_probe, on_error="return")
        broken = {worker: answer for worker, answer in answers.items() if isinstance(answer, BaseException)}
        for worker, error in broken.items():
            self._say(f"Dask worker {worker} cannot compute chunks: {type(error).__name__}: {error}")
        if answers and len(broken) == len(answers):
            raise ExecutorUnavailable("no worker of the Dask cluster can compute chunks: install chainconsole "
                                      "in the workers' environment")

    async def _follow(self, resized: Resized) -> None:
        """Poll the cluster's threads; report a change upstream."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                threads = await self._threads()
            except OSError:
                continue  # the scheduler is away for now; the client reconnects on its own
            if threads != self._slots:
                self._say(f"the Dask cluster now has {_threads(threads)} (was {self._slots})")
                self._slots = threads
                resized(threads)

    def submit(self, jobs: Sequence[ChunkJob]) -> list[distributed.Future]:
        """One Dask task per chunk: the cluster spreads a group over its threads."""
        return [self._client.submit(compute_chunk, job, pure=False) for job in jobs]

    def cancel(self, futures: list[distributed.Future]) -> bool:
        """Drop the group on the cluster; its answers are never awaited (running tasks' are discarded)."""
        for future in futures:
            self._cancelled[future.key] = None
        while len(self._cancelled) > CANCELLED_KEPT:
            del self._cancelled[next(iter(self._cancelled))]
        task = asyncio.get_running_loop().create_task(self._cancel(futures))
        self._pending_cancels.add(task)
        task.add_done_callback(self._pending_cancels.discard)
        return True

    async def _cancel(self, futures: list[distributed.Future]) -> None:
        with contextlib.suppress(OSError):
            await self._client.cancel(futures)

    async def result(self, futures: list[distributed.Future]) -> list[ChunkDone | ChunkError]:
        """Each chunk's answer; a kernel's error answers its chunk alone."""
        outcomes: list[ChunkDone | ChunkError] = []
        for future in futures:
            try:
                outcomes.append(await self._one(future))
            except WorkerCrashed as exc:  # that chunk alone goes to another attempt
                outcomes.append(ChunkError(str(exc)))
            except Exception as exc:  # the kernel raised on the worker
                outcomes.append(ChunkError(f"{type(exc).__name__}: {exc}"))
        return outcomes

    async def _one(self, future: distributed.Future) -> ChunkDone:
        try:
            return await future
        except FutureCancelledError:
            if future.key in self._cancelled:  # cancelled here, on purpose
                del self._cancelled[future.key]
                raise asyncio.CancelledError from None
            raise WorkerCrashed("the Dask cluster dropped this chunk") from None
        except KilledWorker:
            raise WorkerCrashed("the Dask workers computing this chunk died (KilledWorker)") from None
        except ImportError as exc:
            raise WorkerCrashed(f"a Dask worker cannot compute chunks: {exc}") from None
        except OSError as exc:  # the scheduler or a worker went away (CommClosedError is one)
            raise WorkerCrashed(f"lost touch with the Dask cluster: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
        for task in list(self._pending_cancels):
            with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(task, CLOSE_TIMEOUT_S)
        if self._client is not None:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._client.close(), CLOSE_TIMEOUT_S)
            self._client = None


def _scheduler_argument(scheduler: str) -> dict[str, str]:
    """``address=`` for ``tcp://HOST:PORT`` or ``HOST:PORT``, ``scheduler_file=`` for a file."""
    if "://" in scheduler:
        return {"address": scheduler}
    if Path(scheduler).is_file():
        return {"scheduler_file": scheduler}
    if ":" in scheduler and "/" not in scheduler:
        return {"address": scheduler}
    raise ExecutorUnavailable(f"--scheduler {scheduler}: neither an address (tcp://HOST:PORT) "
                              "nor an existing scheduler file", ExitStatus.USAGE)


def _threads(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")
