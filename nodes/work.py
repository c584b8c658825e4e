"""What computes the chunks an upstream assigns: this node's executor.

The agent hands every ``Assign`` to a ``Work`` and sends upstream whatever the work emits
(``Result``, ``Failed``, ``Credit`` …). ``LocalWork`` computes with this node's executor
(``nodes.executor``: its worker processes, or a Dask cluster); a chain link's ``Relay``
(``nodes.relay``) is a ``Work`` that also spreads chunks over the nodes behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nodes.executor import Executor
from nodes.pool import ChunkJob, WorkerCrashed
from protocol.messages import Assign, Credit, Failed, Result

Emit = Callable[[object], None]
ChunkKey = tuple[str, int, int]


class Work(Protocol):
    """The interface between the upstream session and whatever computes."""

    slots: int

    @property
    def window(self) -> int:
        """How many chunks to ask the upstream to hold for us."""

    @property
    def held(self) -> int:
        """Chunks assigned and not yet answered."""

    def attach(self, emit: Emit) -> None:
        """Where to send messages for the upstream."""

    def assign(self, assign: Assign) -> None: ...

    def cancel(self, key: ChunkKey) -> None: ...

    def upstream_lost(self) -> None:
        """The upstream session ended: its assignments were requeued upstream."""

    def handle(self, message: object) -> bool:
        """A chain message from upstream (control, keys …); False if not understood."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def key_of(message: Assign | Result | Failed) -> ChunkKey:
    return (message.task_id, message.chunk, message.attempt)


@dataclass
class _Held:
    assign: Assign
    handle: object
    """The executor's handle of the submitted chunk."""
    waiter: asyncio.Task | None = None


class LocalWork:
    """Chunks computed by this node's executor, as many at once as it has slots."""

    def __init__(self, executor: Executor, *, prefetch: int = 1) -> None:
        self.executor = executor
        self.prefetch = prefetch
        self._held: dict[ChunkKey, _Held] = {}
        self._emit: Emit = lambda message: None

    @property
    def slots(self) -> int:
        return self.executor.slots

    @property
    def window(self) -> int:
        return self.slots + self.prefetch

    @property
    def held(self) -> int:
        return len(self._held)

    def attach(self, emit: Emit) -> None:
        self._emit = emit

    async def start(self) -> None:
        """Start the executor (``ExecutorUnavailable`` if it cannot)."""
        await self.executor.start(self._resized)

    async def close(self) -> None:
        for held in self._held.values():
            self.executor.cancel(held.handle)
            if held.waiter is not None:
                held.waiter.cancel()
        self._held.clear()
        await self.executor.close()

    def _resized(self, slots: int) -> None:
        """The executor grew or shrank (a Dask cluster scaling): tell the upstream."""
        self._emit(Credit(self.window, slots))

    def assign(self, assign: Assign) -> None:
        job = ChunkJob(assign.operation, assign.start, assign.stop, assign.return_mode,
                       {k: dict(v) for k, v in assign.generated.items()}, dict(assign.arrays))
        held = _Held(assign, self.executor.submit(job))
        held.waiter = asyncio.get_running_loop().create_task(self._finish(held))
        self._held[key_of(assign)] = held

    def cancel(self, key: ChunkKey) -> None:
        held = self._held.get(key)
        if held is not None and self.executor.cancel(held.handle):
            self._held.pop(key, None)
            if held.waiter is not None:
                held.waiter.cancel()

    def upstream_lost(self) -> None:
        """Drop what has not started; chunks already computing finish and are offered later."""
        for key in list(self._held):
            self.cancel(key)

    def handle(self, message: object) -> bool:
        return False

    async def _finish(self, held: _Held) -> None:
        a = held.assign
        key = key_of(a)
        try:
            done = await self.executor.result(held.handle)
        except asyncio.CancelledError:
            return
        except WorkerCrashed as exc:
            if self._held.pop(key, None) is not None:
                self._emit(Failed(a.task_id, a.chunk, a.attempt, clean_reason(str(exc)), True))
            return
        except Exception as exc:  # a kernel bug: report it, never die of it
            if self._held.pop(key, None) is not None:
                self._emit(Failed(a.task_id, a.chunk, a.attempt, clean_reason(f"{type(exc).__name__}: {exc}")))
            return
        if self._held.pop(key, None) is None:
            return  # cancelled while computing
        self._emit(Result(a.task_id, a.chunk, a.attempt, done.ok, done.result, done.norms, done.elapsed_s))


def clean_reason(text: str, limit: int = 1000) -> str:
    """An exception's text made fit for a message: printable and bounded."""
    return "".join(c if c.isprintable() else " " for c in text)[:limit]
