"""The messages of the node protocol: one frozen dataclass per message, checked when built.

Rules of this module:

- A message's wire name is its `TYPE`; its header is `{"type": TYPE, <fields>}`. Fields
  that are arrays travel in the frame payload instead, described by the header's
  `"arrays"` metadata (see `protocol.frames.pack_arrays`).
- Each field declares the check that validates and normalises it (`protocol.fields`), so
  a message that exists is a valid message: constructors raise `TypeError`/`ValueError`
  on bad values, and `decode_message` turns those into `RemoteProtocolError`.
- Decoding is strict: unknown types, missing or extra fields, a bool where an int belongs,
  a float where an int belongs, non-finite numbers — all refused.
- `Hello`, `Welcome`, `Reject` and `Error` keep these fields in every protocol version, so
  two versions can always tell each other apart and part cleanly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, TypeAlias

import numpy as np

from protocol import fields as check
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.fields import (  # noqa: F401  (re-exported: the limits are part of the messages' contract)
    FORBIDDEN_IN_TEXT,
    MAX_CHAIN,
    MAX_COUNT,
    MAX_INDEX,
    MAX_KEY_TEXT,
    MAX_NAME,
    MAX_NODE_KEYS,
    MAX_PRIORITY,
    MAX_SPEC_DEPTH,
    MAX_SUBTREE,
    MAX_TEXT,
    MAX_VERSION,
    Check,
)
from protocol.frames import (
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_PAYLOAD,
    Buffer,
    Frame,
    FrameDecoder,
    encode_frame,
    pack_arrays,
    short_repr,
    unpack_arrays,
)
from protocol.operations import RETURN_MODES

PROTOCOL_VERSION = 4
"""The version this code speaks first; see the changelog in docs/protocol.md."""
SUPPORTED_VERSIONS = (1, 2, 3, 4)
"""Every version a front-end or chain link built from this code accepts in hello."""
BATCHES_SINCE = 4
"""The protocol version that added ``assigns`` and ``results``."""
MAX_BATCH = 256
"""Chunks in one ``assigns`` or ``results``, at most."""
MAX_HEARTBEAT_S = 3600.0
MAX_DEADLINE_S = 366 * 86400.0
# Decode errors stay short enough to send back in an Error message.
MAX_ERROR_TEXT = 1000


def _field(check: Check, **kwargs: Any) -> Any:
    """Declare a message field together with the check that validates and normalises it."""
    return field(metadata={"check": check}, **kwargs)



def _default(spec: dataclasses.Field[Any]) -> Any:
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return spec.default


@dataclass(frozen=True)
class _Layout:
    """What a message class's fields are, worked out once per class (the hot path reads it)."""

    checks: tuple[tuple[str, Check], ...]
    header: tuple[tuple[str, bool, object], ...]
    """(name, added after version 1, default) of each field that travels in the header."""
    known: frozenset[str]
    required: frozenset[str]


_LAYOUTS: dict[type, _Layout] = {}


def _layout(cls: type[_Message]) -> _Layout:
    try:
        return _LAYOUTS[cls]
    except KeyError:
        pass
    specs = dataclasses.fields(cls)
    header = [f for f in specs if f.name not in cls.PAYLOAD_FIELDS]
    extra = {"arrays"} if cls.PAYLOAD_FIELDS else set()
    layout = _LAYOUTS[cls] = _Layout(
        checks=tuple((f.name, f.metadata["check"]) for f in specs),
        header=tuple((f.name, f.name in cls.LATER_FIELDS, _default(f)) for f in header),
        known=frozenset({f.name for f in header} | extra),
        required=frozenset({f.name for f in header if f.default is MISSING and f.default_factory is MISSING} | extra),
    )
    return layout


