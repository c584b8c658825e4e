"""Compute one chunk of a registered operation with its kernel, item failures contained.

A chunk's items are stacked along the first axis and computed in one batched numpy call.
When one item makes the batch raise (a singular matrix makes ``np.linalg.inv`` fail for
the whole stack), that chunk alone is recomputed item by item, so the failing items get
``ok = False`` and NaN results and the others are kept. An item whose result is not finite
is failed the same way: NaN and inf are never handed back as answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from protocol.operations import OPERATIONS, RETURN_MODES, result_dtype

Inputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ChunkOutput:
    """What one chunk computed: a flag per item and either the results or their norms."""

    ok: np.ndarray
    """bool, one per item; False when the item's computation failed."""
    result: np.ndarray | None
    """The result items stacked (NaN where not ok), when the return mode is ``full``."""
    norms: np.ndarray | None
    """float64 Frobenius norm of each result item (NaN where not ok), when ``norms``."""


def _item_by_item(
    kernel: Callable[[Inputs], np.ndarray], inputs: Inputs, count: int, item_shape: tuple[int, ...]
) -> np.ndarray:
    """Compute each item alone; an item whose computation raises stays NaN."""
    out = np.full((count, *item_shape), np.nan)
    for i in range(count):
        try:
            out[i] = kernel({name: array[i : i + 1] for name, array in inputs.items()})[0]
        except np.linalg.LinAlgError:
            pass  # this item alone is singular or did not converge: it keeps its NaN
    return out


def compute(operation: str, inputs: Inputs, return_mode: str) -> ChunkOutput:
    """Compute ``operation`` over the stacked items of ``inputs``; see the module docstring."""
    spec = OPERATIONS.get(operation)
    if spec is None:
        raise ValueError(f"unknown operation {operation!r}; known: {sorted(OPERATIONS)}")
    kernel = spec.kernel
    if set(inputs) != set(spec.inputs):
        raise ValueError(f"{operation} takes inputs {list(spec.inputs)}, got {sorted(inputs)}")
    if return_mode not in RETURN_MODES:
        raise ValueError(f"unknown return mode {return_mode!r}; expected one of {RETURN_MODES}")
    counts = {len(array) for array in inputs.values()}
    if len(counts) != 1:
        raise ValueError(f"inputs of one chunk must hold the same number of items, got {counts}")
    count = counts.pop()
    item_shape = spec.result_item_shape({name: array.shape[1:] for name, array in inputs.items()})
    dtype = result_dtype(array.dtype for array in inputs.values())

    with np.errstate(all="ignore"):  # NaN and inf are judged per item below, not warned about
        try:
            result = kernel(inputs) if count else np.empty((0, *item_shape))
        except np.linalg.LinAlgError:
            result = _item_by_item(kernel, inputs, count, item_shape)
        # Kernels return fresh arrays, so failed items may be overwritten in place; contiguous
        # so that per_item below is a view and sees the NaN.
        result = np.ascontiguousarray(result, dtype=dtype)
        per_item = result.reshape(count, math.prod(result.shape[1:]))
        ok = np.isfinite(per_item).all(axis=1)
        result[~ok] = np.nan
        if return_mode == "full":
            return ChunkOutput(ok=ok, result=result, norms=None)
        norms = item_norms(per_item)
        ok &= np.isfinite(norms)
        norms[~ok] = np.nan
    return ChunkOutput(ok=ok, result=None, norms=norms)


def item_norms(per_item: np.ndarray) -> np.ndarray:
    """The float64 Frobenius norm of each row, scaled first so that it neither overflows nor underflows.

    A plain sum of squares overflows for values above 1e154 and underflows below 1e-154;
    the scaled norm is inf only when the norm itself is too large for a float64.
    """
    values = per_item.astype(np.float64)
    scale = np.max(np.abs(values), axis=1, initial=0.0, where=np.isfinite(values))
    scale = np.where(scale > 0, scale, 1.0)
    with np.errstate(all="ignore"):
        return np.linalg.norm(values / scale[:, None], axis=1) * scale
