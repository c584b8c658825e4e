"""The kernels agree with numpy item by item, contain per-item failures and keep the dtype."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nodes.kernels import compute
from protocol.operations import OPERATIONS
from protocol.taskfile import load_task_file

SAMPLES = Path(__file__).resolve().parent.parent / "sample_tasks"

# One item at a time, the plain numpy way; b of solve is a vector here, which numpy reads right.
REFERENCE: dict[str, Callable[..., np.ndarray]] = {
    "invert": np.linalg.inv,
    "det": np.linalg.det,
    "solve": np.linalg.solve,
    "matmul": np.matmul,
    "eigvalsh": np.linalg.eigvalsh,
    "svdvals": lambda a: np.linalg.svd(a, compute_uv=False),
}

# float32 results come from float32 LAPACK; compare them with float64 results of the same
# float32 inputs, at a tolerance float32 can meet on these well-conditioned items.
TOLERANCE = {np.float64: 1e-9, np.float32: 2e-3}


def _chunk(operation: str, dtype: type, count: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 5
    # Diagonally dominant a: well conditioned, so float32 tolerances stay meaningful.
    a = rng.standard_normal((count, n, n)) + 4 * n * np.eye(n)
    inputs = {
        "invert": {"a": a},
        "det": {"a": a},
        "solve": {"a": a, "b": rng.standard_normal((count, n))},
        "matmul": {"a": rng.standard_normal((count, n, 3)), "b": rng.standard_normal((count, 3, 4))},
        "eigvalsh": {"a": a + np.swapaxes(a, 1, 2)},
        "svdvals": {"a": rng.standard_normal((count, n, 3))},
    }[operation]
    return {name: array.astype(dtype) for name, array in inputs.items()}


def _reference(operation: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    count = len(next(iter(inputs.values())))
    as64 = {name: array.astype(np.float64) for name, array in inputs.items()}
    return np.stack(
        [REFERENCE[operation](*(as64[n][i] for n in OPERATIONS[operation].inputs)) for i in range(count)]
    )


def test_the_six_built_in_operations_are_registered() -> None:
    assert OPERATIONS.builtin_names() == ("invert", "det", "solve", "matmul", "eigvalsh", "svdvals")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("operation", sorted(OPERATIONS.builtin_names()))
def test_each_operation_matches_numpy_item_by_item(operation: str, dtype: type) -> None:
    inputs = _chunk(operation, dtype)
    out = compute(operation, inputs, "full")
    assert out.norms is None
    assert out.ok.dtype == np.bool_ and out.ok.all()
    assert out.result.dtype == dtype
    want = _reference(operation, inputs)
    assert out.result.shape == want.shape
    tolerance = TOLERANCE[dtype]
    np.testing.assert_allclose(out.result, want, rtol=tolerance, atol=tolerance * np.abs(want).max())


def test_solve_with_matrices_for_b() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 4, 4)) + 8 * np.eye(4)
    b = rng.standard_normal((6, 4, 3))
    out = compute("solve", {"a": a, "b": b}, "full")
    assert out.result.shape == (6, 4, 3)
    for i in range(6):
        np.testing.assert_allclose(a[i] @ out.result[i], b[i], atol=1e-12)


def test_solve_with_vectors_for_b_when_items_equal_n() -> None:
    # b of shape (k, n) with k == n is where numpy 2 would read b as one matrix.
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4, 4)) + 8 * np.eye(4)
    b = rng.standard_normal((4, 4))
    out = compute("solve", {"a": a, "b": b}, "full")
    for i in range(4):
        np.testing.assert_allclose(a[i] @ out.result[i], b[i], atol=1e-12)


@pytest.mark.parametrize("operation", ["invert", "solve"])
def test_a_singular_item_fails_alone(operation: str) -> None:
    inputs = {name: array.copy() for name, array in _chunk(operation, np.float64, count=8).items()}
    inputs["a"][3] = [[1, 2, 3, 4, 5]] * 5  # rank 1: LAPACK finds an exact zero pivot
    with pytest.raises(np.linalg.LinAlgError):
        REFERENCE[operation](*(inputs[n][3] for n in OPERATIONS[operation].inputs))
    out = compute(operation, inputs, "full")
    assert out.ok.tolist() == [True, True, True, False, True, True, True, True]
    assert np.isnan(out.result[3]).all()
    keep = out.ok
    np.testing.assert_allclose(
        out.result[keep], _reference(operation, {k: v[keep] for k, v in inputs.items()})
    )


def test_a_chunk_of_only_singular_items_is_all_nan_with_the_right_shape() -> None:
    out = compute("invert", {"a": np.zeros((3, 4, 4), np.float32)}, "full")
    assert not out.ok.any()
    assert out.result.shape == (3, 4, 4) and out.result.dtype == np.float32
    assert np.isnan(out.result).all()


def test_non_finite_results_are_failed_items() -> None:
    a = np.stack([np.eye(3), np.eye(3) * 1e200, np.eye(3)])
    a[2, 0, 0] = np.nan
    out = compute("det", {"a": a}, "full")  # det of 1e200·I overflows to inf
    assert out.ok.tolist() == [True, False, False]
    assert out.result[0] == 1.0 and np.isnan(out.result[1:]).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("operation", sorted(OPERATIONS.builtin_names()))
def test_norms_are_the_frobenius_norms_of_the_full_results(operation: str, dtype: type) -> None:
    inputs = _chunk(operation, dtype, count=7)
    full = compute(operation, inputs, "full").result
    out = compute(operation, inputs, "norms")
    assert out.result is None
    assert out.norms.dtype == np.float64 and out.norms.shape == (7,)
    want = [np.linalg.norm(np.atleast_1d(item).astype(np.float64)) for item in full]
    np.testing.assert_allclose(out.norms, want, rtol=1e-12)


def test_norms_of_failed_items_are_nan_and_scalars_give_their_absolute_value() -> None:
    a = np.stack([np.diag([-2.0, 3.0]), np.zeros((2, 2))])
    out = compute("det", {"a": a}, "norms")
    assert out.norms[0] == 6.0
    out = compute("invert", {"a": a}, "norms")
    assert out.ok.tolist() == [True, False]
    assert np.isnan(out.norms[1])


def test_an_empty_chunk_gives_empty_outputs_of_the_right_shape() -> None:
    out = compute("matmul", {"a": np.empty((0, 2, 3)), "b": np.empty((0, 3, 5))}, "full")
    assert out.ok.shape == (0,) and out.result.shape == (0, 2, 5)
    assert compute("det", {"a": np.empty((0, 2, 2))}, "norms").norms.shape == (0,)


def test_mixed_dtypes_give_float64() -> None:
    inputs = _chunk("matmul", np.float32)
    inputs["b"] = inputs["b"].astype(np.float64)
    assert compute("matmul", inputs, "full").result.dtype == np.float64


@pytest.mark.parametrize(
    "operation, inputs, mode, fragment",
    [
        ("exec", {"a": np.eye(2)[None]}, "full", "unknown operation"),
        ("invert", {"a": np.eye(2)[None]}, "all", "unknown return mode"),
        ("invert", {"b": np.eye(2)[None]}, "full", "takes inputs"),
        ("matmul", {"a": np.ones((2, 2, 2)), "b": np.ones((3, 2, 2))}, "full", "same number of items"),
        ("invert", {"a": np.ones((2, 2, 3))}, "full", "square"),
    ],
)
def test_bad_calls_raise_value_error(operation: str, inputs: dict, mode: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        compute(operation, inputs, mode)


@pytest.mark.parametrize(
    "path", sorted(p for p in SAMPLES.glob("*.json") if p.name != "invert-large.json"), ids=lambda p: p.name
)
def test_sample_tasks_compute_right_in_one_chunk(path: Path) -> None:
    task = load_task_file(path)
    inputs = {name: task.input_items(name, 0, task.count) for name in task.inputs}
    out = compute(task.operation, inputs, "full")
    assert out.result.shape == (task.count, *task.result_item_shape)
    assert out.result.dtype == task.result_dtype
    if task.name == "invert-inline":
        assert out.ok.tolist() == [True, False, True]  # its second matrix is singular, on purpose
    else:
        assert out.ok.all()
    tolerance = TOLERANCE[task.result_dtype.type]
    for i in np.flatnonzero(out.ok)[:20]:
        want = REFERENCE[task.operation](
            *(inputs[n][i].astype(np.float64) for n in OPERATIONS[task.operation].inputs)
        )
        np.testing.assert_allclose(out.result[i], want, rtol=tolerance, atol=tolerance * np.abs(want).max())
