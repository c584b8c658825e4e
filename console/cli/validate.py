"""``chainconsole validate TASK.json``: check a task file, run nothing."""

from __future__ import annotations

import sys

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
        f"{format_bytes(task.count * task.item_nbytes)} of inputs and results",
    ]
    return ", ".join(parts)


def run_validate(path: str, *, limits: TaskLimits = DEFAULT_LIMITS) -> int:
    """Validate the task file at ``path``: 0 and a summary on stdout, or 2 and its problems on stderr."""
    try:
        task = load_task_file(path, limits=limits)
    except TaskFileError as error:
        for problem in error.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return ExitStatus.USAGE
    print(summary_line(task))
    return ExitStatus.OK
