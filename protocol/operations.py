"""The registry of operations a task may ask for: the six built-ins and installed ones.

Only the operations in ``OPERATIONS`` ever run (docs/security.md). Each ``Operation``
says which inputs it takes, which item shapes it accepts, the shape of one result item,
the batched numpy kernel that computes a chunk, and how its results are checked: by a
cheap check of every item, or by replication on a second node. Task files name an
operation; they never carry code.

Installed Python packages add operations through the entry-point group
``chainconsole.operations`` (docs/operations.md): each entry point names an ``Operation``
or a list of them, loaded the first time the registry is read. A plugin that fails to
load, or whose operations break the rules, is reported in ``OPERATIONS.problems`` and
left out; it never stops the others.

Shape rules speak of one item (the stacked first axis is not part of the shapes here) and
phrase their problems for a person: ``invert needs square matrices, got [3, 4]``. The
caller knows where the shape came from and adds the field path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

Shape = tuple[int, ...]
ItemShapes = Mapping[str, Shape]
Inputs = Mapping[str, np.ndarray]
Kernel = Callable[[Inputs], np.ndarray]
"""Computes a chunk: every input's items stacked along the first axis in, the result items stacked out."""
ItemCheck = Callable[[Inputs, np.ndarray, float], np.ndarray]
"""A cheap check: the stacked inputs and result items of the items marked ok (float64 copies) and
τ, the relative error to allow (the operation's ``tolerance`` for the result's dtype, plus the
check's own float64 rounding), in; one bool per item out (True: the item is right)."""

ENTRY_POINT_GROUP = "chainconsole.operations"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")

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
class Operation:
    """One operation: its inputs, shape rules, kernel and how its results are checked."""

    name: str
    """The name a task file uses in ``operation``: lower case, digits and ``_``, at most 40."""
    inputs: tuple[str, ...]
    """The names of the inputs it takes, in order."""
    shape_rule: Callable[[ItemShapes], list[ShapeProblem]]
    """Returns the problems with the item shapes; an empty list means they fit."""
    result_rule: Callable[[ItemShapes], Shape]
    """The shape of one result item, for item shapes that fit."""
    kernel: Kernel
    """Computes a chunk. It may raise ``numpy.linalg.LinAlgError`` when one item fails: the chunk
    is then computed item by item and the failing items marked failed."""
    version: str = "1"
    """Changes when the kernel's results change; nodes report it (``chainconsole operations``)."""
    description: str = ""
    check: ItemCheck | str | None = None
    """How ``full`` results are checked: a cheap check of every item; for the built-ins, the name
    of their check in ``protocol.verify``; None: they are replicated on a second node."""
    tolerance: float = 1e-9
    """Relative error (to the item's largest value) an honest float64 result stays within: two
    results within it agree, and a recomputation judges a result with it."""
    symmetric_inputs: tuple[str, ...] = ()
    """Inputs whose items must be symmetric matrices (only their lower triangle is read)."""
    builtin: bool = field(default=False, compare=False)
    """One of the six that come with chainconsole."""
    source: str = field(default="chainconsole", compare=False)
    """The distribution that provides it."""

    @property
    def replicated(self) -> tuple[str, ...]:
        """The return modes whose results a second node confirms: those with no cheap check."""
        if self.builtin:
            return _BUILTIN_REPLICATED.get(self.name, ())
        return RETURN_MODES if self.check is None else ("norms",)

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


def _solve(inputs: Inputs) -> np.ndarray:
    a, b = inputs["a"], inputs["b"]
    if b.ndim == a.ndim - 1:
        # numpy >= 2 reads a stacked b of shape (k, n) as one (k, n) matrix, not as k
        # vectors; make each vector an n×1 matrix and drop that axis again.
        return np.linalg.solve(a, b[..., None])[..., 0]
    return np.linalg.solve(a, b)


_BUILTIN_REPLICATED = {"det": RETURN_MODES, "invert": ("norms",), "solve": ("norms",), "matmul": ("norms",)}
"""Built-in results with no check cheaper than computing them again."""