class _Message:
    """What every message shares: field checks on construction and the header mapping."""

    TYPE: ClassVar[str]
    # Declared so type checkers see every subclass as the dataclass it is.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    # Fields that travel as arrays in the payload rather than in the JSON header.
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = ()
    # Fields added after version 1: left off the wire when at their default, so a peer of
    # version 1 sees exactly the header it knows.
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        layout = _layout(type(self))
        for name, check in layout.checks:
            # Frozen: normalised values (int for np.int64, tuple for list) go in this way.
            object.__setattr__(self, name, check(name, getattr(self, name)))
        self._check_together()

    def _check_together(self) -> None:
        """Check rules that span several fields; none by default."""

    @classmethod
    def construct(cls, **values: object) -> Any:
        """Build a message from values already checked, every field given, none checked again
        (as pydantic's ``model_construct``): a chunk cut from a batch that passed its checks as a
        whole, an assignment made from a validated task. Anything else goes through the checks."""
        message = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(message, name, value)
        return message

    def _header_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {}
        for name, later, default in _layout(type(self)).header:
            value = getattr(self, name)
            if later and value == default:
                continue
            fields[name] = list(value) if isinstance(value, tuple) else value
        return fields

    def _payload_arrays(self) -> dict[str, np.ndarray]:
        """The arrays this message carries in its payload, in wire order."""
        return {}

    @classmethod
    def _fields_from_arrays(cls, arrays: dict[str, np.ndarray]) -> dict[str, object]:
        """Map the payload's arrays back to this message's fields; none by default."""
        return {}

    @classmethod
    def _from_wire(cls, fields: dict[str, object], payload: memoryview | bytes) -> _Message:
        layout = _layout(cls)
        known, required = layout.known, layout.required
        if missing := required - fields.keys():
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        if extra := fields.keys() - known:
            raise ValueError(f"unexpected {', '.join(short_repr(name) for name in sorted(extra))}")
        if cls.PAYLOAD_FIELDS:
            arrays = unpack_arrays(fields.pop("arrays"), payload)
        elif nbytes := memoryview(payload).nbytes:
            raise ValueError(f"{cls.TYPE} carries no payload, got {nbytes} bytes")
        else:
            arrays = {}
        return cls(**fields, **cls._fields_from_arrays(arrays))


