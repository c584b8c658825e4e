"""The field checks of protocol messages: each validates one value and returns it normalised.

A check is a function ``check(label, value) -> value``: it raises ``TypeError`` or
``ValueError`` naming ``label`` when the value does not belong, and otherwise returns it
in its one canonical form (``int`` for ``numpy.int64``, ``tuple`` for ``list``). The
message classes (``protocol.messages``) declare one check per field; nothing here knows
about messages.

Rules of this module: a bool is never an int, a float is never an int, no number is
NaN or infinite, and every length and count is bounded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import numpy as np

from protocol.frames import MAX_ARRAY_RANK, canonical_dtype, short_repr

MAX_NAME = 128
MAX_TEXT = 4096
MAX_VERSION = 65535
# slots, window and in_flight: a relay speaks for a whole subtree, so allow plenty.
MAX_COUNT = 2**20
# chunk numbers, attempts and item indexes stay exact in every JSON implementation.
MAX_INDEX = 2**53 - 1
MAX_CHAIN = 32
MAX_SUBTREE = 10_000
MAX_KEY_TEXT = 8192
# Enrolled node keys travel in one header (~100 bytes each): bounded well inside it.
MAX_NODE_KEYS = 500
MAX_SPEC_DEPTH = 8
MAX_PRIORITY = 100
"""A task's priority is a whole number from -MAX_PRIORITY to MAX_PRIORITY."""

# Task ids, operations, input names and error codes: safe in file names and log lines.
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Free text may span lines, but nothing that could drive a terminal or break UTF-8.
FORBIDDEN_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


Check: TypeAlias = Callable[[str, Any], Any]


def integer(low: int, high: int) -> Check:
    def check(label: str, value: Any) -> int:
        # bool is an int subclass, and JSON true must never pass for 1.
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{label} must be an int, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{label} must be between {low} and {high}, got {short_repr(value)}")
        return int(value)

    return check


def real(low: float, high: float, *, low_open: bool = False) -> Check:
    def check(label: str, value: Any) -> float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"{label} must be a number, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:  # an int too large for any float
            number = math.inf
        above_low = number > low if low_open else number >= low
        if not (math.isfinite(number) and above_low and number <= high):
            interval = f"{'(' if low_open else '['}{low}, {high}]"
            raise ValueError(f"{label} must be a finite number in {interval}, got {short_repr(value)}")
        return number

    return check


