"""A scriptable node for tests: speaks the real protocol over real SSH, misbehaves on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import numpy as np

from nodes.kernels import compute
from protocol.inputs import GeneratedInput
from protocol.batching import split
from protocol.messages import (
    PROTOCOL_VERSION, Assign, Failed, Heartbeat, Hello, MessageReader, Reject, Rejected, Result, Welcome,
    encode_message,
)

Tamper = Callable[[Assign, Result], "Result | Failed | None"]


class NodeRejected(Exception):
    """The front-end or link answered hello with ``reject``."""


class RecordingSession:
    """A connected node as the hub shell sees it, without a network: what it was sent."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)

    def close(self, reason: str, *, farewell: bool = True) -> None:
        pass


def honest(assign: Assign, result: Result) -> Result:
    return result


@dataclass
class FakeNode:
    """An in-process node: computes assigned chunks, then lets ``tamper`` change the answer."""

    address: tuple[str, int]
    key: Path
    host_key_pub: Path
    name: str = "fake"
    slots: int = 1
    tamper: Tamper = honest
    operations: dict = field(default_factory=dict)
    """Installed operations it says it runs (with versions)."""
    results_sent: int = 0
    rejections: list = field(default_factory=list)
    """Every ``rejected`` message received."""
    _conn: asyncssh.SSHClientConnection | None = None
    _process: asyncssh.SSHClientProcess | None = None
    _task: asyncio.Task | None = None
    _beat: asyncio.Task | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Welcome:
        self._conn = await asyncssh.connect(
            *self.address, username="node", client_keys=[str(self.key)],
            known_hosts=([str(self.host_key_pub)], [str(self.host_key_pub)], []), config=None, agent_path=None,
            gss_host=None)
        self._process = await self._conn.create_process(subsystem="chainconsole-node", encoding=None)
        self.send(Hello(PROTOCOL_VERSION, self.name, self.slots, self.slots + 1, operations=self.operations))
        reader = MessageReader()
        welcome = await self._next(reader)
        if isinstance(welcome, Reject):
            raise NodeRejected(welcome.reason)
        assert isinstance(welcome, Welcome), welcome
        self._task = asyncio.get_running_loop().create_task(self._serve(reader))
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat(welcome.heartbeat_interval_s))
        return welcome

    async def _heartbeat(self, interval: float) -> None:
        with contextlib.suppress(asyncssh.Error, ConnectionError, BrokenPipeError):
            while True:
                await asyncio.sleep(interval)
                self.send(Heartbeat(time.time(), 0))

    def send(self, message: object) -> None:
        assert self._process is not None
        for piece in encode_message(message):
            self._process.stdin.write(piece)

    async def _next(self, reader: MessageReader):
        assert self._process is not None
        while (message := reader.next_message()) is None:
            data = await self._process.stdout.read(1 << 20)
            if not data:
                return None
            reader.feed(data)
        return message

    async def _serve(self, reader: MessageReader) -> None:
        try:
            while (received := await self._next(reader)) is not None:
                for message in split(received):  # an ``assigns`` stands for one ``assign`` per chunk
                    if isinstance(message, Assign):
                        answer = self.tamper(message, await asyncio.to_thread(_compute, message))
                        if answer is not None:
                            self.send(answer)
                            self.results_sent += 1
                    elif isinstance(message, Rejected):
                        self.rejections.append(message)
        except (asyncssh.Error, ConnectionError, BrokenPipeError):
            pass
        finally:
            self.closed.set()

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()


def _compute(assign: Assign) -> Result:
    inputs = dict(assign.arrays)
    for name, spec in assign.generated.items():
        inputs[name] = GeneratedInput.from_spec(spec).items(assign.start, assign.stop)
    out = compute(assign.operation, inputs, assign.return_mode)
    return Result(assign.task_id, assign.chunk, assign.attempt, out.ok, out.result, out.norms, 0.01)


def corrupt(assign: Assign, result: Result) -> Result:
    """Nudge every value by 0.1%: plausible-looking, and wrong."""
    values = result.result if result.result is not None else result.norms
    bent = np.asarray(values) * 1.001
    return Result(result.task_id, result.chunk, result.attempt, result.ok,
                  bent if result.result is not None else None, bent if result.norms is not None else None,
                  result.elapsed_s)


def fail_chunk_zero(assign: Assign, result: Result) -> Result | Failed:
    """A poison chunk: item range 0.. always 'crashes' this node."""
    if assign.start == 0:
        return Failed(assign.task_id, assign.chunk, assign.attempt, "worker process died (simulated)")
    return result


def never_answer(assign: Assign, result: Result) -> None:
    """A node that takes work and sits on it, heartbeating all along."""
    return None


def _with_values(result: Result, values: np.ndarray, ok: np.ndarray | None = None) -> Result:
    full = result.result is not None
    return Result(result.task_id, result.chunk, result.attempt, result.ok if ok is None else ok,
                  values if full else None, None if full else values, result.elapsed_s)


def _values(result: Result) -> np.ndarray:
    return np.array(result.result if result.result is not None else result.norms)


def one_item_per_chunk(assign: Assign, result: Result) -> Result:
    """Every value right but one item per chunk, nudged by 1% (a different item each chunk)."""
    values = _values(result)
    values[(assign.chunk * 7) % len(values)] *= 1.01
    return _with_values(result, values)


def nan_marked_ok(assign: Assign, result: Result) -> Result:
    """Two items per chunk NaN (or inf), still marked ok."""
    values = _values(result)
    values[0] = np.nan
    values[-1] = np.inf
    return _with_values(result, values, np.ones_like(result.ok))


def scale_invert(assign: Assign, result: Result) -> Result:
    """Every inverse ×(1 + 1e-5): a tiny, uniform lie."""
    return _with_values(result, (_values(result) * (1 + 1e-5)).astype(_values(result).dtype))


def scale_slightly(assign: Assign, result: Result) -> Result:
    """Every value ×1.001: det and norms have no cheap check of every item."""
    return _with_values(result, (_values(result) * 1.001).astype(_values(result).dtype))


def some_chunks(assign: Assign, result: Result) -> Result:
    """Every value ×1.001 in one chunk of three, honest in the others."""
    return scale_slightly(assign, result) if assign.chunk % 3 == 1 else result


def keep_power_sums(assign: Assign, result: Result) -> Result:
    """Eigenvalues or singular values changed, keeping each item's sum, sum of squares and order.

    Three values are turned about the (1, 1, 1) axis, which keeps their sum and the sum of
    their squares; sorting again keeps the order.
    """
    values = _values(result).astype(np.float64)
    descending = values.shape[1] > 1 and values[0, 0] > values[0, -1]
    for item in values:
        picked = item[[0, len(item) // 2, -1]]
        mean = picked.mean()
        d = picked - mean
        axis = np.ones(3) / np.sqrt(3)
        angle = 0.7
        turned = d * np.cos(angle) + np.cross(axis, d) * np.sin(angle) + axis * (axis @ d) * (1 - np.cos(angle))
        item[[0, len(item) // 2, -1]] = turned + mean
        item.sort()
        if descending:
            item[:] = item[::-1]
    return _with_values(result, values.astype(_values(result).dtype))