class _ArrayMessage(_Message):
    """A message with arrays: equal to another when both would send the same frame.

    Comparing bytes rather than values makes NaN equal to itself and keeps `==` from
    returning an array.
    """

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self) or not isinstance(other, _ArrayMessage):
            return NotImplemented
        (my_meta, my_parts), (their_meta, their_parts) = (
            pack_arrays(msg._payload_arrays()) for msg in (self, other)
        )
        return (
            self._header_fields() == other._header_fields()
            and my_meta == their_meta
            and all(mine == theirs for mine, theirs in zip(my_parts, their_parts))
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Hello(_Message):
    """Node to front-end, first: who the node is and how many chunks it wants held."""

    TYPE: ClassVar[str] = "hello"
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("operations", "resources", "deadline_s")
    protocol_version: int = _field(check.integer(1, MAX_VERSION))
    name: str = _field(check.name())
    slots: int = _field(check.integer(0, MAX_COUNT))
    window: int = _field(check.integer(0, MAX_COUNT))
    software: str = _field(check.name(low=0), default="")
    via: tuple[str, ...] = _field(check.names(), default=())
    host_key: str = _field(check.key_text(), default="")
    """A chain link's public SSH host key (OpenSSH line), for the console to certify; "" if none."""
    operations: dict[str, str | float] = _field(check.labels(), default_factory=dict)
    """Version 3: the installed operations the node can run beyond the built-ins, with their versions."""
    resources: dict[str, str | float] = _field(check.labels(), default_factory=dict)
    """Version 3: what the node has that a task may require (``gpu: 1``, ``memory_gb: 64``)."""
    deadline_s: float | None = _field(check.optional(check.real(0.0, MAX_DEADLINE_S)), default=None)
    """Seconds from this hello until the node's walltime ends (a batch job's time limit);
    None, left off the wire, when it has no end. No chunk expected to outlast it is sent."""


@dataclass(frozen=True)
class Welcome(_Message):
    """Front-end to node: the node is in; its id and the heartbeat timing to keep."""

    TYPE: ClassVar[str] = "welcome"
    protocol_version: int = _field(check.integer(1, MAX_VERSION))
    node_id: str = _field(check.name())
    heartbeat_interval_s: float = _field(check.real(0.0, MAX_HEARTBEAT_S, low_open=True))
    heartbeat_timeout_s: float = _field(check.real(0.0, MAX_HEARTBEAT_S, low_open=True))
    instance: str = _field(check.name(low=0), default="")
    """Which run of the console issued this session's assignments: results kept across a
    reconnect are offered again only to the same instance."""
    host_certificate: str = _field(check.key_text(), default="")
    """A chain link's host key certified by the console, so nodes behind it can trust it."""

    def _check_together(self) -> None:
        if self.heartbeat_timeout_s < self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must not be shorter than heartbeat_interval_s")


@dataclass(frozen=True)
class Reject(_Message):
    """Front-end to node: the node is refused (say, a protocol version it cannot speak)."""

    TYPE: ClassVar[str] = "reject"
    reason: str = _field(check.text())
    protocol_version: int = _field(check.integer(1, MAX_VERSION))


@dataclass(frozen=True)
class Credit(_Message):
    """Node to front-end: how many chunks the node now wants held at once (0: no more)."""

    TYPE: ClassVar[str] = "credit"
    window: int = _field(check.integer(0, MAX_COUNT))
    slots: int | None = _field(check.optional(check.integer(0, MAX_COUNT)), default=None)
    """The node's slots now (a chain link's, counting the nodes behind it; a Dask cluster's threads); None: unchanged."""


def _check_inputs(generated: Mapping[str, object], arrays: Mapping[str, np.ndarray], items: int, what: str) -> None:
    """An assignment's inputs: at least one, each generated or an array of ``items`` items."""
    if both := generated.keys() & arrays.keys():
        raise ValueError(f"inputs {', '.join(sorted(both))} are both generated and arrays")
    if not generated and not arrays:
        raise ValueError("an assignment needs at least one input")
    for name, array in arrays.items():
        if array.shape[0] != items:
            raise ValueError(f"arrays.{name} holds {array.shape[0]} items, {what} {items}")


@dataclass(frozen=True, eq=False)
class Assign(_ArrayMessage):
    """Front-end to node: compute items [start, stop) of a task; one attempt at one chunk."""

    TYPE: ClassVar[str] = "assign"
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = ("arrays",)
    task_id: str = _field(check.identifier())
    chunk: int = _field(check.integer(0, MAX_INDEX))
    attempt: int = _field(check.integer(0, MAX_INDEX))
    operation: str = _field(check.identifier())
    start: int = _field(check.integer(0, MAX_INDEX))
    stop: int = _field(check.integer(0, MAX_INDEX))
    return_mode: str = _field(check.choice(*RETURN_MODES))
    generated: Mapping[str, Mapping[str, object]] = _field(check.generator_specs())
    arrays: Mapping[str, np.ndarray] = _field(check.input_arrays())

    def _check_together(self) -> None:
        if self.start > self.stop:
            raise ValueError(f"start {self.start} is after stop {self.stop}")
        _check_inputs(self.generated, self.arrays, self.stop - self.start, "the chunk has")

    def _payload_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)

    @classmethod
    def _fields_from_arrays(cls, arrays: dict[str, np.ndarray]) -> dict[str, object]:
        return {"arrays": arrays}


