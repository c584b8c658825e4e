"""Checks of returned results that cost far less than computing them.

Every result is checked for shape, dtype and length, and every value of an item marked
``ok`` must be finite. Then, per operation:

- ``invert``, ``solve``, ``matmul`` (full): every item, by randomized O(n²) products
  (Freivalds), batched over the chunk;
- ``eigvalsh``, ``svdvals``: every item by order, sign, trace and Frobenius identities
  and Rayleigh bounds (O(n²)); ``sample`` items per chunk also by the next power sum
  (Σλ³ = tr a³, Σσ⁴ = ‖aᵀa‖²); in ``norms`` mode every item by ‖λ‖ = ‖a‖_F;
- ``det`` and the other ``norms`` results: one item, in a ``recompute_fraction`` of the
  chunks, computed again and compared; and these results are replicated (``replicated``):
  a second node's result is compared with the first (``compare``), and every item where
  they differ beyond rounding is computed again here to say which is wrong;
- items reported failed (``ok`` false): up to ``DEFAULT_FAILED_SAMPLE`` per chunk are
  computed again in the task's dtype; a failure numpy shares is honest.

Every comparison is against a bound that a correct result provably meets: backward
error analysis of the operation, ``n`` times a per-operation, per-dtype tolerance from
``TOLERANCES`` times the norms of the item (docs/protocol.md, "Result checks"). All
checks work on items scaled by their largest entry, so inputs near overflow or
underflow are judged like any other. A node cannot know which items are sampled.

The console checks what reaches it, and a chain link checks what the nodes behind it
return, so a lying node is caught — and quarantined — by the link it is connected to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Protocol

import numpy as np

from protocol.inputs import GeneratedInput
from protocol.messages import Assign, Result
from protocol.operations import OPERATIONS, Operation, result_dtype


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

    @cached_property
    def result_item_shape(self) -> tuple[int, ...]:
        shapes = {name: self._item_shape(name) for name in self.inputs}
        return OPERATIONS[self.operation].result_item_shape(shapes)

    @cached_property
    def result_dtype(self) -> np.dtype:
        return result_dtype([*(s.dtype for s in self._generated.values()),
                             *(a.dtype for a in self.assign.arrays.values())])

    def _item_shape(self, name: str) -> tuple[int, ...]:
        if name in self._generated:
            return tuple(self._generated[name].shape)
        return tuple(self.assign.arrays[name].shape[1:])


TOLERANCES: dict[str, dict[str, float]] = {
    "invert": {"float64": 1.5e-14, "float32": 8e-6},
    "solve": {"float64": 1.5e-14, "float32": 8e-6},
    "matmul": {"float64": 2e-15, "float32": 1e-6},
    "det": {"float64": 1.5e-14, "float32": 8e-6},
    "eigvalsh": {"float64": 7e-15, "float32": 4e-6},
    "svdvals": {"float64": 7e-15, "float32": 4e-6},
}
"""τ per operation and result dtype: an honest result's error stays within τ·n times the
item's norms (the exact bound per check is in docs/protocol.md). τ is 8–64 times the
dtype's unit roundoff: room for the check's own float64 arithmetic and for pivot growth."""

DEFAULT_SAMPLE = 1
"""Items per chunk that get the checks too costly for every item (eigvalsh, svdvals power sums)."""
DEFAULT_RECOMPUTE_FRACTION = 0.25
"""Share of chunks in which one item of ``det`` or a ``norms`` result is computed again."""
DEFAULT_PROBES = 2
"""Random vectors per item in the Freivalds checks."""
DEFAULT_FAILED_SAMPLE = 2
"""Items reported failed that are computed again per chunk (bounds the cost of false claims)."""
MAY_FAIL_COND = {"float64": 1e12, "float32": 1e4}
"""An item whose condition number (in float64) exceeds this may fail on any node: its failure is not checked."""

_rng = np.random.default_rng()
_F64 = np.dtype(np.float64)


@dataclass(frozen=True)
class Invalid:
    """Why a result is wrong, and the tolerance it failed (0 for a rule without one)."""

    reason: str
    tolerance: float = 0.0

    def __str__(self) -> str:
        return self.reason


def judge(task: ChunkSource, start: int, stop: int, result: Result, *, sample: int = DEFAULT_SAMPLE,
          recompute_fraction: float = DEFAULT_RECOMPUTE_FRACTION) -> Invalid | None:
    """None when ``result`` passes every check for items ``start..stop-1``, else why not.

    ``sample`` 0 turns value checks off (shapes and types only).
    """
    count = stop - start
    if result.ok.shape != (count,) or result.ok.dtype != np.bool_:
        return Invalid(f"ok flags have shape {result.ok.shape}, expected ({count},)")
    full = task.return_mode == "full"
    values = result.result if full else result.norms
    shape = (count, *task.result_item_shape) if full else (count,)
    dtype = task.result_dtype if full else _F64
    if values is None:
        return Invalid(f"result carries no {'result' if full else 'norms'} array")
    if values.shape != shape or values.dtype != dtype:
        return Invalid(f"values have shape {values.shape} {values.dtype}, expected {shape} {dtype}")
    if sample <= 0 or count == 0:
        return None
    ok = result.ok
    if not np.isfinite(values).all():  # NaN is expected where ok is false, and nowhere else
        finite = np.isfinite(values.reshape(count, -1)).all(axis=1)
        if (bad := np.flatnonzero(ok & ~finite)).size:
            return Invalid(f"item {start + int(bad[0])}: marked ok but not finite")
    if not full and (values < 0).any() and (bad := np.flatnonzero(ok & (values < 0))).size:
        return Invalid(f"item {start + int(bad[0])}: a norm below 0")
    check = _Check(task, start, stop, _tau(task))
    every = bool(ok.all())
    if not every and (problem := check.failures(ok)) is not None:
        return problem
    op = OPERATIONS[task.operation]
    if op.check == "spectrum" or (full and (op.check == "freivalds" or callable(op.check))):
        indexes = np.arange(count) if every else np.flatnonzero(ok)
        if not indexes.size:
            return None
        ok_values = values if every else values[indexes]  # no copy when every item is ok
        if op.check == "freivalds":
            return check.freivalds(indexes, ok_values)
        if op.check == "spectrum" and full:
            sampled = _rng.choice(indexes, size=min(sample, indexes.size), replace=False)
            return check.spectrum(indexes, ok_values, sampled)
        if op.check == "spectrum":
            return check.spectrum_norms(indexes, ok_values)
        return check.declared(op, indexes, ok_values)
    # The rest is checked by computing one ok item again, in a share of the chunks.
    if _rng.random() >= recompute_fraction:
        return None
    if every:
        index = int(_rng.integers(count))
    elif (indexes := np.flatnonzero(ok)).size:
        index = int(indexes[_rng.integers(indexes.size)])
    else:
        return None
    return check.recompute(index, values[index])


AGREEMENT = 64
"""Two results agree on an item within this many τ of its larger value; beyond, it is recomputed."""
ARBITRATED_ITEMS = 8
"""Items where two results differ that are computed again to say which is wrong."""


def replicated(operation: str, return_mode: str) -> bool:
    """Whether results of this kind have no cheap check of every item, so a second node confirms them."""
    op = OPERATIONS.get(operation)
    return op is not None and return_mode in op.replicated


@dataclass(frozen=True)
class Comparison:
    """Two results of one chunk, compared: what is wrong with either, and whether that settles it."""

    first: Invalid | None
    second: Invalid | None
    settled: bool
    """Every item where they differ was computed again (or none differs)."""


def compare(task: ChunkSource, start: int, stop: int, first: Result, second: Result) -> Comparison:
    """Compare two results that each passed ``judge``; items that differ are computed again.

    Two results agree on an item within ``AGREEMENT``·τ of the larger value (τ from
    ``TOLERANCES``); honest ones mostly do, and where they don't, the recomputation clears both. An item beyond that, or ok in one result and failed in the other, is
    judged on its own against a float64 recomputation, within the same bounds ``judge`` uses.
    """
    count = stop - start
    full = task.return_mode == "full"
    values = [(r.result if full else r.norms).reshape(count, -1).astype(np.float64) for r in (first, second)]
    rtol = AGREEMENT * _tolerance(task.operation, task.result_dtype)
    with np.errstate(all="ignore"):
        a, b = values
        close = np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b)), axis=1)
    same = (first.ok == second.ok) & (close | ~first.ok)
    differing = np.flatnonzero(~same)
    if not differing.size:
        return Comparison(None, None, True)
    check = _Check(task, start, stop, _tau(task))
    problems: list[Invalid | None] = [None, None]
    for offset in differing[:ARBITRATED_ITEMS]:
        for side, result in enumerate((first, second)):
            if problems[side] is None:
                problems[side] = _item_problem(check, int(offset), result, full)
    return Comparison(problems[0], problems[1], differing.size <= ARBITRATED_ITEMS)


def _item_problem(check: _Check, offset: int, result: Result, full: bool) -> Invalid | None:
    if not result.ok[offset]:
        if check._may_fail(offset):
            return None
        return Invalid(f"item {check.start + offset}: reported failed but it computes")
    values = result.result if full else result.norms
    return check.recompute(offset, values[offset])


def _tolerance(operation: str, dtype: np.dtype) -> float:
    """τ: from ``TOLERANCES`` for the built-ins; an installed operation's own, scaled for float32."""
    if operation in TOLERANCES:
        return TOLERANCES[operation]["float32" if dtype.char == "f" else "float64"]
    own = OPERATIONS[operation].tolerance
    return own if dtype == np.float64 else own * float(np.finfo(np.float32).eps / np.finfo(np.float64).eps)


