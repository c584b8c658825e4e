"""How the CLI shows a task: a progress bar while it runs, its summary when it ends."""

from __future__ import annotations

import json
import sys
import time

from protocol.errors import ExitStatus


def report(summary: dict, as_json: bool) -> int:
    """Print a finished task's summary (JSON, or one line); return the exit status it calls for."""
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['task_id']} {summary['state']}: {summary['ok_items']}/{summary['items']} items ok, "
              f"{summary['failed_items']} failed, {summary['wall_s']:.2f} s")
    return ExitStatus.OK if summary["state"] == "done" else ExitStatus.FAILED


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.began = name, max(total, 1), time.monotonic()

    def show(self, done: int) -> None:
        width = 30
        filled = int(width * done / self.total)
        rate = done / max(time.monotonic() - self.began, 1e-9)
        sys.stderr.write(f"\r{self.name} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                         f"{rate:,.0f} items/s ")
        sys.stderr.flush()

    def end(self) -> None:
        sys.stderr.write("\n")