@dataclass(frozen=True, eq=False)
class Result(_ArrayMessage):
    """Node to front-end: the outcome of one attempt at a chunk, item by item."""

    TYPE: ClassVar[str] = "result"
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = ("ok", "result", "norms")
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("computed_by",)
    task_id: str = _field(check.identifier())
    chunk: int = _field(check.integer(0, MAX_INDEX))
    attempt: int = _field(check.integer(0, MAX_INDEX))
    ok: np.ndarray = _field(check.array(dtypes=frozenset({"|b1"}), ndim=1))
    result: np.ndarray | None = _field(check.optional(check.array(min_ndim=1)))
    norms: np.ndarray | None = _field(check.optional(check.array(dtypes=frozenset({"<f8"}), ndim=1)))
    elapsed_s: float = _field(check.real(0.0, math.inf))
    computed_by: str = _field(check.name(low=0), default="")
    """Version 2: for a result a chain link forwards, the node behind it that computed it,
    as the link reports it in ``subtree``; "" when the sender computed it itself."""

    def _check_together(self) -> None:
        values = self._values()
        if len(values) != 1:
            raise ValueError("a result carries exactly one of result and norms")
        (name, array), = values.items()
        if array.shape[0] != self.ok.shape[0]:
            raise ValueError(f"{name} holds {array.shape[0]} items for {self.ok.shape[0]} ok flags")

    def _values(self) -> dict[str, np.ndarray]:
        """The per-item values present: result or norms."""
        pairs = (("result", self.result), ("norms", self.norms))
        return {name: array for name, array in pairs if array is not None}

    def _payload_arrays(self) -> dict[str, np.ndarray]:
        # Wider dtypes first, so the float values start aligned in the receiver's buffer.
        return {**self._values(), "ok": self.ok}

    @classmethod
    def _fields_from_arrays(cls, arrays: dict[str, np.ndarray]) -> dict[str, object]:
        if unknown := arrays.keys() - set(cls.PAYLOAD_FIELDS):
            raise ValueError(f"unexpected arrays {', '.join(sorted(unknown))}")
        if "ok" not in arrays:
            raise ValueError("missing the ok array")
        return {"ok": arrays["ok"], "result": arrays.get("result"), "norms": arrays.get("norms")}


_INDEX = check.integer(0, MAX_INDEX)


@dataclass(frozen=True, eq=False)
class Assigns(_ArrayMessage):
    """Version 4, front-end to node: several chunks of one task, each its own attempt.

    Means exactly what one ``assign`` per entry of ``chunks`` would, in that order. Array
    inputs hold every chunk's items, one chunk after another.
    """

    TYPE: ClassVar[str] = "assigns"
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = ("arrays",)
    task_id: str = _field(check.identifier())
    operation: str = _field(check.identifier())
    return_mode: str = _field(check.choice(*RETURN_MODES))
    generated: Mapping[str, Mapping[str, object]] = _field(check.generator_specs())
    chunks: tuple[tuple[int, int, int, int], ...] = _field(
        check.rows(_INDEX, _INDEX, _INDEX, _INDEX, most=MAX_BATCH, what="[chunk, attempt, start, stop]"))
    arrays: Mapping[str, np.ndarray] = _field(check.input_arrays())

    def _check_together(self) -> None:
        for chunk, _, start, stop in self.chunks:
            if start > stop:
                raise ValueError(f"chunk {chunk}: start {start} is after stop {stop}")
        items = sum(stop - start for _, _, start, stop in self.chunks)
        _check_inputs(self.generated, self.arrays, items, "the chunks have")

    def _payload_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)

    @classmethod
    def _fields_from_arrays(cls, arrays: dict[str, np.ndarray]) -> dict[str, object]:
        return {"arrays": arrays}

    @classmethod
    def of(cls, assigns: list[Assign]) -> Assigns:
        """The batch of checked assignments of one task that share their operation and generated
        inputs (``protocol.batching`` says which fit together)."""
        first = assigns[0]
        arrays = {name: np.concatenate([a.arrays[name] for a in assigns]) for name in first.arrays}
        chunks = tuple((a.chunk, a.attempt, a.start, a.stop) for a in assigns)
        return cls.construct(task_id=first.task_id, operation=first.operation, return_mode=first.return_mode,
                             generated=first.generated, chunks=chunks, arrays=arrays)

    def split(self) -> list[Assign]:
        assigns, offset = [], 0
        for chunk, attempt, start, stop in self.chunks:
            end = offset + stop - start
            assigns.append(Assign.construct(
                task_id=self.task_id, chunk=chunk, attempt=attempt, operation=self.operation, start=start,
                stop=stop, return_mode=self.return_mode, generated=self.generated,
                arrays={name: array[offset:end] for name, array in self.arrays.items()}))
            offset = end
        return assigns


