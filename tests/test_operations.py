"""The shape rules of the whitelisted operations, table-driven, and their result shapes."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.operations import OPERATIONS, ShapeProblem, result_dtype

FITTING = [
    ("invert", {"a": (3, 3)}, (3, 3)),
    ("det", {"a": (4, 4)}, ()),
    ("solve", {"a": (4, 4), "b": (4,)}, (4,)),
    ("solve", {"a": (4, 4), "b": (4, 2)}, (4, 2)),
    ("matmul", {"a": (2, 3), "b": (3, 5)}, (2, 5)),
    ("eigvalsh", {"a": (6, 6)}, (6,)),
    ("svdvals", {"a": (7, 3)}, (3,)),
    ("svdvals", {"a": (2, 9)}, (2,)),
]

NOT_FITTING = [
    ("invert", {"a": (3, 4)}, "a", "invert needs square matrices, got [3, 4]"),
    ("invert", {"a": (3,)}, "a", "invert needs square matrices, got [3]"),
    ("det", {"a": (2, 2, 2)}, "a", "det needs square matrices, got [2, 2, 2]"),
    ("eigvalsh", {"a": (2, 3)}, "a", "eigvalsh needs square matrices, got [2, 3]"),
    ("svdvals", {"a": (5,)}, "a", "svdvals needs matrices (2-D items), got [5]"),
    ("solve", {"a": (4, 3), "b": (4,)}, "a", "solve needs a to be square matrices, got [4, 3]"),
    (
        "solve",
        {"a": (4, 4), "b": (3,)},
        "b",
        "solve needs b to be a vector of length 4 or a matrix with 4 rows",
    ),
    ("solve", {"a": (4, 4), "b": (3, 2)}, "b", "to match a (4 by 4), got [3, 2]"),
    ("solve", {"a": (4, 4), "b": (4, 2, 2)}, "b", "solve needs b to be vectors or matrices"),
    (
        "matmul",
        {"a": (2, 3), "b": (4, 5)},
        "b",
        "matmul needs b to have 3 rows to match the 3 columns of a, got [4, 5]",
    ),
    ("matmul", {"a": (2,), "b": (2, 5)}, "a", "matmul needs a to be matrices (2-D items), got [2]"),
    ("matmul", {"a": (2, 2), "b": (2,)}, "b", "matmul needs b to be matrices (2-D items), got [2]"),
]


@pytest.mark.parametrize("operation, shapes, result", FITTING)
def test_fitting_shapes_give_the_result_shape(operation: str, shapes: dict, result: tuple) -> None:
    spec = OPERATIONS[operation]
    assert spec.check_shapes(shapes) == []
    assert spec.result_item_shape(shapes) == result


@pytest.mark.parametrize("operation, shapes, blamed, message", NOT_FITTING)
def test_shapes_that_do_not_fit_are_explained(
    operation: str, shapes: dict, blamed: str, message: str
) -> None:
    spec = OPERATIONS[operation]
    [problem] = spec.check_shapes(shapes)
    assert isinstance(problem, ShapeProblem)
    assert problem.input == blamed
    assert message in str(problem)
    with pytest.raises(ValueError, match="needs"):
        spec.result_item_shape(shapes)


def test_both_inputs_of_matmul_can_be_wrong_at_once() -> None:
    problems = OPERATIONS["matmul"].check_shapes({"a": (2,), "b": (2, 2, 2)})
    assert [problem.input for problem in problems] == ["a", "b"]


def test_every_operation_names_its_inputs_and_only_eigvalsh_needs_symmetry() -> None:
    builtins = {name: OPERATIONS[name] for name in OPERATIONS.builtin_names()}
    assert {name: spec.inputs for name, spec in builtins.items()} == {
        "invert": ("a",),
        "det": ("a",),
        "solve": ("a", "b"),
        "matmul": ("a", "b"),
        "eigvalsh": ("a",),
        "svdvals": ("a",),
    }
    assert [name for name, spec in builtins.items() if spec.symmetric_inputs] == ["eigvalsh"]


def test_a_missing_input_is_a_caller_bug() -> None:
    with pytest.raises(KeyError):
        OPERATIONS["solve"].check_shapes({"a": (2, 2)})


RESULT_DTYPES = [
    (["float32"], np.float32),
    (["float32", "float32"], np.float32),
    (["float32", "float64"], np.float64),
    (["float64"], np.float64),
    ([np.dtype("<f4"), np.dtype(">f4")], np.float32),
    (["int64"], np.float64),
    (["uint8", "float32"], np.float64),
]


@pytest.mark.parametrize("inputs,expected", RESULT_DTYPES)
def test_the_result_dtype_is_float32_only_when_every_input_is(inputs: list, expected: type) -> None:
    assert result_dtype(inputs) == np.dtype(expected)


def test_task_chunk_and_kernel_agree_on_the_result_dtype() -> None:
    """The task, a link's view of an assigned chunk and the kernel all follow the one rule."""
    from nodes.kernels import compute
    from protocol.messages import Assign
    from protocol.taskfile import parse_task
    from protocol.verify import AssignedChunk

    for a_dtype, b_dtype in (("float32", "float32"), ("float32", "float64"), ("float64", "float64")):
        task = parse_task({"operation": "matmul", "inputs": {
            "a": {"generate": {"count": 2, "shape": [3, 3], "seed": 1, "dtype": a_dtype}},
            "b": {"generate": {"count": 2, "shape": [3, 1], "seed": 2, "dtype": b_dtype}}}})
        a, b = (task.inputs[name].items(0, 2) for name in "ab")
        assign = Assign("t1", 0, 1, "matmul", 0, 2, "full", {"a": task.inputs["a"].to_spec()}, {"b": b})
        out = compute("matmul", {"a": a, "b": b}, "full")
        expected = np.float32 if b_dtype == a_dtype == "float32" else np.float64
        assert task.result_dtype == AssignedChunk(assign).result_dtype == out.result.dtype == expected


def test_the_documented_operations_table_is_the_registry() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "task-files.md").read_text(encoding="utf-8")
    table = text.split("<!-- operations -->")[1].strip().splitlines()[2:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    documented = {row[0].strip("`"): row[3] for row in rows}
    assert list(documented) == list(OPERATIONS.builtin_names())
    for name, replicated in documented.items():
        want = ", ".join(f"`{mode}`" for mode in OPERATIONS[name].replicated) or "—"
        assert replicated == want, name
