"""Where the time went: the top functions of a py-spy profile in collapsed-stack form.

py-spy's ``--format raw`` writes one line per distinct stack, ``frame;frame;...;frame COUNT``,
outermost frame first, each frame ``function (path/file.py:line)``. With ``--subprocesses``
a stack starts with ``process PID:"command"`` frames; stacks are split by the innermost one
into the main process and its multiprocessing workers, so a node's agent and its workers
are reported apart. Self time is the samples whose innermost frame is the function;
inclusive time is the samples with the function anywhere on the stack. Lines are dropped
from frames so that a function counts once.

    python tests/benchmarks/profile_summary.py PROFILE.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
_PATH = re.compile(r"\((?:.*/)?((?:[^/]+/)?[^/]+\.py)\)$")
# Process frames come first; their quoted command lines may hold ";" themselves.
_PROCESSES = re.compile(r'((?:process \d+:"[^"]*";)*)(.*)')
_COMMAND = re.compile(r'process \d+:"([^"]*)"')
_WORKER_MARK = "multiprocessing"


@dataclass(frozen=True)
class Share:
    """One function's share of a group's samples."""

    function: str
    self_pct: float
    inclusive_pct: float


@dataclass(frozen=True)
class Group:
    """The samples of a main process or of its workers, and the functions costing most."""

    name: str
    samples: int
    top: tuple[Share, ...]


def _frame(text: str) -> str:
    """``inv (numpy/linalg/_linalg.py)`` from a frame with its full path and line."""
    return _PATH.sub(r"(\1)", _LINE.sub(")", text.strip()))


def summarize(path: Path, limit: int = 15) -> list[Group]:
    """Per group (``main``, ``workers``): total samples and the ``limit`` functions with most self time."""
    own: dict[str, Counter[str]] = {}
    anywhere: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        processes, rest = _PROCESSES.fullmatch(stack).groups()  # type: ignore[union-attr]
        commands = _COMMAND.findall(processes)
        group = "workers" if commands and _WORKER_MARK in commands[-1] else "main"
        frames = [_frame(frame) for frame in rest.split(";") if frame]
        if not frames:
            continue
        own.setdefault(group, Counter())[frames[-1]] += int(count)
        seen = anywhere.setdefault(group, Counter())
        for frame in set(frames):
            seen[frame] += int(count)
    groups = []
    for name in sorted(own):
        total = sum(own[name].values())
        top = tuple(Share(function, 100 * count / total, 100 * anywhere[name][function] / total)
                    for function, count in own[name].most_common(limit))
        groups.append(Group(name, total, top))
    return groups


def render(title: str, path: Path, limit: int = 15) -> str:
    """Small tables of the top functions per group, for the console and the report."""
    lines = []
    for group in summarize(path, limit):
        lines += [f"{title} ({group.name}): {group.samples} samples", f"  {'self %':>7} {'incl %':>7}  function"]
        lines += [f"  {s.self_pct:7.1f} {s.inclusive_pct:7.1f}  {s.function}" for s in group.top]
    return "\n".join(lines) if lines else f"{title}: no samples in {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(render(args.profile.stem, args.profile, args.top))


if __name__ == "__main__":
    main()
