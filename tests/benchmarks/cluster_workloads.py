"""The cluster benchmark's workloads, the chunks they split into, and where results land.

Every system computes the same chunks with the same function, ``nodes.pool.compute_chunk``
(what a node's worker runs: generate the chunk's inputs from the generator spec, compute
them with ``nodes.kernels.compute``), and stores results the way chainconsole does: into
preallocated ``.npy`` memmaps, made durable with fsync before the clock stops.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodes.pool import ChunkDone, ChunkJob

SEED = 2024
SAMPLED_ROWS = 16
"""Rows of a full result compared across systems (all of them for norms and scalars)."""


@dataclass(frozen=True)
class Workload:
    """One benchmark task: an operation over generated square matrices, in fixed chunks."""

    name: str
    title: str
    operation: str
    count: int
    n: int
    chunk_size: int
    return_mode: str
    nodes: int | None = None
    """Nodes and pool workers for this workload; None takes the benchmark's ``--nodes``."""
    kill_at: float | None = None
    """Fraction of items done at which one node is SIGKILLed (the recovery workload)."""

    def spec(self) -> dict[str, object]:
        """The generator spec of input ``a``, as a task file and an Assign message carry it."""
        return {"count": self.count, "shape": [self.n, self.n], "seed": SEED,
                "distribution": "normal", "dtype": "float64"}

    def document(self) -> dict[str, object]:
        """The task file chainconsole runs."""
        return {"name": f"bench-{self.name.lower()}", "operation": self.operation,
                "inputs": {"a": {"generate": self.spec()}}, "chunk_size": self.chunk_size,
                "return": self.return_mode, "max_attempts": 3}

    def jobs(self) -> list[ChunkJob]:
        """The chunks, as ChunkJobs: the same ranges chainconsole hands out with a fixed chunk size."""
        spec = {"a": self.spec()}
        return [ChunkJob(self.operation, start, min(start + self.chunk_size, self.count),
                         self.return_mode, spec, {})
                for start in range(0, self.count, self.chunk_size)]

    @property
    def result_shape(self) -> tuple[int, ...]:
        """Shape of all result values: the stacked items, or one norm per item."""
        if self.return_mode == "norms":
            return (self.count,)
        return (self.count,) if self.operation == "det" else (self.count, self.n, self.n)

    @property
    def result_bytes(self) -> int:
        return math.prod(self.result_shape) * 8

    def describe(self) -> str:
        chunks = math.ceil(self.count / self.chunk_size)
        return (f"{self.name}: {self.title} — {self.operation} {self.count:,} × {self.n}×{self.n}, "
                f"{self.chunk_size}/chunk ({chunks:,} chunks), return {self.return_mode}, "
                f"{self.result_bytes / 2**20:,.1f} MiB of results")


FULL_COUNTS = {"W1": 1500, "W2": 2000, "W3": 50_000, "W4": 1500}
QUICK_COUNTS = {"W1": 100, "W2": 200, "W3": 5_000, "W4": 150}
"""Items per workload; ``--quick`` keeps every shape and chunk size and cuts the counts."""


def workloads(quick: bool) -> dict[str, Workload]:
    """W1–W4 as the issue defines them, or scaled down for a smoke run (``--quick``)."""
    count = QUICK_COUNTS if quick else FULL_COUNTS
    return {w.name: w for w in (
        Workload("W1", "compute-bound", "invert", count["W1"], 384, 25, "norms"),
        Workload("W2", "data-heavy", "invert", count["W2"], 256, 25, "full"),
        Workload("W3", "dispatch-bound", "det", count["W3"], 8, 10, "full"),
        Workload("W4", "recovery", "invert", count["W4"], 384, 25, "norms", nodes=3, kill_at=0.5),
    )}


WARM_UP = Workload("warm-up", "first-run costs paid before timing", "det", 64, 8, 4, "full")
"""Run once through every system before its first timing: imports, connections, first tasks."""


def one_blas_thread() -> None:
    """Pool initializer: numpy first (so threadpoolctl finds its BLAS), then one BLAS thread."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


class ResultSink:
    """Preallocated ``ok`` and values memmaps for one run, as chainconsole's ResultStore keeps them."""

    def __init__(self, folder: Path, workload: Workload) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        values_name = "norms.npy" if workload.return_mode == "norms" else "result.npy"
        self.ok = np.lib.format.open_memmap(folder / "ok.npy", mode="w+", dtype=bool, shape=(workload.count,))
        self.values = np.lib.format.open_memmap(folder / values_name, mode="w+", dtype=np.float64,
                                                shape=workload.result_shape)

    def store(self, job: ChunkJob, done: ChunkDone) -> None:
        self.values[job.start:job.stop] = done.result if done.result is not None else done.norms
        self.ok[job.start:job.stop] = done.ok

    def finish(self) -> None:
        """Flush and fsync both files: chainconsole's ``wait`` returns only after this."""
        for array in (self.values, self.ok):
            array.flush()
            fd = os.open(array.filename, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def load_results(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``ok`` and values of a finished run from a task folder (memmapped) or an ``.npz`` file."""
    if folder.suffix == ".npz":
        with np.load(folder) as data:
            return data["ok"], data["norms" if "norms" in data else "result"]
    values = folder / "norms.npy"
    if not values.exists():
        values = folder / "result.npy"
    return np.load(folder / "ok.npy", mmap_mode="r"), np.load(values, mmap_mode="r")


def same_results(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> str:
    """"" when two runs agree (all flags, all scalars, a spread of full rows), else what differs."""
    (ok_a, values_a), (ok_b, values_b) = reference, other
    if values_a.shape != values_b.shape:
        return f"result shape {values_b.shape}, expected {values_a.shape}"
    if not np.array_equal(ok_a, ok_b):
        return f"{int(np.count_nonzero(ok_a != ok_b))} ok flags differ"
    rows = np.arange(len(values_a))
    if values_a.ndim > 1:
        rows = np.unique(np.linspace(0, len(values_a) - 1, SAMPLED_ROWS).astype(int))
    if not np.allclose(values_a[rows], values_b[rows], rtol=1e-9, atol=0, equal_nan=True):
        return "result values differ"
    return ""