def _tau(task: ChunkSource) -> float:
    """The bound's factor: the node's rounding in its dtype plus the check's own in float64."""
    return _tolerance(task.operation, task.result_dtype) + _tolerance(task.operation, _F64)


def _scale(x: np.ndarray) -> np.ndarray:
    """Each item's largest |entry| (1 for an all-zero item), shaped to divide the items by."""
    axes = tuple(range(1, x.ndim))
    # max |x| as max(max x, -min x): two passes over the items, no |x| copy of them
    s = np.maximum(x.max(axis=axes, keepdims=True), -x.min(axis=axes, keepdims=True)) if axes else np.abs(x)
    return np.where((s > 0) & np.isfinite(s), s, 1.0)


def _item_scale(x: np.ndarray) -> float:
    """``_scale`` of one item: its largest |entry|, or 1."""
    s = float(np.abs(x).max(initial=0.0))
    return s if s > 0 and math.isfinite(s) else 1.0


def _fro(x: np.ndarray) -> np.ndarray:
    """Frobenius norm of each item (items already scaled: no overflow)."""
    flat = x.reshape(len(x), -1)
    return np.sqrt(np.einsum("ij,ij->i", flat, flat))  # no x·x copy of the items


def _lower_symmetric(a: np.ndarray) -> np.ndarray:
    """The symmetric matrices eigvalsh reads: each item's lower triangle, mirrored."""
    lower = np.tril(a)
    return lower + np.swapaxes(np.tril(a, -1), -1, -2)