@dataclass(frozen=True, eq=False)
class Results(_ArrayMessage):
    """Version 4, node to front-end: the results of several attempts at chunks of one task.

    Means exactly what one ``result`` per entry of ``chunks`` would, in that order; the
    arrays hold every chunk's items, one chunk after another.
    """

    TYPE: ClassVar[str] = "results"
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = ("ok", "result", "norms")
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("computed_by",)
    task_id: str = _field(check.identifier())
    chunks: tuple[tuple[int, int, int, float], ...] = _field(
        check.rows(_INDEX, _INDEX, _INDEX, check.real(0.0, math.inf), most=MAX_BATCH,
                   what="[chunk, attempt, items, elapsed_s]"))
    ok: np.ndarray = _field(check.array(dtypes=frozenset({"|b1"}), ndim=1))
    result: np.ndarray | None = _field(check.optional(check.array(min_ndim=1)))
    norms: np.ndarray | None = _field(check.optional(check.array(dtypes=frozenset({"<f8"}), ndim=1)))
    computed_by: tuple[str, ...] = _field(check.list_of(check.name(low=0), MAX_BATCH, "names"), default=())
    """One per chunk, as ``result.computed_by``; left off the wire when every one is ""."""

    def _check_together(self) -> None:
        values = [array for array in (self.result, self.norms) if array is not None]
        if len(values) != 1:
            raise ValueError("results carry exactly one of result and norms")
        items = sum(row[2] for row in self.chunks)
        if self.ok.shape[0] != items or values[0].shape[0] != items:
            raise ValueError(f"the arrays hold {self.ok.shape[0]} items, the chunks {items}")
        if self.computed_by and len(self.computed_by) != len(self.chunks):
            raise ValueError(f"computed_by names {len(self.computed_by)} nodes for {len(self.chunks)} chunks")

    def _payload_arrays(self) -> dict[str, np.ndarray]:
        values = {"result": self.result} if self.result is not None else {"norms": self.norms}
        return {**values, "ok": self.ok}

    @classmethod
    def _fields_from_arrays(cls, arrays: dict[str, np.ndarray]) -> dict[str, object]:
        return Result._fields_from_arrays(arrays)

    @classmethod
    def of(cls, results: list[Result]) -> Results:
        """The batch of checked results of one task whose values stack: all ``result`` of one dtype
        and item shape, or all ``norms`` (``protocol.batching`` says which fit together)."""
        full = results[0].result is not None
        values = np.concatenate([r.result if full else r.norms for r in results])  # type: ignore[misc]
        names = tuple(r.computed_by for r in results)
        return cls.construct(task_id=results[0].task_id,
                             chunks=tuple((r.chunk, r.attempt, r.ok.shape[0], r.elapsed_s) for r in results),
                             ok=np.concatenate([r.ok for r in results]), result=values if full else None,
                             norms=None if full else values, computed_by=names if any(names) else ())

    def split(self) -> list[Result]:
        results, offset = [], 0
        names = self.computed_by or ("",) * len(self.chunks)
        for (chunk, attempt, items, elapsed_s), computed_by in zip(self.chunks, names):
            end = offset + items
            results.append(Result.construct(
                task_id=self.task_id, chunk=chunk, attempt=attempt, ok=self.ok[offset:end],
                result=None if self.result is None else self.result[offset:end],
                norms=None if self.norms is None else self.norms[offset:end],
                elapsed_s=elapsed_s, computed_by=computed_by))
            offset = end
        return results


@dataclass(frozen=True)
class Failed(_Message):
    """Node to front-end: one attempt at a chunk produced no result, and why."""

    TYPE: ClassVar[str] = "failed"
    task_id: str = _field(check.identifier())
    chunk: int = _field(check.integer(0, MAX_INDEX))
    attempt: int = _field(check.integer(0, MAX_INDEX))
    reason: str = _field(check.text())
    retryable: bool = _field(check.flag(), default=True)


