"""How the CLI shows a task: a progress bar while it runs, its summary when it ends."""

from __future__ import annotations

import json
import sys
import time
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from protocol.errors import ExitStatus

DASH = "-:--:--"
RATE_WINDOW_S = 10.0
"""The items/s shown averages this long: steady between chunks, quick to follow a change."""


def report(summary: dict, as_json: bool) -> int:
    """Print a finished task's summary (JSON, or one line); return the exit status it calls for."""
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['task_id']} {summary['state']}: {summary['ok_items']}/{summary['items']} items ok, "
              f"{summary['failed_items']} failed, {summary['wall_s']:.2f} s")
    return ExitStatus.OK if summary["state"] == "done" else ExitStatus.FAILED


def duration(seconds: float) -> str:
    """``H:MM:SS``, as the elapsed time next to it."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class TaskProgress:
    """One task's progress on stderr: bar, items done, items/s, time elapsed and time left.

    ``run`` and ``submit --wait`` show the same bar. It draws only when stderr is a
    terminal (``enabled``); otherwise it stays silent and scripts see only the summary.
    Use it as a context manager: leaving it, however that happens, ends the bar's line.
    """

    def __init__(self, name: str, total: int, *, file: IO[str] | None = None, terminal: bool | None = None) -> None:
        self.console = Console(file=file or sys.stderr, force_terminal=terminal)
        self.enabled = self.console.is_terminal
        self.total = max(total, 1)
        self._samples: list[tuple[float, int]] = []
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            disable=not self.enabled,
        )
        self._task = self._progress.add_task(name, total=self.total, rate="", eta=DASH)

    def __enter__(self) -> TaskProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def show(self, done: int, now: float | None = None) -> None:
        """Items done so far."""
        now = time.monotonic() if now is None else now
        self._samples.append((now, done))
        self._samples = [(t, d) for t, d in self._samples if t >= now - RATE_WINDOW_S]
        first_t, first_done = self._samples[0]
        rate = (done - first_done) / (now - first_t) if now > first_t else 0.0
        left = self.total - done
        eta = duration(left / rate) if rate > 0 and left > 0 else DASH
        self._progress.update(self._task, completed=done, rate=f"{rate:,.0f} items/s" if rate > 0 else "", eta=eta)