def _string(label: str, value: Any, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a string, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise ValueError(f"{label} must be {low} to {high} characters, got {len(value)}")
    return str(value)


def identifier() -> Check:
    def check(label: str, value: Any) -> str:
        text = _string(label, value, 1, MAX_NAME)
        if not IDENTIFIER.fullmatch(text):
            raise ValueError(f"{label} {short_repr(text)} must be letters, digits, '.', '_', '-'")
        return text

    return check


def name(*, low: int = 1) -> Check:
    def check(label: str, value: Any) -> str:
        text = _string(label, value, low, MAX_NAME)
        if not text.isprintable():
            raise ValueError(f"{label} {short_repr(text)} must be printable")
        return text

    return check


def text() -> Check:
    def check(label: str, value: Any) -> str:
        text = _string(label, value, 0, MAX_TEXT)
        if FORBIDDEN_IN_TEXT.search(text):
            raise ValueError(f"{label} holds control characters or lone surrogates")
        return text

    return check


def flag() -> Check:
    def check(label: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{label} must be a bool, got {type(value).__name__}")
        return bool(value)

    return check


def choice(*options: str) -> Check:
    def check(label: str, value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"{label} must be one of {', '.join(options)}, got {short_repr(value)}")
        return value

    return check


def list_of(each: Check, most: int, what: str) -> Check:
    """A list (or tuple) of at most ``most`` values, each passing ``each``; normalised to a tuple."""

    def check(label: str, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{label} must be a list of {what}, got {type(value).__name__}")
        if len(value) > most:
            raise ValueError(f"{label} has {len(value)} entries, at most {most}")
        try:
            return tuple(each(label, item) for item in value)
        except (TypeError, ValueError):
            # Said again with the entry's index (a label is only worth making for an error).
            for index, item in enumerate(value):
                each(f"{label}[{index}]", item)
            raise

    return check


def rows(*columns: Check, most: int, what: str) -> Check:
    """A list of at most ``most`` rows, each a list of exactly one value per column, each
    passing its column's check; normalised to a tuple of tuples."""
    width = len(columns)

    def check(label: str, value: Any) -> tuple[tuple[Any, ...], ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{label} must be a list of {what}, got {type(value).__name__}")
        if not 1 <= len(value) <= most:
            raise ValueError(f"{label} has {len(value)} entries, expected 1 to {most}")
        checked = []
        for index, row in enumerate(value):
            if not isinstance(row, (list, tuple)) or len(row) != width:
                raise ValueError(f"{label}[{index}] must be a list of {width} values")
            try:
                checked.append(tuple(column(label, item) for column, item in zip(columns, row)))
            except (TypeError, ValueError):
                for column, item in zip(columns, row):  # said again with the row's index
                    column(f"{label}[{index}]", item)
                raise
        return tuple(checked)

    return check


def labels(most: int = 64) -> Check:
    """A JSON object of at most ``most`` entries: identifier keys, name or finite number values.

    What a node says it has: its installed operations with their versions, its resources.
    """

    def check(label: str, value: Any) -> dict[str, str | float]:
        if not isinstance(value, dict):
            raise TypeError(f"{label} must be an object, got {type(value).__name__}")
        if len(value) > most:
            raise ValueError(f"{label} has {len(value)} entries, at most {most}")
        checked: dict[str, str | float] = {}
        for key, item in value.items():
            key = identifier()(f"{label} key", key)
            if isinstance(item, str):
                checked[key] = name()(f"{label}.{key}", item)
            elif isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
                checked[key] = item
            else:
                raise TypeError(f"{label}.{key} must be a name or a finite number, got {short_repr(item)}")
        return checked

    return check


def names() -> Check:
    """A chain of node names (``via``)."""
    return list_of(name(), MAX_CHAIN, "names")


def _plain_json(label: str, value: Any, depth: int = 0) -> Any:
    """Return value as plain JSON data (dicts, lists, finite numbers), or raise."""
    if depth > MAX_SPEC_DEPTH:
        raise ValueError(f"{label} is nested more than {MAX_SPEC_DEPTH} deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return real(-math.inf, math.inf)(label, value)
    if isinstance(value, (list, tuple)):
        return [_plain_json(f"{label}[{i}]", item, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"{label} keys must be strings")
        return {key: _plain_json(f"{label}.{key}", item, depth + 1) for key, item in value.items()}
    raise TypeError(f"{label} must be plain JSON data, got {type(value).__name__}")


def generator_specs() -> Check:
    key = identifier()

    def check(label: str, value: Any) -> dict[str, dict[str, object]]:
        if not isinstance(value, Mapping):
            raise TypeError(f"{label} must map input names to generator specs")
        specs = {}
        for name, spec in value.items():
            key(f"{label} key", name)
            if not isinstance(spec, Mapping):
                raise TypeError(f"{label}.{name} must be an object, got {type(spec).__name__}")
            specs[name] = _plain_json(f"{label}.{name}", spec)
        return specs

    return check


def array(*, dtypes: frozenset[str] | None = None, ndim: int | None = None, min_ndim: int = 0) -> Check:
    def check(label: str, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{label} must be an ndarray, got {type(value).__name__}")
        dtype = canonical_dtype(value.dtype)
        if dtype is None or (dtypes is not None and dtype.str not in dtypes):
            raise ValueError(f"{label} has dtype {value.dtype}, not allowed here")
        if (ndim is not None and value.ndim != ndim) or not min_ndim <= value.ndim <= MAX_ARRAY_RANK:
            expected = ndim if ndim is not None else f"{min_ndim} to {MAX_ARRAY_RANK}"
            raise ValueError(f"{label} has {value.ndim} dimensions, expected {expected}")
        return value

    return check


def optional(inner: Check) -> Check:
    def check(label: str, value: Any) -> Any:
        return None if value is None else inner(label, value)

    return check


def input_arrays() -> Check:
    key = identifier()
    item = array(min_ndim=1)

    def check(label: str, value: Any) -> dict[str, np.ndarray]:
        if not isinstance(value, Mapping):
            raise TypeError(f"{label} must map input names to arrays")
        return {key(f"{label} key", name): item(f"{label}.{name}", a) for name, a in value.items()}

    return check


def key_text() -> Check:
    """An OpenSSH public key or certificate line: short, printable, one line."""

    def check(label: str, value: Any) -> str:
        text = _string(label, value, 0, MAX_KEY_TEXT)
        if not all(c.isprintable() for c in text):
            raise ValueError(f"{label} must be one printable line")
        return text

    return check


_REPORT_FIELDS = {"name": str, "state": str, "slots": int, "in_flight": int, "items_done": int, "errors": int}
_REPORT_KEYS = {*_REPORT_FIELDS, "via", "host_key"}


def node_reports() -> Check:
    one_name = name()
    chain = names()
    count = integer(0, MAX_INDEX)
    key_line = key_text()

    def check(label: str, value: Any) -> tuple[dict[str, object], ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{label} must be a list")
        if len(value) > MAX_SUBTREE:
            raise ValueError(f"{label} lists {len(value)} nodes, at most {MAX_SUBTREE}")
        reports = []
        for index, item in enumerate(value):
            where = f"{label}[{index}]"
            if not isinstance(item, Mapping) or set(item) != _REPORT_KEYS:
                raise ValueError(f"{where} must have exactly {', '.join(sorted(_REPORT_KEYS))}")
            report: dict[str, object] = {}
            for field_name, kind in _REPORT_FIELDS.items():
                check_field = one_name if kind is str else count
                report[field_name] = check_field(f"{where}.{field_name}", item[field_name])
            report["via"] = list(chain(f"{where}.via", item["via"]))
            report["host_key"] = key_line(f"{where}.host_key", item["host_key"])
            reports.append(report)
        return tuple(reports)

    return check


def key_lines() -> Check:
    """Public key lines (``node_keys``)."""
    return list_of(key_text(), MAX_NODE_KEYS, "public key lines")
