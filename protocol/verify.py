"""Checks of returned results that cost far less than computing them.

Every result is checked for shape, dtype and length. Then a sample of its items is
checked per operation: randomized O(n²) products for ``invert``, ``solve`` and
``matmul`` (Freivalds), trace and Frobenius identities for ``eigvalsh`` and
``svdvals``, and a recomputation for ``det`` and for ``norms`` results, whose values
cannot be checked any other way. A node cannot know which items are checked.

The console checks what reaches it, and a chain link checks what the nodes behind it
return, so a lying node is caught — and quarantined — by the link it is connected to.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from protocol.inputs import GeneratedInput
from protocol.messages import Assign, Result
from protocol.operations import OPERATIONS, result_dtype


class ChunkSource(Protocol):
    """What a check needs to know of a task: a ``Task``, or an ``AssignedChunk``."""

    operation: str
    return_mode: str

    @property
    def inputs(self) -> object: ...

    @property
    def result_item_shape(self) -> tuple[int, ...]: ...

    @property
    def result_dtype(self) -> np.dtype: ...

    def input_items(self, name: str, start: int, stop: int) -> np.ndarray: ...


class AssignedChunk:
    """The inputs of one assigned chunk, as a chain link sees them (no Task behind it)."""

    def __init__(self, assign: Assign) -> None:
        self.assign = assign
        self.operation = assign.operation
        self.return_mode = assign.return_mode
        self.inputs = [*assign.generated, *assign.arrays]
        self._generated = {name: GeneratedInput.from_spec(spec) for name, spec in assign.generated.items()}

    def input_items(self, name: str, start: int, stop: int) -> np.ndarray:
        if name in self._generated:
            return self._generated[name].items(start, stop)
        offset = self.assign.start
        return self.assign.arrays[name][start - offset:stop - offset]

    @property
    def result_item_shape(self) -> tuple[int, ...]:
        shapes = {name: self._item_shape(name) for name in self.inputs}
        return OPERATIONS[self.operation].result_item_shape(shapes)

    @property
    def result_dtype(self) -> np.dtype:
        return result_dtype([*(s.dtype for s in self._generated.values()),
                             *(a.dtype for a in self.assign.arrays.values())])

    def _item_shape(self, name: str) -> tuple[int, ...]:
        if name in self._generated:
            return tuple(self._generated[name].shape)
        return tuple(self.assign.arrays[name].shape[1:])

# Relative residual a correct result stays under, by dtype (generous: ill-conditioned
# inputs are legitimate; corrupted results miss by orders of magnitude).
TOLERANCE = {np.dtype(np.float64): 1e-7, np.dtype(np.float32): 5e-3}

_rng = np.random.default_rng()


DEFAULT_SAMPLE = 1
DEFAULT_RECOMPUTE_FRACTION = 0.25


def check_result(task: ChunkSource, start: int, stop: int, result: Result, *, sample: int = DEFAULT_SAMPLE,
                 recompute_fraction: float = DEFAULT_RECOMPUTE_FRACTION) -> str:
    """Return "" when ``result`` is plausible for items ``start..stop-1``, else the problem.

    ``sample`` items of each chunk get the operation's cheap check. Where the only check
    is computing the item again (``det``, ``norms`` results) it runs on one item in a
    ``recompute_fraction`` of the chunks, so checking never costs a real share of the work.
    """
    count = stop - start
    if result.ok.shape != (count,) or result.ok.dtype != np.bool_:
        return f"ok flags have shape {result.ok.shape}, expected ({count},)"
    if task.return_mode == "full":
        values = result.result
        shape, dtype = (count, *task.result_item_shape), task.result_dtype
    else:
        values = result.norms
        shape, dtype = (count,), np.dtype(np.float64)
    if values is None:
        return f"result carries no {'result' if task.return_mode == 'full' else 'norms'} array"
    if values.shape != shape or values.dtype != dtype:
        return f"values have shape {values.shape} {values.dtype}, expected {shape} {dtype}"
    if sample <= 0 or count == 0:
        return ""  # checking of values turned off: shapes and types only
    if task.return_mode == "norms" or task.operation == "det":
        if _rng.random() >= recompute_fraction:
            return ""
        sample = 1
    for offset in _rng.choice(count, size=min(sample, count), replace=False):
        problem = _check_item(task, start + int(offset), bool(result.ok[offset]), values[offset])
        if problem:
            return f"item {start + int(offset)}: {problem}"
    return ""


def _check_item(task: ChunkSource, index: int, ok: bool, value: np.ndarray) -> str:
    inputs = {name: task.input_items(name, index, index + 1)[0] for name in task.inputs}
    tol = TOLERANCE.get(task.result_dtype, 1e-7)
    if not ok or task.return_mode == "norms" or task.operation == "det":
        return _recompute(task, inputs, ok, value, tol)
    value = value.astype(np.float64)
    a = inputs["a"].astype(np.float64)
    match task.operation:
        case "invert":
            r = _rng.standard_normal(a.shape[0])
            residual = a @ (value @ r) - r
            scale = np.linalg.norm(a) * np.linalg.norm(value) * np.linalg.norm(r)
        case "solve":
            b = inputs["b"].astype(np.float64)
            residual = a @ value - b
            scale = np.linalg.norm(a) * np.linalg.norm(value) + np.linalg.norm(b)
        case "matmul":
            b = inputs["b"].astype(np.float64)
            r = _rng.standard_normal(value.shape[-1])
            residual = value @ r - a @ (b @ r)
            scale = np.linalg.norm(a) * np.linalg.norm(b) * np.linalg.norm(r)
        case "eigvalsh" | "svdvals":
            # Both are orthogonal invariants: their squares sum to the Frobenius norm².
            frob = np.linalg.norm(a) ** 2
            residual = np.array([np.sum(value ** 2) - frob])
            if task.operation == "eigvalsh":
                residual = np.append(residual, np.sum(value) - np.trace(a))
                ordered = np.all(np.diff(value) >= -tol * (abs(value).max() + 1))
            else:
                ordered = np.all(np.diff(value) <= tol * (abs(value).max() + 1)) and value.min() >= -tol
            if not ordered:
                return "values are not in the documented order"
            scale = frob + 1.0
        case _:
            return _recompute(task, inputs, ok, value, tol)
    if not np.all(np.isfinite(residual)) or np.linalg.norm(residual) > tol * max(scale, 1e-300):
        return f"{task.operation} check failed (residual {np.linalg.norm(residual):.3g})"
    return ""


def _recompute(task: ChunkSource, inputs: dict[str, np.ndarray], ok: bool, value: np.ndarray, tol: float) -> str:
    """Compute the item again with plain numpy and compare (for what has no cheaper check)."""
    try:
        with np.errstate(all="ignore"):
            reference = np.asarray(_REFERENCE[task.operation](inputs), dtype=np.float64)
        computable = bool(np.all(np.isfinite(reference)))
    except np.linalg.LinAlgError:
        computable = False
    if not ok:
        # A node may only call an item failed when numpy cannot compute it either.
        if computable and not _ill_conditioned(inputs["a"]):
            return "item reported failed but it computes"
        return ""
    if not computable:
        return ""
    if task.return_mode == "norms":
        reference = np.asarray(np.linalg.norm(reference))
    if not np.allclose(value, reference, rtol=tol * 100, atol=tol * 100 * float(np.abs(reference).max(initial=0))):
        return f"{task.operation} value differs from recomputation"
    return ""


def _ill_conditioned(a: np.ndarray) -> bool:
    """True when a float32 or float64 kernel may fairly fail on ``a``."""
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        return False
    return bool(np.linalg.cond(a.astype(np.float64)) > 1e6)


# An independent reference for one item, so a bug in the node's kernels is caught too.
_REFERENCE = {
    "invert": lambda x: np.linalg.inv(x["a"].astype(np.float64)),
    "det": lambda x: np.linalg.det(x["a"].astype(np.float64)),
    "solve": lambda x: np.linalg.solve(x["a"].astype(np.float64), x["b"].astype(np.float64)),
    "matmul": lambda x: x["a"].astype(np.float64) @ x["b"].astype(np.float64),
    "eigvalsh": lambda x: np.linalg.eigvalsh(x["a"].astype(np.float64)),
    "svdvals": lambda x: np.linalg.svd(x["a"].astype(np.float64), compute_uv=False),
}
