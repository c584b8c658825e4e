"""The front-end's events as log lines: one per event, timestamped, plain or JSON.

``serve`` writes them to stderr and the console to ``logs/frontend.log`` in the state
folder, so node losses, quarantines and failed chunks are on record wherever the
front-end runs. Lines carry no colour codes: they are for files, journald and grep.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module to build its parser: keep it light
    from console.engine.records import Event
    from console.engine.statedir import StateDir

LOG_FORMATS = ("plain", "json")
LOG_FILE = "frontend.log"


class EventLog:
    """A listener for ``FrontEnd.on_event`` that writes each event as one line."""

    def __init__(self, stream: IO[str], log_format: str = "plain") -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
        self._stream = stream
        self._json = log_format == "json"

    def __call__(self, event: Event) -> None:
        self._stream.write(format_event(event, as_json=self._json) + "\n")
        self._stream.flush()


def format_event(event: Event, *, as_json: bool = False) -> str:
    """``2026-12-01T10:30:00.123Z join local1: joined …`` or the same as a JSON object."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.time)) + f".{int(event.time * 1000) % 1000:03d}Z"
    if as_json:
        record = {"time": stamp, "kind": event.kind, "message": event.message}
        if event.task_id:
            record["task_id"] = event.task_id
        if event.node_id:
            record["node_id"] = event.node_id
        return json.dumps(record, ensure_ascii=False)
    text = "".join(c if c.isprintable() else " " for c in event.message)  # one event, one line
    return f"{stamp} {event.kind:<10} {text}"


def open_event_log(state: StateDir) -> IO[str]:
    """The console's log file in the state folder, for appending (private, like every state file)."""
    from console.engine.statedir import make_private_dir

    path = make_private_dir(state.root / "logs") / LOG_FILE
    return open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", encoding="utf-8")
