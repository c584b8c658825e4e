"""Where a task's items come from: generated item by item, or arrays from files and inline lists.

A generated item ``i`` is drawn from ``numpy.random.default_rng([seed, i])``. Seeding every
item on its own makes an item depend only on ``(seed, i)``: the same item comes out whatever
the chunking, the node or the attempt, so any result can be re-derived and checked. The
draws below are part of the user-facing contract (docs/task-files.md); changing one
changes every generated task.

Array inputs (``file`` and ``inline``) become read-only float arrays whose first axis is the
items. What is wrong with one is raised as a TaskFileError whose problem names the field.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from protocol.errors import TaskFileError

Shape = tuple[int, ...]

MAX_ITEM_DIMS = 8
"""Dimensions of one item, at most (every operation takes 1-D or 2-D items)."""

MAX_SEED = 2**64 - 1
"""Seeds are bounded so that every seed survives a round trip through any JSON reader."""


# Each draw writes one float64 item into ``out``: the documented formulas, in place (a test checks
# them bit for bit against the formulas as docs/task-files.md writes them).
def _normal(rng: np.random.Generator, out: np.ndarray) -> None:
    rng.standard_normal(out=out)


def _uniform(rng: np.random.Generator, out: np.ndarray) -> None:
    out[...] = rng.uniform(-1.0, 1.0, out.shape)


def _symmetric(rng: np.random.Generator, out: np.ndarray) -> None:
    m = rng.standard_normal(out.shape)
    np.add(m, m.T, out=out)
    out /= 2


def _spd(rng: np.random.Generator, out: np.ndarray) -> None:
    n = out.shape[0]
    m = rng.standard_normal(out.shape)
    np.matmul(m, m.T, out=out)
    out += n * np.eye(n)


_DRAWS: dict[str, Callable[[np.random.Generator, np.ndarray], None]] = {
    "normal": _normal,
    "uniform": _uniform,
    "symmetric": _symmetric,
    "spd": _spd,
}

DISTRIBUTIONS: tuple[str, ...] = tuple(_DRAWS)
"""Names of the distributions a ``generate`` input may ask for."""

SQUARE_DISTRIBUTIONS: frozenset[str] = frozenset({"symmetric", "spd"})
"""Distributions that only make sense for square matrices (``[n, n]`` shapes)."""

DTYPES: tuple[str, ...] = ("float64", "float32")
"""Element types of generated items; ``float32`` items are drawn in float64, then cast."""


def _check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    # bool is an int subclass; True as a count or a seed is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{what} must be {bound}, got {number}")
    return number


@dataclass(frozen=True)
class GeneratedInput:
    """A generated input of ``count`` items of ``shape``, reproducible item by item."""

    count: int
    """How many items the input holds."""
    shape: tuple[int, ...]
    """The shape of one item."""
    seed: int
    """The task author's seed; item ``i`` uses the seed sequence ``[seed, i]``."""
    distribution: str
    """One of DISTRIBUTIONS."""
    dtype: str = "float64"
    """One of DTYPES."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", _check_int(self.count, "count", 0))
        if not isinstance(self.shape, (tuple, list)):
            raise TypeError(f"shape must be a sequence of integers, got {self.shape!r}")
        shape = tuple(_check_int(n, "a shape entry", 1) for n in self.shape)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "seed", _check_int(self.seed, "seed", 0, MAX_SEED))
        if self.distribution not in _DRAWS:
            raise ValueError(f"unknown distribution {self.distribution!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}")
        if self.distribution in SQUARE_DISTRIBUTIONS and (len(shape) != 2 or shape[0] != shape[1]):
            raise ValueError(f"{self.distribution} needs a square shape [n, n], got {list(shape)}")

    def items(self, start: int, stop: int) -> np.ndarray:
        """Return items ``start .. stop-1`` stacked along a new first axis."""
        if not 0 <= start <= stop <= self.count:
            raise ValueError(f"item range {start}..{stop} is outside 0..{self.count}")
        draw = _DRAWS[self.distribution]
        out = np.empty((stop - start, *self.shape), dtype=self.dtype)
        # float32 items are drawn in float64 and cast after drawing (the contract), through
        # one scratch item; float64 items are drawn straight into their row of the output.
        scratch = np.empty(self.shape) if out.dtype != np.float64 else None
        # Spelled out rather than default_rng([seed, i]) (the same generator): this loop is
        # a hot path, and the shortcut skips default_rng's argument dispatch.
        generator, pcg64, seed_sequence = np.random.Generator, np.random.PCG64, np.random.SeedSequence
        for row in range(stop - start):
            rng = generator(pcg64(seed_sequence([self.seed, start + row])))
            if scratch is None:
                draw(rng, out[row])
            else:
                draw(rng, scratch)
                out[row] = scratch
        return out

    def to_spec(self) -> dict[str, object]:
        """Return the plain JSON form, the task file's ``generate`` object."""
        return {
            "count": self.count,
            "shape": list(self.shape),
            "seed": self.seed,
            "distribution": self.distribution,
            "dtype": self.dtype,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, object]) -> GeneratedInput:
        """Build from the plain JSON form (defaults as in a task file); ValueError or TypeError if invalid."""
        unknown = set(spec) - {"count", "shape", "seed", "distribution", "dtype"}
        if unknown:
            raise ValueError(f"unknown generate fields: {sorted(unknown)}")
        missing = {"count", "shape", "seed"} - set(spec)
        if missing:
            raise ValueError(f"missing generate fields: {sorted(missing)}")
        fields = {"distribution": "normal", "dtype": "float64", **spec}
        return cls(**fields)  # type: ignore[arg-type]  # __post_init__ checks every type


