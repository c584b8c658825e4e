"""``chainconsole validate TASK.json``: check a task file, run nothing."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from protocol.errors import ExitStatus, TaskFileError
from protocol.inputs import GeneratedInput, format_bytes
from protocol.taskfile import DEFAULT_LIMITS, Task, TaskLimits, load_task_file


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def summary_line(task: Task) -> str:
    """One line that says what a valid task will do, for people."""
    parts = [f"ok: {task.name} — {task.operation}, {task.count} items"]
    for name, data in task.inputs.items():
        origin = f"generated ({data.distribution})" if isinstance(data, GeneratedInput) else "array"
        parts.append(f"{name}: {_shape(task.item_shape(name))} {task.input_dtype(name)} {origin}")
    parts += [
        f"result: {_shape(task.result_item_shape)} {task.result_dtype} (return {task.return_mode})",
        f"chunk_size {'auto' if task.chunk_size is None else task.chunk_size}",
        f"max_attempts {task.max_attempts}",
        f"priority {task.priority}",
        f"{format_bytes(task.count * task.item_nbytes)} of inputs and results",
    ]
    return ", ".join(parts)


def space_warning(task: Task, state_root: Path) -> str:
    """A warning when the task's inputs and results would not fit the state folder's free space, else ``""``."""
    from console.engine.journal import array_inputs_nbytes
    from console.engine.results import result_nbytes

    folder = next((p for p in (state_root, *state_root.parents) if p.exists()), None)
    if folder is None:
        return ""
    needed = array_inputs_nbytes(task) + result_nbytes(count=task.count, item_shape=task.result_item_shape,
                                                       dtype=task.result_dtype, return_mode=task.return_mode)
    free = shutil.disk_usage(folder).free
    if needed <= free:
        return ""
    return (f"warning: the task needs {format_bytes(needed)} on disk and {format_bytes(free)} is free in "
            f"{state_root}; a front-end there would refuse it")


def run_validate(path: str, *, limits: TaskLimits = DEFAULT_LIMITS, state_root: Path | None = None) -> int:
    """Validate the task file at ``path``: 0 and a summary on stdout, or 2 and its problems on stderr.

    With ``state_root``, a task too large for that folder's free space is still valid but warned about.
    """
    try:
        task = load_task_file(path, limits=limits)
    except TaskFileError as error:
        for problem in error.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return ExitStatus.USAGE
    print(summary_line(task))
    warning = space_warning(task, state_root) if state_root is not None else ""
    if warning:
        print(f"chainconsole: {warning}", file=sys.stderr)
    return ExitStatus.OK