@dataclass(frozen=True)
class Rejected(_Message):
    """Front-end to a node of version 2 or later: one of its results failed a check.

    The chunk goes to another node; the node's error count went up. ``tolerance`` is the
    entry of the tolerance table the result missed (docs/protocol.md), 0 for an exact rule.
    """

    TYPE: ClassVar[str] = "rejected"
    task_id: str = _field(check.identifier())
    chunk: int = _field(check.integer(0, MAX_INDEX))
    attempt: int = _field(check.integer(0, MAX_INDEX))
    reason: str = _field(check.text())
    tolerance: float = _field(check.real(0.0, 1.0), default=0.0)


@dataclass(frozen=True)
class Heartbeat(_Message):
    """Node to front-end, every heartbeat interval: still alive, and how many chunks it holds."""

    TYPE: ClassVar[str] = "heartbeat"
    sent_at: float = _field(check.real(-math.inf, math.inf))
    in_flight: int = _field(check.integer(0, MAX_COUNT))


@dataclass(frozen=True)
class Cancel(_Message):
    """Front-end to node: drop one attempt at a chunk; no answer to it is wanted any more."""

    TYPE: ClassVar[str] = "cancel"
    task_id: str = _field(check.identifier())
    chunk: int = _field(check.integer(0, MAX_INDEX))
    attempt: int = _field(check.integer(0, MAX_INDEX))


@dataclass(frozen=True)
class Drain(_Message):
    """Front-end to node: no new chunks will come; finish the ones held, then the session ends."""

    TYPE: ClassVar[str] = "drain"
    reason: str = _field(check.text(), default="")


@dataclass(frozen=True)
class Bye(_Message):
    """Either way: the sender closes the session cleanly and sends nothing more."""

    TYPE: ClassVar[str] = "bye"
    reason: str = _field(check.text(), default="")


@dataclass(frozen=True)
class Error(_Message):
    """Either way: the receiver broke the protocol; the sender closes the session next."""

    TYPE: ClassVar[str] = "error"
    code: str = _field(check.identifier())
    message: str = _field(check.text())


@dataclass(frozen=True)
class Subtree(_Message):
    """Chain link to its upstream: the nodes connected behind it, for the console to show."""

    TYPE: ClassVar[str] = "subtree"
    nodes: tuple[dict[str, object], ...] = _field(check.node_reports())


@dataclass(frozen=True)
class Control(_Message):
    """Upstream to a chain link: drain, kick, release or blame a node behind it.

    ``blame`` (version 2) counts one invalid result against the node: the console caught a
    wrong value the node computed and the link forwarded.
    """

    TYPE: ClassVar[str] = "control"
    action: str = _field(check.choice("drain", "kick", "release", "blame"))
    node: str = _field(check.name())


@dataclass(frozen=True)
class HostCertificate(_Message):
    """Console down the chain: a link's host key, certified, routed to it by name like ``control``."""

    TYPE: ClassVar[str] = "host_certificate"
    node: str = _field(check.name())
    certificate: str = _field(check.key_text())


@dataclass(frozen=True)
class NodeKeys(_Message):
    """Console to a chain link, passed down by every link: the node keys enrolled at the console.

    A link lets in exactly these keys and closes the sessions of keys that left the list,
    so a node enrolled once is accepted anywhere in the chain and a removed key nowhere.
    """

    TYPE: ClassVar[str] = "node_keys"
    keys: tuple[str, ...] = _field(check.key_lines())


