"""What the ``submit`` user command reads on stdin, both ways: a task as bytes, and back.

A task whose inputs are all ``generate`` specs travels as its JSON task file, so a plain
``ssh … submit < task.json`` is a complete client. A task with array inputs travels as one
frame holding a ``Submit`` message (JSON header, arrays in the payload), read by the same
``MessageReader`` as every other message. The first two bytes tell them apart: a frame
starts with the magic ``CC``, a JSON document never does.
"""

from __future__ import annotations

import json

from protocol.errors import RemoteProtocolError, TaskFileError
from protocol.frames import DEFAULT_MAX_HEADER, MAGIC, PREFIX_SIZE, Buffer
from protocol.inputs import GeneratedInput, format_bytes
from protocol.messages import MessageReader, Submit, encode_message
from protocol.taskfile import DEFAULT_LIMITS, Task, TaskLimits, parse_task_text, task_from_parts

MAX_TASK_TEXT = 64 * 1024 * 1024
"""The largest JSON task a front-end reads on stdin."""
MAX_UPLOAD = 1024 * 1024 * 1024
"""The largest payload of a ``submit`` frame (its array inputs): the one limit the client
frames with and the front-end accepts."""
MAX_UPLOAD_STREAM = PREFIX_SIZE + DEFAULT_MAX_HEADER + MAX_UPLOAD
"""The most bytes ``submit`` reads on stdin: one frame of the largest header and payload."""


def submit_message(task: Task) -> Submit:
    """The ``Submit`` message of a task: generated inputs as specs, the others as arrays."""
    generated = {n: s.to_spec() for n, s in task.inputs.items() if isinstance(s, GeneratedInput)}
    arrays = {n: s for n, s in task.inputs.items() if not isinstance(s, GeneratedInput)}
    return Submit(task.name, task.operation, generated, arrays, task.return_mode, task.max_attempts,
                  task.chunk_size, dict(task.requires))


def encode_upload(task: Task) -> list[Buffer]:
    """The bytes to send ``submit``: the JSON task file when every input is generated, else one frame."""
    message = submit_message(task)
    if message.arrays:
        payload = sum(array.nbytes for array in message.arrays.values())
        if payload > MAX_UPLOAD:
            raise TaskFileError([f"inputs: {format_bytes(payload)} of arrays, over the upload limit of "
                                 f"{format_bytes(MAX_UPLOAD)}; use generated inputs or split the task"])
        return encode_message(message, max_payload=MAX_UPLOAD)
    document = {
        "name": message.name, "operation": message.operation,
        "inputs": {name: {"generate": spec} for name, spec in message.generated.items()},
        "chunk_size": "auto" if message.chunk_size is None else message.chunk_size,
        "return": message.return_mode, "max_attempts": message.max_attempts,
        **({"requires": message.requires} if message.requires else {}),
    }
    return [json.dumps(document).encode()]


def task_from_message(message: Submit, limits: TaskLimits = DEFAULT_LIMITS) -> Task:
    """The task a ``Submit`` message holds, validated like a task file (TaskFileError if not)."""
    return task_from_parts(message.name, message.operation, message.generated, message.arrays,
                           message.chunk_size, message.return_mode, message.max_attempts,
                           requires=message.requires, limits=limits)


class UploadReader:
    """What ``submit`` reads on stdin, fed piece by piece as it arrives.

    A frame's bytes go straight into the frame decoder's buffer as they come, so an upload
    costs about one copy of itself: nothing is joined first and copied again. JSON text is
    kept in pieces and joined once; text growing past ``MAX_TASK_TEXT`` is refused as it
    arrives (``feed`` raises TaskFileError), anything else wrong is ``task()``'s to say.
    """

    def __init__(self) -> None:
        self._start = bytearray()  # the first bytes, until they tell a frame from JSON
        self._frames: MessageReader | None = None
        self._text: list[bytes] | None = None
        self._text_size = 0

    def feed(self, data: Buffer) -> None:
        """Take the next bytes of the upload."""
        view = memoryview(data).cast("B")
        if self._frames is None and self._text is None:
            wanted = len(MAGIC) - len(self._start)
            self._start += view[:wanted]
            view = view[wanted:]
            if len(self._start) < len(MAGIC):
                return
            self._choose()
        self._feed_chosen(view)

    def _choose(self) -> None:
        if bytes(self._start) == MAGIC:
            self._frames = MessageReader(max_header=DEFAULT_MAX_HEADER, max_payload=MAX_UPLOAD)
            self._frames.feed(self._start)
        else:
            self._text = [bytes(self._start)]
            self._text_size = len(self._start)

    def _feed_chosen(self, view: memoryview) -> None:
        if not view.nbytes:
            return
        if self._frames is not None:
            self._frames.feed(view)
            return
        assert self._text is not None
        self._text_size += view.nbytes
        if self._text_size > MAX_TASK_TEXT:
            raise TaskFileError([f"task: JSON over {MAX_TASK_TEXT} bytes; send arrays with chainconsole submit"])
        self._text.append(bytes(view))

    def task(self, limits: TaskLimits = DEFAULT_LIMITS) -> Task:
        """The task uploaded, validated like a task file; TaskFileError if it is not one."""
        if self._frames is None and self._text is None:
            self._choose()  # fewer bytes than a magic: whatever they are, they are text
        if self._text is not None:
            return parse_task_text(b"".join(self._text), allow_files=False, limits=limits)
        reader = self._frames
        assert reader is not None
        try:
            message = reader.next_message()
            reader.close()  # raises if the upload stopped in the middle of a frame
            if message is None or reader.next_message() is not None:
                raise RemoteProtocolError("expected exactly one submit frame")
            if not isinstance(message, Submit):
                raise RemoteProtocolError(f"expected a submit message, got {message.TYPE}")
        except RemoteProtocolError as exc:
            raise TaskFileError([f"upload: {exc}"]) from None
        return task_from_message(message, limits)


def decode_upload(data: Buffer | UploadReader, limits: TaskLimits = DEFAULT_LIMITS) -> Task:
    """The task ``submit`` read on stdin: JSON text, or one ``submit`` frame; TaskFileError if neither."""
    if not isinstance(data, UploadReader):
        reader = UploadReader()
        reader.feed(data)
        data = reader
    return data.task(limits)