BUILTINS: tuple[Operation, ...] = (
    Operation("invert", ("a",), _square_a("invert"), lambda s: s["a"], lambda x: np.linalg.inv(x["a"]),
              description="the inverse of each square matrix", check="freivalds", builtin=True),
    Operation("det", ("a",), _square_a("det"), lambda s: (), lambda x: np.linalg.det(x["a"]),
              description="the determinant of each square matrix", check="recompute", builtin=True),
    Operation("solve", ("a", "b"), _solve_rule, lambda s: s["b"], _solve,
              description="x with a·x = b, for each pair", check="freivalds", builtin=True),
    Operation("matmul", ("a", "b"), _matmul_rule, lambda s: (s["a"][0], s["b"][1]),
              lambda x: np.matmul(x["a"], x["b"]), description="a·b, for each pair", check="freivalds",
              builtin=True),
    Operation("eigvalsh", ("a",), _square_a("eigvalsh"), lambda s: (s["a"][0],),
              lambda x: np.linalg.eigvalsh(x["a"]), description="the eigenvalues of each symmetric matrix, ascending",
              check="spectrum", symmetric_inputs=("a",), builtin=True),
    # svd(compute_uv=False) rather than svdvals, which only numpy >= 2 has.
    Operation("svdvals", ("a",), _svdvals_rule, lambda s: (min(s["a"]),),
              lambda x: np.linalg.svd(x["a"], compute_uv=False),
              description="the singular values of each matrix, descending", check="spectrum", builtin=True),
)


class Registry(Mapping[str, Operation]):
    """Operations by name: the built-ins, then what installed packages add (loaded on first use)."""

    def __init__(self, builtins: Iterable[Operation]) -> None:
        self._operations = {op.name: op for op in builtins}
        self._loaded = False
        self.problems: list[str] = []
        """Why an installed plugin, or one of its operations, was left out."""

    def _load(self) -> dict[str, Operation]:
        if not self._loaded:
            self._loaded = True
            self.load_installed()
        return self._operations

    def load_installed(self) -> None:
        """Read the ``chainconsole.operations`` entry points (again): new operations join the registry."""
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = entry.dist.name if entry.dist is not None else entry.value
            try:
                loaded = entry.load()
            except Exception as exc:  # a broken plugin is reported, never fatal
                self.problems.append(f"{source}: cannot load {entry.value}: {exc}")
                continue
            for op in loaded if isinstance(loaded, (list, tuple)) else [loaded]:
                self.add(op, source=source)

    def add(self, op: object, *, source: str = "") -> None:
        """Add one installed operation; a wrong or clashing one goes to ``problems`` instead."""
        problem = _problem_with(op)
        if problem is None and op.name in self._operations and self._operations[op.name] != op:  # type: ignore[attr-defined]
            problem = f"{op.name} is already defined by {self._operations[op.name].source}"  # type: ignore[attr-defined]
        if problem is not None:
            self.problems.append(f"{source}: {problem}")
            return
        assert isinstance(op, Operation)
        if op.name not in self._operations:
            self._operations[op.name] = Operation(**{**op.__dict__, "builtin": False, "source": source or op.source})

    def builtin_names(self) -> tuple[str, ...]:
        return tuple(name for name, op in self._operations.items() if op.builtin)

    def __getitem__(self, name: str) -> Operation:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def _problem_with(op: object) -> str | None:
    if not isinstance(op, Operation):
        return f"{op!r} is not a chainconsole Operation"
    if not NAME_PATTERN.fullmatch(op.name):
        return f"{op.name!r} is not an operation name (lower case letters, digits, _; at most 40)"
    if not op.inputs or any(not NAME_PATTERN.fullmatch(name) for name in op.inputs):
        return f"{op.name}: inputs must be one or more names, got {op.inputs!r}"
    if not callable(op.kernel) or not (op.check is None or callable(op.check)):
        return f"{op.name}: kernel and check must be functions"
    if not (0 < op.tolerance < 1):
        return f"{op.name}: tolerance must be between 0 and 1, got {op.tolerance}"
    return None


OPERATIONS = Registry(BUILTINS)
"""Every operation a task may ask for, by name."""


def describe(op: Operation) -> dict[str, object]:
    """An operation as ``chainconsole operations --json`` shows it."""
    check = op.check if isinstance(op.check, str) else ("its own" if op.check is not None else "replicas")
    return {"name": op.name, "version": op.version, "source": op.source, "builtin": op.builtin,
            "inputs": list(op.inputs), "description": op.description, "check": check,
            "replicated": list(op.replicated)}


def installed_operations() -> dict[str, str | float]:
    """The installed (not built-in) operations, with their versions, as a node's hello says them."""
    return {name: op.version for name, op in OPERATIONS.items() if not op.builtin}
