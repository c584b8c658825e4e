"""The whitelist of operations a task may ask for, as data: inputs and shape rules.

Only the operations listed in OPERATIONS ever run (docs/security.md). Each entry
says which inputs it takes, which item shapes it accepts and the shape of one result item.
The numpy kernels that compute them live in ``nodes/kernels.py``; a test keeps the two
lists equal.

Shape rules speak of one item (the stacked first axis is not part of the shapes here) and
phrase their problems for a person: ``invert needs square matrices, got [3, 4]``. The
caller knows where the shape came from and adds the field path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

Shape = tuple[int, ...]
ItemShapes = Mapping[str, Shape]

RETURN_MODES: tuple[str, ...] = ("full", "norms")
"""How a task hands results back: ``full`` result items, or only the ``norms`` of each item."""


def result_dtype(input_dtypes: Iterable[np.dtype | type | str]) -> np.dtype:
    """The element type of every operation's results: float32 when every input is float32, else float64.

    ``norms`` are always float64, whatever this says; it is the type of ``full`` results.
    """
    return np.dtype(np.float32 if all(np.dtype(t).type is np.float32 for t in input_dtypes) else np.float64)


@dataclass(frozen=True)
class ShapeProblem:
    """One reason why the item shapes do not fit an operation, and the input it concerns."""

    input: str
    """The input whose shape is wrong (for a mismatch between inputs: the later one)."""
    message: str
    """The problem, phrased without a field path."""

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class OperationSpec:
    """One whitelisted operation: its inputs, its shape rule and its result shape."""

    name: str
    """The name a task file uses in ``operation``."""
    inputs: tuple[str, ...]
    """The names of the inputs it takes, in order."""
    shape_rule: Callable[[ItemShapes], list[ShapeProblem]]
    """Returns the problems with the item shapes; an empty list means they fit."""
    result_rule: Callable[[ItemShapes], Shape]
    """The shape of one result item, for item shapes that fit."""
    symmetric_inputs: tuple[str, ...] = ()
    """Inputs whose items must be symmetric matrices (only their lower triangle is read)."""

    def check_shapes(self, item_shapes: ItemShapes) -> list[ShapeProblem]:
        """Return the problems with these item shapes (one entry per input named)."""
        missing = [name for name in self.inputs if name not in item_shapes]
        if missing:
            raise KeyError(f"{self.name} takes inputs {list(self.inputs)}, missing {missing}")
        return self.shape_rule(item_shapes)

    def result_item_shape(self, item_shapes: ItemShapes) -> Shape:
        """Return the shape of one result item; ``()`` for a scalar. ValueError if they do not fit."""
        problems = self.check_shapes(item_shapes)
        if problems:
            raise ValueError("; ".join(problem.message for problem in problems))
        return self.result_rule(item_shapes)


def _is_square(shape: Shape) -> bool:
    return len(shape) == 2 and shape[0] == shape[1]


def _square_a(operation: str) -> Callable[[ItemShapes], list[ShapeProblem]]:
    def rule(shapes: ItemShapes) -> list[ShapeProblem]:
        if _is_square(shapes["a"]):
            return []
        return [ShapeProblem("a", f"{operation} needs square matrices, got {list(shapes['a'])}")]

    return rule


def _svdvals_rule(shapes: ItemShapes) -> list[ShapeProblem]:
    if len(shapes["a"]) == 2:
        return []
    return [ShapeProblem("a", f"svdvals needs matrices (2-D items), got {list(shapes['a'])}")]


def _solve_rule(shapes: ItemShapes) -> list[ShapeProblem]:
    a, b = shapes["a"], shapes["b"]
    problems = []
    if not _is_square(a):
        problems.append(ShapeProblem("a", f"solve needs a to be square matrices, got {list(a)}"))
    if len(b) not in (1, 2):
        problems.append(
            ShapeProblem("b", f"solve needs b to be vectors or matrices (1-D or 2-D items), got {list(b)}")
        )
    elif _is_square(a) and b[0] != a[0]:
        n = a[0]
        problems.append(
            ShapeProblem(
                "b",
                f"solve needs b to be a vector of length {n} or a matrix with {n} rows "
                f"to match a ({n} by {n}), got {list(b)}",
            )
        )
    return problems


def _matmul_rule(shapes: ItemShapes) -> list[ShapeProblem]:
    a, b = shapes["a"], shapes["b"]
    problems = [
        ShapeProblem(name, f"matmul needs {name} to be matrices (2-D items), got {list(shape)}")
        for name, shape in (("a", a), ("b", b))
        if len(shape) != 2
    ]
    if not problems and b[0] != a[1]:
        problems.append(
            ShapeProblem(
                "b", f"matmul needs b to have {a[1]} rows to match the {a[1]} columns of a, got {list(b)}"
            )
        )
    return problems


OPERATIONS: dict[str, OperationSpec] = {
    spec.name: spec
    for spec in (
        OperationSpec(
            name="invert",
            inputs=("a",),
            shape_rule=_square_a("invert"),
            result_rule=lambda s: s["a"],
        ),
        OperationSpec(
            name="det",
            inputs=("a",),
            shape_rule=_square_a("det"),
            result_rule=lambda s: (),
        ),
        OperationSpec(
            name="solve",
            inputs=("a", "b"),
            shape_rule=_solve_rule,
            result_rule=lambda s: s["b"],
        ),
        OperationSpec(
            name="matmul",
            inputs=("a", "b"),
            shape_rule=_matmul_rule,
            result_rule=lambda s: (s["a"][0], s["b"][1]),
        ),
        OperationSpec(
            name="eigvalsh",
            inputs=("a",),
            shape_rule=_square_a("eigvalsh"),
            result_rule=lambda s: (s["a"][0],),
            symmetric_inputs=("a",),
        ),
        OperationSpec(
            name="svdvals",
            inputs=("a",),
            shape_rule=_svdvals_rule,
            result_rule=lambda s: (min(s["a"]),),
        ),
    )
}
"""Every operation a task may ask for, by name."""