def format_bytes(count: float) -> str:
    """A byte count for people: ``512 bytes``, ``6.2 MiB``, ``64.0 GiB``, ``3.1 TiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def show_json(value: object) -> str:
    """A short rendering of a JSON value for a problem line."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def float_array(array: np.ndarray, where: str) -> np.ndarray:
    """The array as float32 (kept) or float64 (any other real numbers), C-ordered and read-only."""
    if array.dtype.kind not in "iuf":
        raise TaskFileError([f"{where}: must hold real numbers, got an array of {array.dtype}"])
    if array.ndim == 0:
        raise TaskFileError([f"{where}: must be an array whose first axis is the items, got a single number"])
    if 0 in array.shape[1:]:
        raise TaskFileError([f"{where}: items must not be empty, got items of shape {list(array.shape[1:])}"])
    dtype = np.float32 if array.dtype == np.float32 else np.float64
    converted = np.ascontiguousarray(array, dtype=dtype)
    converted.flags.writeable = False
    return converted


def _read_npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, without reading the data."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def load_array_file(
    file: str, key: str | None, *, base_dir: Path | None, where: str, max_bytes: int, mapped: bool = False
) -> np.ndarray:
    """Load a ``file`` input (``.npy``, or ``.npz`` with ``key``) as float_array does.

    The header is read first, so a file that is not numbers or holds more than ``max_bytes``
    (counted as float64) is refused without loading it; pickled objects never load.
    ``mapped`` maps a ``.npy`` file of float32 or float64 into memory instead of reading it.
    """
    path = Path(file) if base_dir is None else base_dir / file
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise TaskFileError([f"{where}.file: must name a .npy or .npz file, got {show_json(file)}"])
    if suffix == ".npy" and key is not None:
        raise TaskFileError([f'{where}.key: only a .npz file holds named arrays; "{file}" is a .npy file'])
    try:
        if suffix == ".npy":
            with open(path, "rb") as stream:
                shape, dtype = _read_npy_header(stream)
        else:
            with zipfile.ZipFile(path) as archive:
                names = [n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")]
                if key not in names:
                    held = ", ".join(f'"{name}"' for name in names) or "no arrays"
                    lead = "required for a .npz file" if key is None else f'"{key}" is not in "{file}"'
                    raise TaskFileError([f"{where}.key: {lead}; it holds {held}"])
                with archive.open(f"{key}.npy") as stream:
                    shape, dtype = _read_npy_header(stream)
    except FileNotFoundError:
        raise TaskFileError([f'{where}.file: no such file "{path}"']) from None
    except OSError as error:
        raise TaskFileError([f'{where}.file: cannot read "{path}": {error.strerror or error}']) from None
    except (ValueError, zipfile.BadZipFile):
        raise TaskFileError([f'{where}.file: "{path}" is not a valid NumPy {suffix} file']) from None
    if dtype.kind not in "iuf":
        # Refused before loading: an object array would need pickle, never allowed here.
        raise TaskFileError([f"{where}.file: must hold real numbers, got an array of {dtype}"])
    if math.prod(shape) * 8 > max_bytes:
        raise TaskFileError(
            [
                f"{where}.file: the array takes {format_bytes(math.prod(shape) * 8)}, over the limit of "
                f"{format_bytes(max_bytes)} per task; raise it with --max-task-bytes"
            ]
        )
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r" if mapped else None, allow_pickle=False)
            if mapped and array.nbytes != math.prod(shape) * dtype.itemsize:
                raise ValueError("the file is shorter than its header says")
        else:
            with np.load(path, allow_pickle=False) as arrays:
                array = arrays[key]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise TaskFileError([f'{where}.file: cannot load "{path}": {error}']) from None
    return float_array(array, f"{where}.file")


def _non_number(value: object, where: str, depth: int) -> str | None:
    """The first problem with an inline value, or None when it holds only numbers."""
    if isinstance(value, list):
        if depth > MAX_ITEM_DIMS + 1:
            return f"{where}: nested more than {MAX_ITEM_DIMS + 1} lists deep"
        for index, entry in enumerate(value):
            problem = _non_number(entry, f"{where}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    # numpy would quietly read "1" and true as 1.0; a task file means numbers.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{where}: must be a number, got {show_json(value)}"
    return None


def inline_array(values: list[Any], where: str) -> np.ndarray:
    """An ``inline`` input (nested lists of numbers, first axis the items) as float64."""
    problem = _non_number(values, where, 1)
    if problem:
        raise TaskFileError([problem])
    try:
        array = np.array(values, dtype=np.float64)
    except ValueError:
        raise TaskFileError([f"{where}: ragged nested lists; every item needs the same shape"]) from None
    except OverflowError:
        raise TaskFileError([f"{where}: a number is too large for float64"]) from None
    return float_array(array, where)
