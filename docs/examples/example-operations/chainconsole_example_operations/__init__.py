"""Two chainconsole operations, as a site would add its own kernels.

- ``cholesky``: the lower-triangular L with L·Lᵀ = a, for each symmetric positive
  definite matrix a. It has a cheap check of every item (Freivalds: L(Lᵀr) ≈ a·r for
  random vectors r, O(n²) instead of the O(n³) factorisation), so its results are not
  replicated.
- ``logdet``: [sign, log|det a|] for each square matrix. Nothing checks that more cheaply
  than computing it again, so it declares no check: a second node confirms its results.
"""

from __future__ import annotations

import numpy as np

from protocol.operations import Operation, ShapeProblem

_rng = np.random.default_rng()


def _square(name: str):
    def rule(shapes):
        a = shapes["a"]
        if len(a) == 2 and a[0] == a[1]:
            return []
        return [ShapeProblem("a", f"{name} needs square matrices, got {list(a)}")]

    return rule


def _cholesky(inputs):
    # numpy factorises the whole stack at once; a matrix that is not positive definite makes
    # it raise LinAlgError, and chainconsole then computes the chunk item by item.
    return np.linalg.cholesky(inputs["a"])


def _check_cholesky(inputs, values, tau):
    """Every item: L is lower triangular and L(Lᵀr) ≈ a·r, within τ·n·(‖a‖ + ‖L‖²)·‖r‖."""
    a, lower = inputs["a"], values
    n = a.shape[-1]
    upper_zero = np.all(np.triu(lower, 1) == 0, axis=(1, 2))
    r = _rng.standard_normal((len(a), n, 2))
    residual = np.linalg.norm((lower @ (np.swapaxes(lower, 1, 2) @ r) - a @ r).reshape(len(a), -1), axis=1)
    size = np.linalg.norm(a.reshape(len(a), -1), axis=1) + np.linalg.norm(lower.reshape(len(a), -1), axis=1) ** 2
    bound = tau * n * size * np.linalg.norm(r.reshape(len(a), -1), axis=1)
    return upper_zero & (residual <= bound)


def _logdet(inputs):
    sign, logabs = np.linalg.slogdet(inputs["a"])
    return np.stack([sign, logabs], axis=-1)


CHOLESKY = Operation(
    name="cholesky",
    inputs=("a",),
    shape_rule=_square("cholesky"),
    result_rule=lambda shapes: shapes["a"],
    kernel=_cholesky,
    version="1.0",
    description="the Cholesky factor L (a = L·Lᵀ) of each symmetric positive definite matrix",
    check=_check_cholesky,
    tolerance=1e-14,
    symmetric_inputs=("a",),
)

LOGDET = Operation(
    name="logdet",
    inputs=("a",),
    shape_rule=_square("logdet"),
    result_rule=lambda shapes: (2,),
    kernel=_logdet,
    version="1.0",
    description="[sign, log|det a|] of each square matrix",
    check=None,  # no cheap check: results are replicated on a second node
    tolerance=1e-12,
)