class _Check:
    """The checks of one chunk's values, over float64 copies of its inputs."""

    def __init__(self, task: ChunkSource, start: int, stop: int, tau: float) -> None:
        self.task, self.start, self.stop, self.tau = task, start, stop, tau
        self.tolerance = _tolerance(task.operation, task.result_dtype)
        self._chunk: dict[str, np.ndarray] | None = None

    def _input(self, name: str, indexes: np.ndarray) -> np.ndarray:
        """The chunk's items of one input at ``indexes``, as float64 (the whole chunk is read once).

        All of a float64 chunk's items are the chunk itself, not a copy: never write to them.
        """
        if self._chunk is None:
            self._chunk = {key: np.asarray(self.task.input_items(key, self.start, self.stop))
                           for key in self.task.inputs}
        items = self._chunk[name]
        if len(indexes) != len(items):
            items = items[indexes]
        return items.astype(np.float64, copy=False)

    def _item(self, offset: int) -> dict[str, np.ndarray]:
        """One item's inputs, in their own dtype (without reading the rest of the chunk)."""
        if self._chunk is not None:
            return {name: array[offset] for name, array in self._chunk.items()}
        index = self.start + offset
        return {name: np.asarray(self.task.input_items(name, index, index + 1))[0] for name in self.task.inputs}

    def _fail(self, index: int, what: str, residual: float, bound: float) -> Invalid:
        return Invalid(f"item {self.start + int(index)}: {self.task.operation} {what} "
                       f"(residual {residual:.3g} > bound {bound:.3g})", self.tolerance)

    def _first_over(self, indexes: np.ndarray, residual: np.ndarray, bound: np.ndarray, what: str) -> Invalid | None:
        with np.errstate(invalid="ignore"):
            over = ~(residual <= bound)  # NaN residuals are over too
        if over.any():
            i = int(np.flatnonzero(over)[0])
            return self._fail(indexes[i], what, float(residual[i]), float(bound[i]))
        return None

    # -- every item: Freivalds --------------------------------------------------------------

    def freivalds(self, indexes: np.ndarray, x: np.ndarray) -> Invalid | None:
        """invert: x·a ≈ I or a·x ≈ I; solve: a·x ≈ b; matmul: x ≈ a·b — on random vectors."""
        op = self.task.operation
        a = self._input("a", indexes)
        x = x.astype(np.float64, copy=False)
        sa, sx = _scale(a), _scale(x)
        a, x = a / sa, x / sx
        with np.errstate(all="ignore"):
            if op == "invert":
                n = a.shape[-1]
                r = _rng.standard_normal((len(indexes), n, DEFAULT_PROBES))
                target = r / sa / sx  # a·x = I ⇔ â·x̂ = I / (sa·sx)
                left = np.linalg.norm((x @ (a @ r) - target).reshape(len(indexes), -1), axis=1)
                right = np.linalg.norm((a @ (x @ r) - target).reshape(len(indexes), -1), axis=1)
                residual = np.minimum(left, right)
                bound = self.tau * n * _fro(a) * _fro(x) * _fro(r)
            elif op == "solve":
                b = self._input("b", indexes)
                vector = b.ndim == 2
                if vector:
                    b, x = b[..., None], x[..., None]
                sb = _scale(b)
                b = b / sb
                n = a.shape[-1]
                r = _rng.standard_normal((len(indexes), b.shape[-1], DEFAULT_PROBES))
                ratio = (sb / sa) / sx.reshape(-1, 1, 1)  # a·x = b ⇔ â·x̂ = b̂ · sb / (sa·sx)
                residual = np.linalg.norm((a @ (x @ r) - ratio * (b @ r)).reshape(len(indexes), -1), axis=1)
                bound = self.tau * n * (_fro(a) * _fro(x) + ratio.reshape(-1) * _fro(b)) * _fro(r)
            else:
                b = self._input("b", indexes)
                sb = _scale(b)
                b = b / sb
                k = a.shape[-1]
                r = _rng.standard_normal((len(indexes), x.shape[-1], DEFAULT_PROBES))
                ratio = (sx / sa) / sb  # x = a·b ⇔ x̂ · sx / (sa·sb) = â·b̂
                residual = np.linalg.norm((ratio * (x @ r) - a @ (b @ r)).reshape(len(indexes), -1), axis=1)
                bound = self.tau * k * _fro(a) * _fro(b) * _fro(r)
        return self._first_over(indexes, residual, bound, "check failed")

    # -- every item: spectra --------------------------------------------------------------

    def _spectrum_inputs(self, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        a = self._input("a", indexes)
        if self.task.operation == "eigvalsh":
            a = _lower_symmetric(a)
        s = _scale(a)
        return a / s, s.reshape(-1, 1), max(a.shape[-2:])

    def spectrum(self, indexes: np.ndarray, values: np.ndarray, sampled: np.ndarray) -> Invalid | None:
        """Order, signs, power sums 1–2 and Rayleigh bounds on every item; the next power sum on ``sampled``."""
        a, s, n = self._spectrum_inputs(indexes)
        v = values.astype(np.float64) / s
        f = _fro(a)
        delta = self.tau * n * f  # Weyl: each value is off by at most the backward error's 2-norm
        p = v.shape[-1]
        with np.errstate(all="ignore"):
            checks: list[tuple[np.ndarray, np.ndarray, str]] = []
            if self.task.operation == "eigvalsh":
                diagonal = np.diagonal(a, axis1=-2, axis2=-1)
                checks += [
                    (np.max(v[:, :-1] - v[:, 1:], axis=1, initial=0.0), delta, "values not ascending"),
                    (np.abs(v.sum(axis=1) - diagonal.sum(axis=1)), p * delta, "sum differs from the trace"),
                    (np.maximum(v[:, 0] - diagonal.min(axis=1), diagonal.max(axis=1) - v[:, -1]), delta,
                     "extreme values inside the diagonal's range"),
                ]
            else:
                columns = np.sqrt(np.sum(a * a, axis=-2))
                rows = np.sqrt(np.sum(a * a, axis=-1))
                smallest = np.min(columns if a.shape[-2] >= a.shape[-1] else rows, axis=1)
                checks += [
                    (np.max(v[:, 1:] - v[:, :-1], axis=1, initial=0.0), delta, "values not descending"),
                    (-v[:, -1], delta, "a value below 0"),
                    (np.maximum(np.max(columns, axis=1), np.max(rows, axis=1)) - v[:, 0], delta,
                     "largest value below a row or column norm"),
                    (v[:, -1] - smallest, delta, "smallest value above a row or column norm"),
                ]
            checks.append((np.abs(np.sum(v * v, axis=1) - f * f), delta * (2 * np.sqrt(p) * f + p * delta),
                           "sum of squares differs from the Frobenius norm²"))
            for residual, bound, what in checks:
                if (problem := self._first_over(indexes, residual, bound, what)) is not None:
                    return problem
            chosen = np.isin(indexes, sampled)
            return self._power_sum(indexes[chosen], a[chosen], v[chosen], delta[chosen])

    def _power_sum(self, indexes: np.ndarray, a: np.ndarray, v: np.ndarray, delta: np.ndarray) -> Invalid | None:
        """eigvalsh: Σλ³ = tr a³; svdvals: Σσ⁴ = ‖aᵀa‖²_F — O(n³), so on sampled items only."""
        if not indexes.size:
            return None
        f, p = _fro(a), v.shape[-1]
        own = TOLERANCES[self.task.operation]["float64"] * max(a.shape[-2:])  # this check's own rounding
        if self.task.operation == "eigvalsh":
            residual = np.abs(np.sum(v ** 3, axis=1) - np.sum((a @ a) * a, axis=(-2, -1)))
            bound = delta * (3 * f * f + 3 * delta * np.sqrt(p) * f + p * delta * delta) + own * f ** 3
            what = "sum of cubes differs from the trace of a³"
        else:
            gram = np.swapaxes(a, -1, -2) @ a if a.shape[-2] >= a.shape[-1] else a @ np.swapaxes(a, -1, -2)
            residual = np.abs(np.sum(v ** 4, axis=1) - _fro(gram) ** 2)
            bound = delta * (4 * f ** 3 + 6 * delta * f * f + 4 * delta ** 2 * np.sqrt(p) * f + p * delta ** 3) \
                + own * f ** 4
            what = "sum of fourth powers differs from ‖aᵀa‖²"
        return self._first_over(indexes, residual, bound, what)

    def spectrum_norms(self, indexes: np.ndarray, norms: np.ndarray) -> Invalid | None:
        """The norm of the eigenvalues or singular values is ‖a‖_F: every item, O(n²)."""
        a, s, n = self._spectrum_inputs(indexes)
        f = _fro(a)
        p = min(a.shape[-2:])
        with np.errstate(all="ignore"):
            residual = np.abs(norms / s.reshape(-1) - f)
        return self._first_over(indexes, residual, np.sqrt(p) * self.tau * n * f, "norm differs from ‖a‖_F")

    # -- every item: an installed operation's own check --------------------------------------

    def declared(self, op: Operation, indexes: np.ndarray, values: np.ndarray) -> Invalid | None:
        """The check an installed operation declares, on the items marked ok."""
        # Copies: a plugin's check may write to what it is given.
        inputs = {name: self._input(name, indexes).copy() for name in self.task.inputs}
        try:
            with np.errstate(all="ignore"):
                passed = np.asarray(op.check(inputs, values.astype(np.float64), self.tau), dtype=bool)  # type: ignore[operator]
        except Exception as exc:  # the plugin's own bug: its results cannot be trusted
            return Invalid(f"{op.name}'s check raised {exc!r}", self.tolerance)
        if passed.shape != indexes.shape:
            return Invalid(f"{op.name}'s check gave {passed.shape} verdicts for {indexes.size} items")
        if not passed.all():
            return Invalid(f"item {self.start + int(indexes[np.flatnonzero(~passed)[0]])}: {op.name} check failed",
                           self.tolerance)
        return None

    # -- items reported failed ------------------------------------------------------------

    def failures(self, ok: np.ndarray) -> Invalid | None:
        """A sample of the items reported failed must fail for numpy too, or be ill-conditioned."""
        failed = np.flatnonzero(~ok)
        for offset in _rng.choice(failed, size=min(DEFAULT_FAILED_SAMPLE, failed.size), replace=False):
            if not self._may_fail(int(offset)):
                return Invalid(f"item {self.start + int(offset)}: reported failed but it computes")
        return None

    def _may_fail(self, offset: int) -> bool:
        item = self._item(offset)
        dtype = self.task.result_dtype
        try:
            with np.errstate(all="ignore"):
                in_dtype = _reference(self.task.operation, {k: v.astype(dtype) for k, v in item.items()})
                if not np.all(np.isfinite(in_dtype)):
                    return True
                if self._near_overflow({k: v.astype(np.float64) for k, v in item.items()}, dtype):
                    return True
                a = item["a"].astype(np.float64) if "a" in item else np.empty((0, 1))
                if a.shape[-1] == a.shape[-2] and self.task.operation != "matmul":
                    return bool(np.linalg.cond(a / _item_scale(a)) > MAY_FAIL_COND[dtype.name])
        except np.linalg.LinAlgError:
            return True
        return False

    def _near_overflow(self, item: dict[str, np.ndarray], dtype: np.dtype) -> bool:
        """The true result comes within a factor 10⁶ of the dtype's largest number: any kernel may overflow."""
        limit = np.log(np.finfo(dtype).max) - np.log(1e6)
        if self.task.operation == "det":
            return bool(np.linalg.slogdet(item["a"])[1] > limit)
        return bool(np.log(np.max(np.abs(_reference(self.task.operation, item)), initial=0.0)) > limit)

    # -- one item computed again ------------------------------------------------------------

    def recompute(self, offset: int, value: np.ndarray) -> Invalid | None:
        """Compare with a float64 recomputation, within the forward error bound of the operation."""
        op, full = self.task.operation, self.task.return_mode == "full"
        item = {name: array.astype(np.float64, copy=False) for name, array in self._item(offset).items()}
        if op not in TOLERANCES:
            return self._recompute_declared(offset, item, value, full)
        a = item["a"]
        sa = _item_scale(a)
        a = a / sa
        n = a.shape[-1]
        v = float(value) if not full else value
        try:
            with np.errstate(all="ignore"):
                if op == "det":
                    return self._det(offset, a, sa, float(v) if full else abs(float(v)), signed=full)
                if op in ("invert", "solve"):
                    f, inverse = _fro(a[None])[0], np.linalg.inv(a)
                    rho = self.tau * n * f * _fro(inverse[None])[0]
                    if not rho < 0.5:
                        return None  # too ill-conditioned for any norm to be wrong by a provable margin
                    if op == "invert":
                        want, got = _fro(inverse[None])[0], v * sa
                    else:
                        b = item["b"]
                        sb = _item_scale(b)
                        want, got = np.linalg.norm(np.linalg.solve(a, b / sb)), v * (sa / sb)
                    bound = rho / (1 - rho) * want
                else:  # matmul
                    b = item["b"]
                    sb = _item_scale(b)
                    b = b / sb
                    want, got = np.linalg.norm(a @ b), (v / sa) / sb
                    bound = self.tau * a.shape[-1] * np.linalg.norm(a) * np.linalg.norm(b)
        except np.linalg.LinAlgError:
            return None  # singular in float64: nothing to compare with
        if not abs(got - want) <= bound:
            return self._fail(offset, "norm differs from its recomputation", abs(got - want), bound)
        return None

    def _recompute_declared(self, offset: int, item: dict[str, np.ndarray], value: np.ndarray,
                            full: bool) -> Invalid | None:
        """An installed operation: within its tolerance of a float64 recomputation, relative to the largest value."""
        try:
            with np.errstate(all="ignore"):
                want = np.asarray(_reference(self.task.operation, item), dtype=np.float64)
        except np.linalg.LinAlgError:
            return None  # fails in float64: nothing to compare with
        if not np.all(np.isfinite(want)):
            return None
        if not full:
            want = np.asarray(np.linalg.norm(want))
        got = np.asarray(value, dtype=np.float64)
        bound = self.tau * max(float(np.max(np.abs(want), initial=0.0)), float(np.finfo(np.float64).tiny))
        residual = float(np.max(np.abs(got - want), initial=0.0)) if got.shape == want.shape else np.inf
        if not residual <= bound:
            return self._fail(offset, "differs from its recomputation", residual, bound)
        return None

    def _det(self, offset: int, a: np.ndarray, sa: float, v: float, *, signed: bool) -> Invalid | None:
        """log|det| lies in [Σ log(σᵢ − δ), Σ log(σᵢ + δ)] (Weyl); the sign is fixed while σ_min > δ."""
        n = a.shape[-1]
        sigma = np.linalg.svd(a, compute_uv=False)
        delta = self.tau * n * math.sqrt(float(np.vdot(a, a)))  # ‖a‖_F
        log_scale = n * math.log(sa)
        # Sums of n logs in scalar math: numpy's sum of a few numbers costs more than the logs.
        high = math.fsum(np.log(sigma + delta).tolist()) + log_scale
        low = math.fsum(np.log(np.maximum(sigma - delta, 0.0)).tolist()) + log_scale  # -inf when it may be 0
        tiny = _log_tiny(self.task.result_dtype)
        if v == 0.0:
            if low <= tiny:
                return None
            return self._fail(offset, "0 where |det| ≥ exp(low)", 0.0, low)
        got = math.log(abs(v))
        if not low - 1e-12 <= got <= high + 1e-12:
            return self._fail(offset, "log|det| outside its bound", got, high if got > high else low)
        if signed and sigma[-1] > delta:
            sign, _ = np.linalg.slogdet(a)
            if math.copysign(1.0, v) != sign:
                return Invalid(f"item {self.start + offset}: det has the wrong sign", self.tolerance)
        return None


@cache
def _log_tiny(dtype: np.dtype) -> float:
    """log of the dtype's smallest normal number: a |det| below it may round to 0."""
    return math.log(float(np.finfo(dtype).tiny))


def _reference(operation: str, item: dict[str, np.ndarray]) -> np.ndarray:
    """One item computed with the operation's kernel (as a batch of one)."""
    return OPERATIONS[operation].kernel({name: value[None] for name, value in item.items()})[0]
