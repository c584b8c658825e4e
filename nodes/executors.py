"""The executors a node can use, by the name ``chainconsole node --executor`` is given."""

from __future__ import annotations

import os
from collections.abc import Callable

from nodes.executor import Executor, ExecutorUnavailable
from nodes.pool import WorkerPool
from protocol.errors import ExitStatus

EXECUTORS = ("processes", "dask")
"""The names ``--executor`` takes; the first is the default."""


def make_executor(kind: str, *, slots: int | None, blas_threads: int = 1, scheduler: str | None = None,
                  say: Callable[[str], None] = lambda message: None) -> Executor:
    """The executor ``chainconsole node --executor KIND`` asks for.

    ``slots`` None means: one per core for worker processes, the cluster's threads for Dask.
    """
    if kind == "dask":
        if scheduler is None:
            raise ExecutorUnavailable("--executor dask needs --scheduler ADDRESS", ExitStatus.USAGE)
        from nodes.dask_executor import DaskExecutor

        return DaskExecutor(scheduler, slots=slots, say=say)
    if kind != "processes":
        raise ExecutorUnavailable(f"unknown executor {kind!r}; known: {', '.join(EXECUTORS)}", ExitStatus.USAGE)
    if scheduler is not None:
        raise ExecutorUnavailable("--scheduler applies only with --executor dask", ExitStatus.USAGE)
    return WorkerPool(slots or os.cpu_count() or 1, blas_threads=blas_threads)
