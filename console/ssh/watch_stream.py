"""``ssh … watch``: the console stream of one front-end, for attached consoles and scripts.

Lines are written as the watcher reads them: a watcher that stops reading holds only its
own channel's buffer (SSH flow control), never the front-end; when the channel closes
(the console quit, the connection dropped) the stream ends and lets go of the event log.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time

import asyncssh

from console.engine.console_stream import (
    BACKLOG_EVENTS, STREAM_EVERY_S, event_line, hello_line, state_line,
)
from console.engine.frontend import FrontEnd
from console.engine.keys import KeyEntry
from console.engine.records import Event

PENDING_EVENTS = 5000
"""Events kept for a watcher that reads slowly; beyond that the oldest are dropped (``state`` lines carry on)."""


async def stream_console(frontend: FrontEnd, process: asyncssh.SSHServerProcess, key: KeyEntry) -> int:
    """Write the stream until the watcher goes away; return the exit status (0)."""
    pending: collections.deque[Event] = collections.deque(maxlen=PENDING_EVENTS)
    frontend.on_event(pending.append)
    try:
        _write(process, hello_line(key.role.value, key.name, frontend.started_at, frontend.limits))
        for event in list(frontend.events)[-BACKLOG_EVENTS:]:
            _write(process, event_line(event))
        last_state = None
        while not process.is_closing():
            while pending:
                _write(process, event_line(pending.popleft()))
            state = state_line(0.0, frontend.node_rows(), frontend.task_rows(), frontend.pending_keys())
            if state != last_state:
                last_state = state
                _write(process, {**state, "time": time.time()})
            await process.stdout.drain()
            await asyncio.sleep(STREAM_EVERY_S)
    except (BrokenPipeError, ConnectionError, asyncssh.Error):
        pass  # the watcher went away: nothing to tell anyone
    finally:
        frontend.off_event(pending.append)
    return 0


def _write(process: asyncssh.SSHServerProcess, obj: dict) -> None:
    process.stdout.write((json.dumps(obj) + "\n").encode())
