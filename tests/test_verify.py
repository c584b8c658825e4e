"""Result checks: honest results on hostile inputs are never blamed; lies are caught.

Honest results come from the project's own kernels (``nodes.kernels.compute``); the
checks run with every sample and every recomputation turned on, so a bound that is not
sound shows up here rather than as a quarantined node.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from nodes.kernels import compute
from protocol.messages import Result
from protocol.operations import OPERATIONS, RETURN_MODES
from protocol.taskfile import parse_task
from protocol.verify import TOLERANCES, judge
from tests import fake_node

PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
EVERY = {"sample": 10_000, "recompute_fraction": 1.0}


def check_result(*args, **options) -> str:
    """Why ``judge`` refuses the result ("" when it passes)."""
    problem = judge(*args, **options)
    return "" if problem is None else problem.reason


def hilbert(count: int, n: int, shift: float = 0.0) -> np.ndarray:
    i = np.arange(n)
    h = 1.0 / (i[:, None] + i[None, :] + 1.0)
    return np.stack([h * (1 + shift * k) for k in range(count)])


def symmetric(count: int, n: int, scale: float, seed: int = 1, dtype: str = "float64") -> np.ndarray:
    m = np.random.default_rng(seed).standard_normal((count, n, n))
    return ((m + np.swapaxes(m, 1, 2)) / 2 * scale).astype(dtype)


def honest(task, start: int = 0, stop: int | None = None) -> Result:
    stop = task.count if stop is None else stop
    inputs = {name: np.asarray(task.input_items(name, start, stop)) for name in task.inputs}
    out = compute(task.operation, inputs, task.return_mode)
    return Result("t1", 0, 1, out.ok, out.result, out.norms, 0.01)


def gen(count: int, shape: list[int], seed: int, dtype: str = "float64", distribution: str = "normal") -> dict:
    return {"count": count, "shape": shape, "seed": seed, "dtype": dtype, "distribution": distribution}


HOSTILE = {
    # float32 det of 64×64 overflows on the node: reported failed, never a lie
    "det-float32-64": ("det", {"a": gen(12, [64, 64], 1, "float32")}),
    "det-float64-8": ("det", {"a": gen(30, [8, 8], 2)}),
    "det-tiny": ("det", {"a": (np.random.default_rng(3).standard_normal((6, 16, 16)) * 1e-30)}),
    "det-hilbert": ("det", {"a": hilbert(4, 12)}),
    # inline 1e200 matrices for eigvalsh and svdvals
    "eigvalsh-1e200": ("eigvalsh", {"a": symmetric(6, 16, 1e200)}),
    "eigvalsh-1e-200": ("eigvalsh", {"a": symmetric(6, 16, 1e-200)}),
    "eigvalsh-float32": ("eigvalsh", {"a": gen(10, [48, 48], 4, "float32", "symmetric")}),
    "svdvals-1e200": ("svdvals", {"a": np.random.default_rng(5).standard_normal((6, 12, 9)) * 1e200}),
    "svdvals-float32": ("svdvals", {"a": gen(10, [40, 30], 6, "float32")}),
    "svdvals-wide": ("svdvals", {"a": gen(10, [9, 20], 7)}),
    # ill-conditioned inversions and solves (Hilbert matrices, cond up to 1e18)
    "invert-hilbert": ("invert", {"a": np.concatenate([hilbert(3, 8, 0.1), hilbert(3, 12, 0.1)[:, :8, :8] * 3])}),
    "invert-hilbert-12": ("invert", {"a": hilbert(4, 12, 0.01)}),
    "invert-float32": ("invert", {"a": gen(10, [64, 64], 8, "float32")}),
    "invert-1e200": ("invert", {"a": np.random.default_rng(9).standard_normal((5, 10, 10)) * 1e200}),
    "invert-1e-200": ("invert", {"a": np.random.default_rng(9).standard_normal((5, 10, 10)) * 1e-200}),
    "solve-hilbert": ("solve", {"a": hilbert(4, 12, 0.01), "b": np.ones((4, 12))}),
    "solve-float32": ("solve", {"a": gen(10, [64, 64], 10, "float32"), "b": gen(10, [64, 3], 11, "float32")}),
    "solve-1e200": ("solve", {"a": np.random.default_rng(12).standard_normal((5, 10, 10)) * 1e200,
                              "b": np.random.default_rng(13).standard_normal((5, 10)) * 1e-100}),
    "matmul-1e200": ("matmul", {"a": np.random.default_rng(14).standard_normal((5, 6, 7)) * 1e200,
                                "b": np.random.default_rng(15).standard_normal((5, 7, 4)) * 1e200}),
    "matmul-float32": ("matmul", {"a": gen(10, [64, 64], 16, "float32"), "b": gen(10, [64, 64], 17, "float32")}),
    "matmul-mixed": ("matmul", {"a": np.random.default_rng(18).standard_normal((5, 6, 7)) * 1e150,
                                "b": np.random.default_rng(19).standard_normal((5, 7, 4)) * 1e-150}),
    "singular": ("invert", {"a": np.stack([np.ones((5, 5)), np.eye(5)])}),
}


def build(name: str, mode: str):
    operation, inputs = HOSTILE[name]
    spec = {}
    for input_name, value in inputs.items():
        spec[input_name] = {"generate": value} if isinstance(value, dict) else {"inline": value.tolist()}
    return parse_task({"operation": operation, "return": mode, "inputs": spec})


@pytest.mark.parametrize("mode", RETURN_MODES)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_an_honest_result_is_never_blamed(name: str, mode: str) -> None:
    task = build(name, mode)
    result = honest(task)
    for _ in range(5):  # the checks draw random vectors and samples: try several
        assert judge(task, 0, task.count, result, **EVERY) is None


def test_the_hostile_inputs_really_are_hostile() -> None:
    """The float32 det overflows and the Hilbert inverse is ill-conditioned: the test above means something."""
    det = honest(build("det-float32-64", "full"))
    assert not det.ok.any()
    assert np.linalg.cond(hilbert(1, 12)[0]) > 1e15
    big = honest(build("eigvalsh-1e200", "full"))
    assert big.ok.all() and np.abs(big.result).max() > 1e200


# --- lies ----------------------------------------------------------------------------------

LIARS = {
    "invert": ("invert", {"a": gen(20, [32, 32], 21)}),
    "solve": ("solve", {"a": gen(20, [32, 32], 22), "b": gen(20, [32], 23)}),
    "solve-matrix": ("solve", {"a": gen(20, [32, 32], 22), "b": gen(20, [32, 4], 23)}),
    "matmul": ("matmul", {"a": gen(20, [16, 24], 24), "b": gen(20, [24, 8], 25)}),
    "eigvalsh": ("eigvalsh", {"a": gen(20, [24, 24], 26, distribution="symmetric")}),
    "svdvals": ("svdvals", {"a": gen(20, [24, 18], 27)}),
}


def lying(name: str, mode: str, tamper) -> tuple[object, Result]:
    operation, inputs = LIARS[name]
    task = parse_task({"operation": operation, "return": mode,
                       "inputs": {k: {"generate": v} for k, v in inputs.items()}})
    from protocol.messages import Assign
    assign = Assign("t1", 0, 1, operation, 0, task.count, mode, {k: v for k, v in
                    ((k, task.inputs[k].to_spec()) for k in task.inputs)}, {})
    return task, tamper(assign, honest(task))


@pytest.mark.parametrize("name", sorted(LIARS))
@pytest.mark.parametrize("tamper", [fake_node.corrupt, fake_node.one_item_per_chunk, fake_node.nan_marked_ok])
def test_every_item_is_checked_where_a_cheap_check_exists(name: str, tamper) -> None:
    task, result = lying(name, "full", tamper)
    assert check_result(task, 0, task.count, result)  # default settings: no sampling luck needed


def test_invert_scaled_by_one_plus_1e_5_is_caught() -> None:
    task, result = lying("invert", "full", fake_node.scale_invert)
    assert "invert" in check_result(task, 0, task.count, result)


@pytest.mark.parametrize("name", ["eigvalsh", "svdvals"])
def test_spectra_keeping_sum_and_sum_of_squares_are_caught(name: str) -> None:
    task, result = lying(name, "full", fake_node.keep_power_sums)
    values = result.result
    right = honest(task).result
    np.testing.assert_allclose(values.sum(axis=1), right.sum(axis=1), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose((values ** 2).sum(axis=1), (right ** 2).sum(axis=1), rtol=1e-12)
    assert np.abs(values - right).max() > 0.1
    assert check_result(task, 0, task.count, result)


@pytest.mark.parametrize("name", ["eigvalsh", "svdvals"])
def test_spectrum_norms_are_checked_on_every_item(name: str) -> None:
    task, result = lying(name, "norms", fake_node.one_item_per_chunk)
    assert check_result(task, 0, task.count, result)


def test_a_false_failure_claim_is_caught() -> None:
    task, result = lying("invert", "full", lambda assign, r: Result(
        r.task_id, r.chunk, r.attempt, np.zeros_like(r.ok), np.full_like(r.result, np.nan), None, 0.01))
    assert "reported failed" in check_result(task, 0, task.count, result)


def test_det_recomputation_catches_a_factor_of_1_4_in_float32() -> None:
    task = parse_task({"operation": "det", "inputs": {"a": {"generate": gen(10, [8, 8], 30, "float32")}}})
    result = honest(task)
    bent = Result("t1", 0, 1, result.ok, (result.result * 1.4).astype(np.float32), None, 0.01)
    assert check_result(task, 0, task.count, bent, recompute_fraction=1.0)


# --- the one table ---------------------------------------------------------------------------


def documented_tolerances() -> dict[str, dict[str, float]]:
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = text.split("<!-- tolerances -->", 2)[1]
    table = {}
    for line in section.splitlines():
        cells = [cell.strip(" `") for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in OPERATIONS:
            table[cells[0]] = {"float64": float(cells[1]), "float32": float(cells[2])}
    return table


def test_the_documented_tolerances_are_the_code_s() -> None:
    assert documented_tolerances() == TOLERANCES
    assert set(TOLERANCES) == set(OPERATIONS.builtin_names())
    assert re.search(r"\brejected\b", PROTOCOL_DOC.read_text(encoding="utf-8"))