@dataclass(frozen=True, eq=False)
class Submit(_ArrayMessage):
    """User to front-end, on the stdin of the ``submit`` command: a task with array inputs.

    A task of generated inputs alone travels as its JSON task file instead. The fields are
    a task file's, with ``generate`` inputs in ``generated`` and every other input as an
    array in the payload (first axis the items); the front-end validates the task as it
    validates a task file (``protocol.upload``).
    """

    TYPE: ClassVar[str] = "submit"
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = ("arrays",)
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("requires",)
    name: str = _field(check.name())
    operation: str = _field(check.identifier())
    generated: Mapping[str, Mapping[str, object]] = _field(check.generator_specs())
    arrays: Mapping[str, np.ndarray] = _field(check.input_arrays())
    return_mode: str = _field(check.choice(*RETURN_MODES))
    max_attempts: int = _field(check.integer(1, MAX_INDEX))
    chunk_size: int | None = _field(check.optional(check.integer(1, MAX_INDEX)), default=None)
    """Items per chunk; None: sized from measured speed ("auto")."""
    requires: dict[str, str | float] = _field(check.labels(16), default_factory=dict)
    """Version 3: what a node must have to get the task's chunks."""
    priority: int = _field(check.integer(-MAX_PRIORITY, MAX_PRIORITY), default=0)
    """Tasks of higher priority get nodes first (the task file's ``priority``)."""

    def _check_together(self) -> None:
        if both := self.generated.keys() & self.arrays.keys():
            raise ValueError(f"inputs {', '.join(sorted(both))} are both generated and arrays")
        if not self.generated and not self.arrays:
            raise ValueError("a task needs at least one input")

    def _payload_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)

    @classmethod
    def _fields_from_arrays(cls, arrays: dict[str, np.ndarray]) -> dict[str, object]:
        return {"arrays": arrays}


Message: TypeAlias = (
    Hello | Welcome | Reject | Credit | Assign | Assigns | Result | Results | Failed | Rejected | Heartbeat | Cancel
    | Drain | Bye | Error | Subtree | Control | HostCertificate | NodeKeys | Submit
)

MESSAGE_TYPES: dict[str, type[_Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Reject, Credit, Assign, Assigns, Result, Results, Failed, Rejected, Heartbeat,
                Cancel, Drain, Bye, Error, Subtree, Control, HostCertificate, NodeKeys, Submit)
}


def encode_message(
    msg: Message, *, max_header: int = DEFAULT_MAX_HEADER, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> list[Buffer]:
    """Return the pieces to write for one message's frame; arrays are not copied."""
    if not isinstance(msg, _Message):
        raise LocalProtocolError(f"{type(msg).__name__} is not a protocol message")
    meta, parts = pack_arrays(msg._payload_arrays())
    header: dict[str, object] = {"type": msg.TYPE, **msg._header_fields()}
    if msg.PAYLOAD_FIELDS:
        header["arrays"] = meta
    return encode_frame(header, parts, max_header=max_header, max_payload=max_payload)


def decode_message(frame: Frame) -> Message:
    """Return the message a frame holds; raise RemoteProtocolError if it is not a valid one."""
    fields = dict(frame.header)
    kind = fields.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {short_repr(kind)}")
    try:
        return cls._from_wire(fields, frame.payload)  # type: ignore[return-value]
    except (TypeError, ValueError, RemoteProtocolError) as exc:
        # Labels can quote keys the peer chose; keep the reason fit to send in an Error.
        reason = FORBIDDEN_IN_TEXT.sub("?", f"bad {kind} message: {exc}")
        raise RemoteProtocolError(reason[:MAX_ERROR_TEXT]) from None


class MessageReader:
    """Turn a byte stream into messages: a FrameDecoder followed by decode_message.

    Like the decoder, it reports a fault after the messages that preceded it, and keeps
    reporting it: a session that broke the protocol stays broken.
    """

    def __init__(
        self, *, max_header: int = DEFAULT_MAX_HEADER, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self._frames = FrameDecoder(max_header=max_header, max_payload=max_payload)
        self._error: RemoteProtocolError | None = None

    def feed(self, data: Buffer) -> None:
        """Take the next bytes of the stream."""
        self._frames.feed(data)

    def next_message(self) -> Message | None:
        """Return the next complete message, or None when more data is needed."""
        if self._error is not None:
            raise self._error
        try:
            frame = self._frames.next_frame()
            return None if frame is None else decode_message(frame)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def close(self) -> None:
        """Mark the end of the stream; raise if it ended in the middle of a frame."""
        self._frames.close()
