"""Several chunks per frame (protocol version 4): runs of small messages joined, batches split.

A sender joins each run of consecutive ``assign`` messages of one task (same operation,
return mode and generated inputs), and each run of consecutive ``result`` messages of one
task (same kind of values), into one ``assigns`` or ``results``. A receiver splits a batch
back into the messages it stands for, in order. Every chunk keeps its own attempt, lease and
result: a batch only saves a frame, a header and a round of checks per chunk.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.messages import MAX_BATCH, Assign, Assigns, Result, Results

JOIN_BYTES = 1 << 20
"""Arrays of a batch, at most: larger messages travel alone (joining them would copy a lot to save little)."""
JOIN_NAMES = 16 * 1024
"""Characters of ``computed_by`` names in one batch, at most, so its header stays well inside the limit."""

Joinable = Assign | Result


def joinable(message: object) -> bool:
    """Whether a message may travel in a batch."""
    return isinstance(message, (Assign, Result)) and _nbytes(message) <= JOIN_BYTES


def join(messages: Iterable[object]) -> list[object]:
    """The same messages in the same order, each run of ones that fit together made one batch."""
    joined: list[object] = []
    run: list[Joinable] = []
    kind: tuple | None = None
    size = names = 0

    def end_run() -> None:
        if len(run) > 1:
            joined.append(Assigns.of(run) if isinstance(run[0], Assign) else Results.of(run))  # type: ignore[arg-type]
        else:
            joined.extend(run)
        run.clear()

    for message in messages:
        nbytes = _nbytes(message) if isinstance(message, (Assign, Result)) else JOIN_BYTES + 1
        if nbytes > JOIN_BYTES:  # travels alone
            end_run()
            joined.append(message)
            continue
        name = len(message.computed_by) if isinstance(message, Result) else 0
        this = _kind(message)
        if not (run and len(run) < MAX_BATCH and size + nbytes <= JOIN_BYTES and names + name <= JOIN_NAMES
                and this == kind):
            end_run()
            size = names = 0
            kind = this
        run.append(message)
        size, names = size + nbytes, names + name
    end_run()
    return joined


def split(message: object) -> list[object]:
    """The messages a batch stands for, in order; any other message alone."""
    if isinstance(message, (Assigns, Results)):
        return message.split()  # type: ignore[return-value]
    return [message]


def _kind(message: Joinable) -> tuple:
    """What messages of one batch share: their type and task, and what their arrays must match in.

    For assignments also the operation, return mode and generated inputs; for results
    whether they carry full values or norms.
    """
    if isinstance(message, Assign):
        return (Assign, message.task_id, message.operation, message.return_mode, message.generated,
                tuple(message.arrays), _array_kinds(message.arrays.values()))
    return (Result, message.task_id, message.result is None, _array_kinds([_values(message)]))


def _values(result: Result):
    return result.result if result.result is not None else result.norms


def _array_kinds(arrays) -> tuple[tuple, ...]:
    """What must match for arrays to be stacked without a conversion: dtype and item shape."""
    return tuple((array.dtype.str, array.shape[1:]) for array in arrays)


def _nbytes(message: object) -> int:
    if isinstance(message, Assign):
        return sum(array.nbytes for array in message.arrays.values())
    if isinstance(message, Result):
        values = _values(message)
        return message.ok.nbytes + (values.nbytes if values is not None else 0)
    return 0
