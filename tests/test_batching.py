"""Several chunks per frame (protocol version 4): joining runs of messages, splitting batches,
and a channel that does both only in a session that speaks version 4."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nodes.ssh.channel import MessageChannel
from protocol.batching import JOIN_BYTES, join, split
from protocol.errors import RemoteProtocolError
from protocol.messages import (
    MAX_BATCH, Assign, Assigns, Cancel, Heartbeat, MessageReader, Result, Results, decode_message, encode_message,
)
from protocol.frames import Frame

GENERATED = {"a": {"count": 10_000, "shape": [8, 8], "seed": 3, "distribution": "normal", "dtype": "float64"}}
rng = np.random.default_rng(5)


def assign(chunk: int, task: str = "t1", size: int = 10, attempt: int = 1) -> Assign:
    return Assign(task, chunk, attempt, "det", chunk * size, (chunk + 1) * size, "full", GENERATED, {})


def result(chunk: int, task: str = "t1", size: int = 10, *, norms: bool = False, by: str = "") -> Result:
    ok = rng.random(size) > 0.2
    values = rng.standard_normal(size)
    return Result(task, chunk, 1, ok, None if norms else values, values if norms else None, 0.001 * chunk,
                  computed_by=by)


def wire(message: object) -> object:
    """The message as a peer decodes it."""
    reader = MessageReader()
    reader.feed(b"".join(bytes(piece) for piece in encode_message(message)))
    return reader.next_message()


def same(first: list, second: list) -> bool:
    return len(first) == len(second) and all(type(a) is type(b) and a == b for a, b in zip(first, second))


def test_a_run_of_one_tasks_assignments_travels_as_one_batch_and_splits_back() -> None:
    messages = [assign(chunk) for chunk in range(5)]
    (batch,) = join(messages)
    assert isinstance(batch, Assigns) and batch.chunks[1] == (1, 1, 10, 20)
    assert same(split(wire(batch)), messages)


def test_results_keep_their_attempts_items_times_and_computing_nodes() -> None:
    messages = [result(0, by="b"), result(1, size=3), result(2, size=0, by="c")]
    (batch,) = join(messages)
    assert isinstance(batch, Results) and batch.computed_by == ("b", "", "c")
    back = split(wire(batch))
    assert same(back, messages)
    assert [r.elapsed_s for r in back] == [r.elapsed_s for r in messages]


def test_order_is_kept_and_only_messages_that_fit_together_are_joined() -> None:
    messages = [assign(0), assign(1), Cancel("t1", 0, 1), assign(2), assign(3, task="t2"), assign(4, task="t2"),
                result(5), result(6, norms=True), Heartbeat(1.0, 2), result(7), result(8)]
    joined = join(messages)
    assert [type(m).__name__ for m in joined] == [
        "Assigns", "Cancel", "Assign", "Assigns", "Result", "Result", "Heartbeat", "Results"]
    assert same([m for batch in joined for m in split(batch)], messages)


def test_array_inputs_are_joined_one_chunk_after_another() -> None:
    b = rng.standard_normal((6, 4))
    messages = [Assign("t1", c, 1, "solve", 2 * c, 2 * c + 2, "full", GENERATED, {"b": b[2 * c:2 * c + 2]})
                for c in range(3)]
    (batch,) = join(messages)
    assert np.array_equal(batch.arrays["b"], b)
    assert same(split(wire(batch)), messages)


def test_large_messages_travel_alone_and_a_batch_holds_at_most_max_batch() -> None:
    size = JOIN_BYTES // 8  # each result's values alone are the whole budget
    big = [result(c, size=size) for c in range(2)]
    assert [type(m) for m in join(big)] == [Result, Result]
    many = join([assign(c, size=1) for c in range(MAX_BATCH + 3)])
    assert [len(m.chunks) if isinstance(m, Assigns) else 1 for m in many] == [MAX_BATCH, 3]


def test_results_of_different_dtypes_or_item_shapes_are_not_stacked() -> None:
    a = result(0)
    b = Result("t1", 1, 1, np.ones(10, bool), np.zeros(10, np.float32), None, 0.0)
    c = Result("t1", 2, 1, np.ones(10, bool), np.zeros((10, 2)), None, 0.0)
    assert [type(m) for m in join([a, b, c])] == [Result, Result, Result]


def frame(header: dict, payload: bytes = b"") -> Frame:
    return Frame(header, memoryview(payload))


@pytest.mark.parametrize("header, problem", [
    ({"task_id": "t", "chunks": []}, "expected 1 to 256"),
    ({"task_id": "t", "chunks": [[0, 1, 10]]}, "list of 4 values"),
    ({"task_id": "t", "chunks": [[0, 1, 2, -1.0]]}, "finite number"),
    ({"task_id": "t", "chunks": [[0, 1, 3, 0.1]], "computed_by": ["a", "b"]}, "computed_by names 2 nodes"),
    ({"task_id": "t", "chunks": [[0, 1, 2, 0.1]]}, "the arrays hold 3 items, the chunks 2"),
])
def test_a_results_frame_that_does_not_add_up_is_refused(header: dict, problem: str) -> None:
    header = {"type": "results", **header}
    payload = b""
    if "arrays" not in header:
        header["arrays"] = [{"name": "norms", "dtype": "<f8", "shape": [3]}, {"name": "ok", "dtype": "|b1", "shape": [3]}]
        payload = bytes(24 + 3)
    with pytest.raises(RemoteProtocolError, match=problem):
        decode_message(frame(header, payload))


def test_an_assigns_frame_with_a_backward_range_or_short_arrays_is_refused() -> None:
    base = {"type": "assigns", "task_id": "t", "operation": "solve", "return_mode": "full", "generated": GENERATED}
    with pytest.raises(RemoteProtocolError, match="start 9 is after stop 4"):
        decode_message(frame({**base, "chunks": [[0, 1, 9, 4]], "arrays": []}))
    short = {**base, "chunks": [[0, 1, 0, 2], [1, 1, 2, 4]], "arrays": [{"name": "b", "dtype": "<f8", "shape": [3, 4]}]}
    with pytest.raises(RemoteProtocolError, match="holds 3 items, the chunks have 4"):
        decode_message(frame(short, bytes(96)))


class _Pipe:
    """Both ends of a channel in one process: what one side writes, the other reads."""

    def __init__(self) -> None:
        self.data: asyncio.Queue[bytes] = asyncio.Queue()
        self.writes = 0

    def write(self, piece) -> None:
        self.writes += 1
        self.data.put_nowait(bytes(piece))

    async def read(self, size: int) -> bytes:
        return await self.data.get()


def channels(batching: bool) -> tuple[MessageChannel, MessageChannel, _Pipe]:
    pipe = _Pipe()
    sender = MessageChannel(None, pipe, lambda reason: None)  # type: ignore[arg-type]
    receiver = MessageChannel(pipe, None, lambda reason: None)  # type: ignore[arg-type]
    sender.batching = receiver.batching = batching
    return sender, receiver, pipe


async def test_a_version_4_channel_sends_one_turns_results_as_one_frame() -> None:
    sender, receiver, pipe = channels(batching=True)
    messages = [result(c) for c in range(6)]
    for message in messages:
        sender.send(message)
    await asyncio.sleep(0)  # the turn ends: one flush
    frames = MessageReader()
    raw = pipe.data.get_nowait()
    pipe.data.put_nowait(raw)
    frames.feed(raw)
    assert isinstance(frames.next_message(), Results) and frames.next_message() is None
    received = [await receiver.receive() for _ in messages]
    assert same(received, messages)


async def test_an_older_session_sends_single_frames_and_refuses_a_batch() -> None:
    sender, receiver, pipe = channels(batching=False)
    for message in (assign(0), assign(1)):
        sender.send(message)
    await asyncio.sleep(0)
    assert [type(await receiver.receive()) for _ in range(2)] == [Assign, Assign]
    pipe.write(b"".join(bytes(p) for p in encode_message(join([assign(2), assign(3)])[0])))
    with pytest.raises(RemoteProtocolError, match="assigns needs protocol version 4"):
        await receiver.receive()
