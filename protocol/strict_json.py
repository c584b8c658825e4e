"""Strict JSON: finite numbers only and no repeated keys, for everything read from outside.

Python's ``json`` reads ``NaN``, ``Infinity`` and ``1e400`` (as infinity) and keeps the
last of two equal keys; JSON has none of them, and a task file or frame header that
relies on them means something other than it says.
"""

from __future__ import annotations

import json
import math


class StrictJsonError(ValueError):
    """The text is JSON only by Python's lenient reading."""


def loads(text: str) -> object:
    """Parse JSON text; ``json.JSONDecodeError`` or ``StrictJsonError`` (both ValueErrors) if it is not strict JSON."""
    if not isinstance(text, str):
        raise TypeError(f"JSON text must be str, not {type(text).__name__}")
    return _DECODER.decode(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError(f"number {text[:32]} is out of range")
    return value


def _refuse_constant(name: str) -> float:
    raise StrictJsonError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise StrictJsonError(f'an object repeats the key "{repeated[:64]}"')
    return result


# Built once: json.loads with these arguments would build a decoder on every call.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant,
                            object_pairs_hook=_unique_keys)
