"""Task files: the loader, the checks of what a task means, and the validated Task.

A task file is data, never code. It is checked in two passes, and every problem is
reported as one line that names the field (``inputs.a.generate.shape: invert needs square
matrices, got [3, 4]``):

1. structure (protocol.task_schema): unknown fields, types, ranges;
2. meaning (here): the inputs the operation takes, equal counts, item shapes, symmetric
   inputs, file and inline arrays, and the limits a user may raise on purpose (TaskLimits).

The second pass runs only once the structure is right, so its checks can trust the types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from protocol import strict_json
from protocol.errors import TaskFileError
from protocol.inputs import (
    SQUARE_DISTRIBUTIONS,
    GeneratedInput,
    float_array,
    format_bytes,
    inline_array,
    load_array_file,
)
from protocol.operations import OPERATIONS, result_dtype
from protocol.task_schema import MAX_NAME_LENGTH, InputModel, task_json_schema, validate_structure

__all__ = [
    "DEFAULT_LIMITS",
    "NO_LIMITS",
    "Task",
    "TaskLimits",
    "load_task_file",
    "parse_task",
    "parse_task_text",
    "task_from_parts",
    "task_json_schema",
]

DEFAULT_MAX_ITEMS = 10_000_000
DEFAULT_MAX_ITEM_ELEMENTS = 16 * 1024 * 1024
DEFAULT_MAX_TASK_BYTES = 64 * 1024**3
MAX_CHUNK_BYTES = 256 * 1024**2
"""One chunk's inputs plus results; half the largest frame payload, so a chunk always fits."""


@dataclass(frozen=True)
class TaskLimits:
    """Size limits a task must stay within; a user raises them on purpose (``--max-items``...)."""

    max_items: int = DEFAULT_MAX_ITEMS
    """Items per task (``--max-items``)."""
    max_item_elements: int = DEFAULT_MAX_ITEM_ELEMENTS
    """Elements in one item of any input or result (``--max-item-elements``)."""
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES
    """Bytes of all inputs and results of a task together (``--max-task-bytes``)."""


DEFAULT_LIMITS = TaskLimits()
NO_LIMITS = TaskLimits(max_items=2**63 - 1, max_item_elements=2**63 - 1, max_task_bytes=2**63 - 1)
"""For tasks already accepted once (rebuilt from the journal): their limits were checked then."""


# ---------------------------------------------------------------- pass 2: meaning


def _result_nbytes(return_mode: str, elements: int, itemsize: int) -> int:
    """Bytes one item hands back: its result item, or one float64 norm."""
    return 8 if return_mode == "norms" else elements * itemsize


@dataclass(frozen=True)
class _Source:
    """A resolved input and the field path its problems are reported under."""

    data: GeneratedInput | np.ndarray
    where: str  # "inputs.a.generate", "inputs.a.file", "inputs.a.inline" or "inputs.a"

    @property
    def count(self) -> int:
        return self.data.count if isinstance(self.data, GeneratedInput) else len(self.data)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self.data.shape if isinstance(self.data, GeneratedInput) else self.data.shape[1:]

    @property
    def itemsize(self) -> int:
        return np.dtype(self.data.dtype).itemsize

    def field(self, name: str) -> str:
        """The path of a generate field (count, shape...), or the array's own path."""
        return f"{self.where}.{name}" if isinstance(self.data, GeneratedInput) else self.where


SYMMETRY_BLOCK_BYTES = 32 * 1024 * 1024
"""Input bytes checked for symmetry at once."""


