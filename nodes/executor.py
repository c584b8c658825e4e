"""What computes a node's chunks: an executor, behind one small interface.

``LocalWork`` (``nodes.work``) hands each chunk to an executor and waits for its answer;
it never knows which machinery does the computing. Two executors exist:

- ``WorkerPool`` (``nodes.pool``): this machine's worker processes, one per slot;
- ``DaskExecutor`` (``nodes.dask_executor``): the threads of an existing Dask cluster,
  reached through its scheduler; its slots follow the cluster as it grows and shrinks.

``nodes.executors`` picks one by the name ``chainconsole node --executor`` is given.

An executor that cannot start (no scheduler there, Dask not installed) raises
``ExecutorUnavailable`` from ``start`` with one line for the operator. A chunk whose
machinery failed under it (a worker process died) raises ``WorkerCrashed``: the chunk is
reported failed and retryable, and goes to another attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from nodes.pool import ChunkDone, ChunkJob, WorkerCrashed
from protocol.errors import ChainconsoleError, ExitStatus

Resized = Callable[[int], None]
"""Called with the executor's new slot count when its machinery grows or shrinks."""


class ExecutorUnavailable(ChainconsoleError):
    """The executor cannot start; ``status`` is the exit status the node ends with."""

    def __init__(self, message: str, status: int = ExitStatus.CONNECT) -> None:
        super().__init__(message)
        self.status = status


class Executor(Protocol):
    """Computes chunks; a handle stands for one submitted chunk until it is answered."""

    @property
    def slots(self) -> int:
        """Chunks computed at once."""

    async def start(self, resized: Resized) -> None:
        """Get ready to compute; ``ExecutorUnavailable`` if it cannot."""

    def submit(self, job: ChunkJob) -> object:
        """Queue ``job``; return its handle."""

    def cancel(self, handle: object) -> bool:
        """Drop a submitted chunk if possible; True if its answer will never be awaited."""

    async def result(self, handle: object) -> ChunkDone:
        """The chunk's answer; ``WorkerCrashed`` if what computed it failed."""

    async def close(self) -> None:
        """Stop computing and let go of every resource."""


__all__ = ["ChunkDone", "ChunkJob", "Executor", "ExecutorUnavailable", "Resized", "WorkerCrashed"]
