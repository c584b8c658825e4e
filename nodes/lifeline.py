"""Parent-death watch: a process that must not outlive the process that started it.

A node's worker processes must end when their node agent dies, even when it is
SIGKILLed and has no chance to stop them; nodes started by a front-end
(``--local-nodes``) must end with it in the same way. When a parent dies its children
are re-parented (to PID 1 or a subreaper), so ``os.getppid()`` changes: a daemon
thread polls it against the parent seen at start and acts when it changes. Polling
works on every POSIX system and whichever thread of the parent started the child
(``PR_SET_PDEATHSIG`` fires when the *thread* that forked exits, not the process).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

DEFAULT_POLL_S = 0.25


def watch_parent(parent_pid: int, on_death: Callable[[], None], *, poll_s: float = DEFAULT_POLL_S) -> threading.Thread:
    """Call ``on_death`` (once, from a daemon thread) when ``parent_pid`` is no longer our parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        on_death()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def exit_now(status: int = 1) -> Callable[[], None]:
    """An ``on_death`` that ends this process at once, without cleanup (for worker processes)."""
    return lambda: os._exit(status)