def _symmetry_problem(source: _Source, operation: str) -> str | None:
    """Why the items of ``source`` are not symmetric matrices, or None when they are."""
    if isinstance(source.data, GeneratedInput):
        if source.data.distribution in SQUARE_DISTRIBUTIONS:
            return None
        return (
            f'{source.field("distribution")}: {operation} needs symmetric matrices; use "symmetric" or '
            f'"spd", got "{source.data.distribution}"'
        )
    array = source.data
    # A block of items at a time: the temporaries stay a few times the block's size, not
    # the whole input's (1.9 GiB of them for a 625 MiB input, checked at once).
    step = max(1, SYMMETRY_BLOCK_BYTES // max(1, array[:1].nbytes))
    for begin in range(0, len(array), step):
        block = np.asarray(array[begin:begin + step])
        # Symmetric up to rounding, relative to each item's largest entry: matrices built
        # as m @ m.T by a BLAS are often not symmetric to the last bit.
        scale = np.nanmax(np.abs(block), axis=(-1, -2), keepdims=True, initial=0.0)
        tolerance = (1e-5 if block.dtype == np.float32 else 1e-10) * scale
        close = np.isclose(block, np.swapaxes(block, -1, -2), rtol=0.0, atol=tolerance, equal_nan=True)
        asymmetric = np.flatnonzero(~close.all(axis=(-1, -2)))
        if asymmetric.size:
            return (f"{source.where}: {operation} needs symmetric matrices; "
                    f"item {begin + asymmetric[0]} is not symmetric")
    return None


def _meaning_problems(
    operation: str,
    given: list[str],
    sources: dict[str, _Source],
    *,
    chunk_size: int | None,
    return_mode: str,
    limits: TaskLimits,
) -> list[str]:
    """Problems with what the task means; ``given`` names every input the task file gave."""
    spec = OPERATIONS[operation]
    takes = " and ".join(f'"{name}"' for name in spec.inputs)
    problems = [
        f"inputs.{name}: required input is missing; {operation} takes {takes}"
        for name in spec.inputs
        if name not in given
    ]
    problems += [
        f"inputs.{name}: unknown input; {operation} takes {takes}"
        for name in given
        if name not in spec.inputs
    ]
    present = {name: sources[name] for name in spec.inputs if name in sources}
    if not present:
        return problems

    first_name, first = next(iter(present.items()))
    for name, source in present.items():
        if source.count != first.count:
            problems.append(
                f"{source.field('count')}: every input needs the same count; "
                f"{first_name} has {first.count} items, {name} has {source.count}"
            )
        elif source.count > limits.max_items:
            problems.append(
                f"{source.field('count')}: {source.count} items are over the limit of "
                f"{limits.max_items} items per task; raise it with --max-items"
            )
        elif source.count == 0:
            problems.append(f"{source.field('count')}: needs at least one item")
        elements = math.prod(source.item_shape)
        if elements > limits.max_item_elements:
            problems.append(
                f"{source.field('shape')}: items of {elements} elements are over the limit of "
                f"{limits.max_item_elements} elements per item; raise it with --max-item-elements"
            )
    if len(present) != len(spec.inputs) or problems:
        return problems

    shapes = {name: sources[name].item_shape for name in spec.inputs}
    shape_problems = spec.check_shapes(shapes)
    problems += [f"{sources[p.input].field('shape')}: {p.message}" for p in shape_problems]
    if shape_problems:
        return problems
    for name in spec.symmetric_inputs:
        problem = _symmetry_problem(sources[name], operation)
        if problem:
            problems.append(problem)

    result_elements = math.prod(spec.result_item_shape(shapes))
    if result_elements > limits.max_item_elements:
        problems.append(
            f"operation: result items of {result_elements} elements are over the limit of "
            f"{limits.max_item_elements} elements per item; raise it with --max-item-elements"
        )
    count = first.count
    result_itemsize = 4 if all(s.itemsize == 4 for s in present.values()) else 8
    inputs_bytes = sum(math.prod(s.item_shape) * s.itemsize for s in present.values())
    item_bytes = inputs_bytes + _result_nbytes(return_mode, result_elements, result_itemsize)
    if count * item_bytes > limits.max_task_bytes:
        problems.append(
            f"inputs: the inputs and results take {format_bytes(count * item_bytes)}, over the limit of "
            f"{format_bytes(limits.max_task_bytes)} per task; raise it with --max-task-bytes"
        )
    if item_bytes > MAX_CHUNK_BYTES:
        problems.append(
            f"inputs: one item's inputs and result take {format_bytes(item_bytes)}, over the limit of "
            f"{format_bytes(MAX_CHUNK_BYTES)} per chunk"
        )
    elif chunk_size is not None and min(chunk_size, count) * item_bytes > MAX_CHUNK_BYTES:
        chunk_bytes = min(chunk_size, count) * item_bytes
        problems.append(
            f"chunk_size: chunks of {chunk_size} items take {format_bytes(chunk_bytes)}, over the "
            f'limit of {format_bytes(MAX_CHUNK_BYTES)} per chunk; use a smaller chunk_size or "auto"'
        )
    return problems


# ---------------------------------------------------------------- the Task


@dataclass(frozen=True, eq=False)
class Task:
    """A validated task: an operation over ``count`` items, and how to hand results back.

    Build one with parse_task, load_task_file, parse_task_text or task_from_parts; they
    check everything this class assumes. Array inputs are read-only, first axis the items.
    """

    name: str
    operation: str
    """A key of protocol.operations.OPERATIONS."""
    inputs: dict[str, GeneratedInput | np.ndarray]
    count: int
    chunk_size: int | None
    """Items per chunk; None means "auto" (sized from measured speed)."""
    return_mode: str
    """One of RETURN_MODES: "full" or "norms"."""
    max_attempts: int
    priority: int = 0
    """Higher goes first; tasks of one priority share the nodes."""
    requires: Mapping[str, str | float] = field(default_factory=dict)
    """What a node must have to get the task's chunks (resource: at least this number, or this name)."""

    def item_shape(self, name: str) -> tuple[int, ...]:
        """The shape of one item of input ``name``."""
        data = self.inputs[name]
        return data.shape if isinstance(data, GeneratedInput) else data.shape[1:]

    def input_dtype(self, name: str) -> np.dtype:
        """The element type of input ``name`` (float32 or float64)."""
        return np.dtype(self.inputs[name].dtype)

    @cached_property
    def generated_specs(self) -> dict[str, dict[str, object]]:
        """Each generated input's ``generate`` object, as an assignment carries it (do not change it)."""
        return {name: data.to_spec() for name, data in self.inputs.items() if isinstance(data, GeneratedInput)}

    @cached_property
    def result_item_shape(self) -> tuple[int, ...]:
        """The shape of one result item; ``()`` for a scalar."""
        shapes = {name: self.item_shape(name) for name in self.inputs}
        return OPERATIONS[self.operation].result_item_shape(shapes)

    @cached_property
    def result_dtype(self) -> np.dtype:
        """float32 when every input is float32, else float64."""
        return result_dtype(self.input_dtype(name) for name in self.inputs)

    @property
    def item_nbytes(self) -> int:
        """Bytes of one item's inputs and what it returns (a result item or a float64 norm)."""
        inputs = sum(
            math.prod(self.item_shape(name)) * self.input_dtype(name).itemsize for name in self.inputs
        )
        result_elements = math.prod(self.result_item_shape)
        return inputs + _result_nbytes(self.return_mode, result_elements, self.result_dtype.itemsize)

    def input_items(self, name: str, start: int, stop: int) -> np.ndarray:
        """Items ``start .. stop-1`` of input ``name``: generated, or a view of the array."""
        if not 0 <= start <= stop <= self.count:
            raise ValueError(f"item range {start}..{stop} is outside 0..{self.count}")
        data = self.inputs[name]
        return data.items(start, stop) if isinstance(data, GeneratedInput) else data[start:stop]

    def document(self, files: Mapping[str, str]) -> dict[str, Any]:
        """The task as a task file, each array input named by the ``.npy`` file in ``files`` that holds it."""
        inputs: dict[str, dict[str, Any]] = {}
        for name, data in self.inputs.items():
            inputs[name] = {"generate": data.to_spec()} if isinstance(data, GeneratedInput) else {"file": files[name]}
        return {
            "name": self.name,
            "operation": self.operation,
            "inputs": inputs,
            "chunk_size": self.chunk_size if self.chunk_size is not None else "auto",
            "return": self.return_mode,
            "max_attempts": self.max_attempts,
            **({"priority": self.priority} if self.priority else {}),
            **({"requires": dict(self.requires)} if self.requires else {}),
        }

    def describe_inputs(self) -> dict[str, dict[str, Any]]:
        """Each input as ``{"generate": spec}`` or ``{"array": {"dtype": ..., "shape": [...]}}``."""
        described: dict[str, dict[str, Any]] = {}
        for name, data in self.inputs.items():
            if isinstance(data, GeneratedInput):
                described[name] = {"generate": data.to_spec()}
            else:
                described[name] = {"array": {"dtype": str(data.dtype), "shape": list(data.shape)}}
        return described


def _name_from_stem(stem: str) -> str:
    """A task name from a file name: printable, short, never empty."""
    printable = "".join(char for char in stem if char.isprintable())[:MAX_NAME_LENGTH]
    return printable or "task"


def _resolve(
    where: str, given: InputModel, *, base_dir: Path | None, allow_files: bool, max_bytes: int,
    map_files: bool = False,
) -> _Source:
    """Turn one input of a task file into generated items or an array; TaskFileError if it cannot."""
    if given.generate is not None:
        spec, where = given.generate, f"{where}.generate"
        if spec.distribution in SQUARE_DISTRIBUTIONS and (
            len(spec.shape) != 2 or spec.shape[0] != spec.shape[1]
        ):
            raise TaskFileError(
                [f'{where}.distribution: "{spec.distribution}" needs a square shape [n, n], got {spec.shape}']
            )
        return _Source(GeneratedInput(**spec.model_dump()), where)
    if given.file is not None:
        if not allow_files:
            raise TaskFileError(
                [
                    f"{where}.file: file inputs are not accepted over SSH; use generate or inline, "
                    "or chainconsole submit"
                ]
            )
        array = load_array_file(given.file, given.key, base_dir=base_dir, where=where, max_bytes=max_bytes,
                                mapped=map_files)
        return _Source(array, f"{where}.file")
    return _Source(inline_array(given.inline or [], f"{where}.inline"), f"{where}.inline")


def _build(
    document: object,
    arrays: Mapping[str, np.ndarray],
    *,
    base_dir: Path | None,
    limits: TaskLimits,
    allow_files: bool,
    default_name: str,
    map_files: bool = False,
) -> Task:
    """Both passes over a document plus arrays given directly (task_from_parts); the Task or every problem."""
    model = validate_structure(document)
    problems: list[str] = []
    sources: dict[str, _Source] = {}
    for name, given in model.inputs.items():
        try:
            sources[name] = _resolve(
                f"inputs.{name}",
                given,
                base_dir=base_dir,
                allow_files=allow_files,
                max_bytes=limits.max_task_bytes,
                map_files=map_files,
            )
        except TaskFileError as error:
            problems += error.problems
    for name, array in arrays.items():
        where = f"inputs.{name}"
        if name in model.inputs:
            problems.append(f"{where}: given both as a generated input and as an array")
            continue
        try:
            sources[name] = _Source(float_array(np.asarray(array), where), where)
        except TaskFileError as error:
            problems += error.problems
    chunk_size = None if model.chunk_size == "auto" else model.chunk_size
    given = list(model.inputs) + [name for name in arrays if name not in model.inputs]
    problems += _meaning_problems(
        model.operation, given, sources, chunk_size=chunk_size, return_mode=model.return_mode, limits=limits
    )
    if problems:
        raise TaskFileError(problems)
    spec = OPERATIONS[model.operation]
    return Task(
        name=model.name if model.name is not None else default_name,
        operation=model.operation,
        inputs={name: sources[name].data for name in spec.inputs},
        count=sources[spec.inputs[0]].count,
        chunk_size=chunk_size,
        return_mode=model.return_mode,
        max_attempts=model.max_attempts,
        priority=model.priority,
        requires=dict(model.requires),
    )


def parse_task(
    document: object,
    *,
    base_dir: Path | None = None,
    limits: TaskLimits = DEFAULT_LIMITS,
    allow_files: bool = True,
    default_name: str = "task",
    map_files: bool = False,
) -> Task:
    """Validate a task document (parsed JSON) and return the Task; TaskFileError lists the problems.

    ``base_dir`` is where relative ``file`` paths start (default: the working directory);
    ``allow_files=False`` refuses ``file`` inputs (tasks that arrive over SSH);
    ``map_files`` maps ``.npy`` inputs into memory rather than reading them (the
    front-end's own copies of a task's inputs, which nobody changes underneath it).
    """
    return _build(
        document, {}, base_dir=base_dir, limits=limits, allow_files=allow_files, default_name=default_name,
        map_files=map_files,
    )


def _parse_json(text: str | bytes) -> object:
    """Parse strict JSON text (UTF-8, a byte order mark allowed); TaskFileError says where it breaks."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TaskFileError([f"not UTF-8 text (byte {error.start})"]) from None
    try:
        return strict_json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as error:
        raise TaskFileError(
            [f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"]
        ) from None
    except strict_json.StrictJsonError as error:
        raise TaskFileError([f"invalid JSON: {error}"]) from None
    except RecursionError:
        raise TaskFileError(["invalid JSON: nested too deeply"]) from None


def parse_task_text(text: str | bytes, **options: Any) -> Task:
    """Parse JSON text into a Task; ``options`` are parse_task's. Invalid JSON is a TaskFileError."""
    return parse_task(_parse_json(text), **options)


def load_task_file(path: str | Path, *, limits: TaskLimits = DEFAULT_LIMITS) -> Task:
    """Read and validate a task file; its name defaults to the file name without ``.json``."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise TaskFileError(["no such file"]) from None
    except OSError as error:
        raise TaskFileError([f"cannot read the task file: {error.strerror or error}"]) from None
    return parse_task(
        _parse_json(text), base_dir=path.parent, limits=limits, default_name=_name_from_stem(path.stem)
    )


def task_from_parts(
    name: str,
    operation: str,
    generated: Mapping[str, Mapping[str, object]],
    arrays: Mapping[str, np.ndarray],
    chunk_size: int | None,
    return_mode: str,
    max_attempts: int,
    *,
    priority: int = 0,
    requires: Mapping[str, str | float] | None = None,
    limits: TaskLimits = DEFAULT_LIMITS,
) -> Task:
    """Rebuild a Task from its parts, validating them the way parse_task does.

    ``generated`` maps input names to ``generate`` specs, ``arrays`` the other inputs to
    their arrays (first axis the items). For a task rebuilt from the journal, which passed
    its limits when it was accepted, pass ``limits=NO_LIMITS``. The parts may come from the
    network: whatever they hold, the outcome is a Task or a TaskFileError.
    """
    if not isinstance(generated, Mapping) or not isinstance(arrays, Mapping):
        raise TaskFileError(["inputs: generated inputs and arrays must each map input names to inputs"])
    document = {
        "name": name,
        "operation": operation,
        "inputs": {input_name: {"generate": spec} for input_name, spec in generated.items()},
        "chunk_size": "auto" if chunk_size is None else chunk_size,
        "return": return_mode,
        "max_attempts": max_attempts,
        **({"priority": priority} if priority else {}),
        **({"requires": dict(requires)} if requires else {}),
    }
    return _build(document, arrays, base_dir=None, limits=limits, allow_files=False, default_name="task")
