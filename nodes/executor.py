"""What computes a node's chunks: an executor, behind one small interface.

``LocalWork`` (``nodes.work``) hands chunks to an executor in groups (short chunks share
one hand-off) and waits for one answer per chunk; it never knows which machinery does the
computing. Two executors exist:

- ``WorkerPool`` (``nodes.pool``): this machine's worker processes, one per slot;
- ``DaskExecutor`` (``nodes.dask_executor``): the threads of an existing Dask cluster,
  reached through its scheduler; its slots follow the cluster as it grows and shrinks.

``nodes.executors`` picks one by the name ``chainconsole node --executor`` is given.

An executor that cannot start (no scheduler there, Dask not installed) raises
``ExecutorUnavailable`` from ``start`` with one line for the operator. A chunk whose
machinery failed under it (a worker process died) raises ``WorkerCrashed``: the chunk is
reported failed and retryable, and goes to another attempt; so does a chunk answered with
``ChunkError`` (its kernel raised), alone, while the rest of its group is answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from collections.abc import Sequence

from nodes.pool import ChunkDone, ChunkError, ChunkJob, WorkerCrashed
from protocol.errors import ChainconsoleError, ExitStatus

Resized = Callable[[int], None]
"""Called with the executor's new slot count when its machinery grows or shrinks."""


class ExecutorUnavailable(ChainconsoleError):
    """The executor cannot start; ``status`` is the exit status the node ends with."""

    def __init__(self, message: str, status: int = ExitStatus.CONNECT) -> None:
        super().__init__(message)
        self.status = status


class Executor(Protocol):
    """Computes chunks; a handle stands for one submitted group of chunks until it is answered."""

    @property
    def slots(self) -> int:
        """Chunks computed at once."""

    async def start(self, resized: Resized) -> None:
        """Get ready to compute; ``ExecutorUnavailable`` if it cannot."""

    def submit(self, jobs: Sequence[ChunkJob]) -> object:
        """Queue a group of chunks; return its handle."""

    def cancel(self, handle: object) -> bool:
        """Drop a submitted group if possible; True if its answers will never be awaited."""

    async def result(self, handle: object) -> list[ChunkDone | ChunkError]:
        """One answer per chunk of the group, in order; ``WorkerCrashed`` if what computed it failed."""

    async def close(self) -> None:
        """Stop computing and let go of every resource."""


__all__ = ["ChunkDone", "ChunkError", "ChunkJob", "Executor", "ExecutorUnavailable", "Resized", "WorkerCrashed"]
