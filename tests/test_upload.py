"""The ``submit`` upload: a task as the bytes ``submit`` reads on stdin, and back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import TaskFileError
from protocol.frames import Frame, encode_frame
from protocol.messages import Hello, Submit, decode_message, encode_message
from protocol.taskfile import Task, load_task_file, parse_task
from protocol.upload import UploadReader, decode_upload, encode_upload, submit_message

SAMPLES = Path(__file__).resolve().parent.parent / "sample_tasks"


def upload_of(task: Task) -> bytes:
    return b"".join(bytes(piece) for piece in encode_upload(task))


def assert_same_task(a: Task, b: Task) -> None:
    assert (a.name, a.operation, a.count, a.chunk_size, a.return_mode, a.max_attempts, a.priority) == (
        b.name, b.operation, b.count, b.chunk_size, b.return_mode, b.max_attempts, b.priority)
    assert a.inputs.keys() == b.inputs.keys()
    for name, data in a.inputs.items():
        if isinstance(data, np.ndarray):
            assert data.dtype == b.inputs[name].dtype and np.array_equal(data, b.inputs[name])
        else:
            assert data == b.inputs[name]


def test_a_task_with_array_inputs_travels_as_one_submit_frame() -> None:
    task = load_task_file(SAMPLES / "solve-file.json")
    data = upload_of(task)
    assert data[:2] == b"CC"
    assert_same_task(decode_upload(data), task)


def test_float32_arrays_and_chunk_sizes_survive_the_round_trip() -> None:
    task = parse_task({"name": "m32", "operation": "matmul", "chunk_size": 5, "return": "norms", "max_attempts": 2,
                       "inputs": {"a": {"inline": np.ones((10, 2, 3)).tolist()},
                                  "b": {"generate": {"count": 10, "shape": [3, 4], "seed": 1, "dtype": "float32"}}}})
    message = submit_message(task)
    assert set(message.arrays) == {"a"} and set(message.generated) == {"b"}
    assert_same_task(decode_upload(upload_of(task)), task)


@pytest.mark.parametrize("inputs", [
    {"a": {"inline": np.ones((4, 2, 2)).tolist()}},  # travels as a Submit frame
    {"a": {"generate": {"count": 4, "shape": [2, 2], "seed": 1}}},  # travels as JSON
], ids=["frame", "json"])
def test_a_tasks_priority_travels_with_it(inputs: dict) -> None:
    task = parse_task({"name": "urgent", "operation": "invert", "priority": -7, "inputs": inputs})
    assert task.priority == -7
    assert decode_upload(upload_of(task)).priority == -7


def test_a_task_of_generated_inputs_travels_as_its_json_task_file() -> None:
    task = load_task_file(SAMPLES / "invert-small.json")
    data = upload_of(task)
    document = json.loads(data)
    assert document["operation"] == "invert" and "generate" in document["inputs"]["a"]
    assert_same_task(decode_upload(data), task)


def test_the_upload_is_a_message_of_the_protocol() -> None:
    task = load_task_file(SAMPLES / "solve-file.json")
    frame = encode_message(submit_message(task))
    header = json.loads(bytes(frame[0])[12:])
    assert header["type"] == "submit" and header["arrays"][0]["name"] == "b"
    decoded = decode_message(Frame(header, b"".join(bytes(p) for p in frame[1:])))
    assert isinstance(decoded, Submit) and decoded == submit_message(task)


@pytest.mark.parametrize("sample", ["solve-file.json", "invert-small.json"])
@pytest.mark.parametrize("piece", [1, 2, 3, 1000])
def test_an_upload_read_piece_by_piece_is_the_same_task(sample: str, piece: int) -> None:
    task = load_task_file(SAMPLES / sample)
    data = upload_of(task)
    reader = UploadReader()
    for at in range(0, len(data), piece):
        reader.feed(data[at:at + piece])
    assert_same_task(reader.task(), task)


def test_json_text_too_large_is_refused_while_it_arrives() -> None:
    reader = UploadReader()
    reader.feed(b"{" + b" " * 1024)
    with pytest.raises(TaskFileError, match="JSON over"):
        for _ in range(64 * 1024):
            reader.feed(b" " * 1024)


def _frame(header: dict, payload: bytes = b"") -> bytes:
    return b"".join(bytes(piece) for piece in encode_frame(header, [payload]))


GOOD = upload_of(load_task_file(SAMPLES / "solve-file.json"))

BAD_UPLOADS = [
    (GOOD[:7], "upload: stream ended inside a frame"),
    (GOOD[:40], "upload: stream ended inside a frame"),
    (GOOD[:-1], "upload: stream ended inside a frame payload"),
    (GOOD + GOOD, "upload: expected exactly one submit frame"),
    (GOOD + b"x", "upload: stream ended inside a frame"),
    (b"CC\x09" + bytes(20), "upload: unsupported frame version 9"),
    (b"CC\x01\x00" + bytes(8), "upload: frame header is empty"),
    (_frame({"type": "submit"}), "upload: bad submit message: missing"),
    (_frame({"type": "nonsense"}), "upload: unknown message type 'nonsense'"),
    (b"".join(bytes(p) for p in encode_message(Hello(1, "n", 1, 1))), "upload: expected a submit message, got hello"),
    (b"\xff\xfe garbage", "not UTF-8 text (byte 0)"),
    (b"C garbage", "invalid JSON at line 1, column 1"),
    (b"", "invalid JSON at line 1, column 1"),
]


@pytest.mark.parametrize("data,problem", BAD_UPLOADS, ids=[p for _, p in BAD_UPLOADS])
def test_a_broken_upload_is_refused_with_one_clear_problem(data: bytes, problem: str) -> None:
    with pytest.raises(TaskFileError) as refused:
        decode_upload(data)
    assert len(refused.value.problems) == 1
    assert problem in refused.value.problems[0]


def test_an_upload_is_validated_like_a_task_file() -> None:
    arrays = {"a": np.ones((3, 2, 3))}
    data = b"".join(bytes(p) for p in encode_message(Submit("bad", "invert", {}, arrays, "full", 3)))
    with pytest.raises(TaskFileError, match="invert needs square matrices"):
        decode_upload(data)


def test_an_upload_fed_in_pieces_costs_about_one_copy_of_itself() -> None:
    """The front-end reads ``submit`` stdin piece by piece; nothing is joined and copied again."""
    import tracemalloc

    from protocol.upload import UploadReader

    arrays = {"a": np.ones((1024, 64, 128)), "b": np.ones((1024, 128, 2))}  # 65 MiB of matmul inputs
    stream = memoryview(b"".join(bytes(p) for p in encode_message(
        Submit("big", "matmul", {}, arrays, "norms", 3))))
    tracemalloc.start()
    try:
        reader = UploadReader()
        for pos in range(0, len(stream), 1 << 20):
            reader.feed(bytes(stream[pos : pos + (1 << 20)]))  # a fresh piece, as the channel gives
        task = reader.task()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert task.count == 1024 and np.array_equal(task.inputs["b"], arrays["b"])
    assert peak < 1.3 * len(stream)


@pytest.mark.parametrize("piece", [1, 2, 3, 1000])
def test_an_upload_may_arrive_in_pieces_of_any_size(piece: int) -> None:
    from protocol.upload import UploadReader

    for task in (load_task_file(SAMPLES / "solve-file.json"), load_task_file(SAMPLES / "invert-small.json")):
        data = upload_of(task)
        reader = UploadReader()
        for pos in range(0, len(data), piece):
            reader.feed(data[pos : pos + piece])
        assert_same_task(reader.task(), task)


def test_client_and_front_end_agree_on_one_upload_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task the client frames is one the front-end reads; a larger one is refused on the client."""
    import protocol.upload as upload
    from console.ssh import user_commands
    from protocol.frames import DEFAULT_MAX_HEADER, PREFIX_SIZE

    assert upload.MAX_UPLOAD_STREAM == PREFIX_SIZE + DEFAULT_MAX_HEADER + upload.MAX_UPLOAD
    assert user_commands.MAX_UPLOAD_STREAM is upload.MAX_UPLOAD_STREAM
    monkeypatch.setattr(upload, "MAX_UPLOAD", 1000 * 8)
    at_limit = parse_task({"name": "edge", "operation": "det", "inputs": {"a": {"inline": np.ones((10, 10, 10)).tolist()}}})
    data = upload_of(at_limit)
    assert len(data) <= PREFIX_SIZE + DEFAULT_MAX_HEADER + 8000
    assert decode_upload(data).count == 10
    over = parse_task({"name": "over", "operation": "det", "inputs": {"a": {"inline": np.ones((11, 10, 10)).tolist()}}})
    with pytest.raises(TaskFileError, match="over the upload limit"):
        encode_upload(over)
