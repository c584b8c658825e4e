"""The messages of the node protocol: one frozen dataclass per message, checked when built.

Rules of this module:

- A message's wire name is its `TYPE`; its header is `{"type": TYPE, <fields>}`. Fields
  that are arrays travel in the frame payload instead, described by the header's
  `"arrays"` metadata (see `protocol.frames.pack_arrays`).
- Each field declares the check that validates and normalises it, so a message that exists
  is a valid message: constructors raise `TypeError`/`ValueError` on bad values, and
  `decode_message` turns those into `RemoteProtocolError`.
- Decoding is strict: unknown types, missing or extra fields, a bool where an int belongs,
  a float where an int belongs, non-finite numbers — all refused.
- `Hello`, `Welcome`, `Reject` and `Error` keep these fields in every protocol version, so
  two versions can always tell each other apart and part cleanly.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, TypeAlias

import numpy as np

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.frames import (
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_PAYLOAD,
    MAX_ARRAY_RANK,
    Buffer,
    Frame,
    FrameDecoder,
    canonical_dtype,
    encode_frame,
    pack_arrays,
    short_repr,
    unpack_arrays,
)
from protocol.operations import RETURN_MODES

PROTOCOL_VERSION = 1
MAX_NAME = 128
MAX_TEXT = 4096
MAX_VERSION = 65535
# slots, window and in_flight: a relay speaks for a whole subtree, so allow plenty.
MAX_COUNT = 2**20
# chunk numbers, attempts and item indexes stay exact in every JSON implementation.
MAX_INDEX = 2**53 - 1
MAX_CHAIN = 32
MAX_SUBTREE = 10_000
MAX_KEY_TEXT = 8192
# Enrolled node keys travel in one header (~100 bytes each): bounded well inside it.
MAX_NODE_KEYS = 500
MAX_HEARTBEAT_S = 3600.0
MAX_SPEC_DEPTH = 8
# Decode errors stay short enough to send back in an Error message.
MAX_ERROR_TEXT = 1000

# Task ids, operations, input names and error codes: safe in file names and log lines.
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Free text may span lines, but nothing that could drive a terminal or break UTF-8.
_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

Check: TypeAlias = Callable[[str, Any], Any]


def _integer(low: int, high: int) -> Check:
    def check(label: str, value: Any) -> int:
        # bool is an int subclass, and JSON true must never pass for 1.
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{label} must be an int, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{label} must be between {low} and {high}, got {short_repr(value)}")
        return int(value)

    return check


def _real(low: float, high: float, *, low_open: bool = False) -> Check:
    def check(label: str, value: Any) -> float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"{label} must be a number, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:  # an int too large for any float
            number = math.inf
        above_low = number > low if low_open else number >= low
        if not (math.isfinite(number) and above_low and number <= high):
            interval = f"{'(' if low_open else '['}{low}, {high}]"
            raise ValueError(f"{label} must be a finite number in {interval}, got {short_repr(value)}")
        return number

    return check


def _string(label: str, value: Any, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a string, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise ValueError(f"{label} must be {low} to {high} characters, got {len(value)}")
    return str(value)


def _identifier() -> Check:
    def check(label: str, value: Any) -> str:
        text = _string(label, value, 1, MAX_NAME)
        if not _IDENTIFIER.fullmatch(text):
            raise ValueError(f"{label} {short_repr(text)} must be letters, digits, '.', '_', '-'")
        return text

    return check


def _name(*, low: int = 1) -> Check:
    def check(label: str, value: Any) -> str:
        text = _string(label, value, low, MAX_NAME)
        if not text.isprintable():
            raise ValueError(f"{label} {short_repr(text)} must be printable")
        return text

    return check


def _text() -> Check:
    def check(label: str, value: Any) -> str:
        text = _string(label, value, 0, MAX_TEXT)
        if _FORBIDDEN_IN_TEXT.search(text):
            raise ValueError(f"{label} holds control characters or lone surrogates")
        return text

    return check


def _flag() -> Check:
    def check(label: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{label} must be a bool, got {type(value).__name__}")
        return bool(value)

    return check


def _choice(*options: str) -> Check:
    def check(label: str, value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"{label} must be one of {', '.join(options)}, got {short_repr(value)}")
        return value

    return check


def _names() -> Check:
    each = _name()

    def check(label: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{label} must be a list of names, got {type(value).__name__}")
        if len(value) > MAX_CHAIN:
            raise ValueError(f"{label} has {len(value)} entries, at most {MAX_CHAIN}")
        return tuple(each(f"{label}[{index}]", item) for index, item in enumerate(value))

    return check


def _plain_json(label: str, value: Any, depth: int = 0) -> Any:
    """Return value as plain JSON data (dicts, lists, finite numbers), or raise."""
    if depth > MAX_SPEC_DEPTH:
        raise ValueError(f"{label} is nested more than {MAX_SPEC_DEPTH} deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _real(-math.inf, math.inf)(label, value)
    if isinstance(value, (list, tuple)):
        return [_plain_json(f"{label}[{i}]", item, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"{label} keys must be strings")
        return {key: _plain_json(f"{label}.{key}", item, depth + 1) for key, item in value.items()}
    raise TypeError(f"{label} must be plain JSON data, got {type(value).__name__}")


def _generator_specs() -> Check:
    key = _identifier()

    def check(label: str, value: Any) -> dict[str, dict[str, object]]:
        if not isinstance(value, Mapping):
            raise TypeError(f"{label} must map input names to generator specs")
        specs = {}
        for name, spec in value.items():
            key(f"{label} key", name)
            if not isinstance(spec, Mapping):
                raise TypeError(f"{label}.{name} must be an object, got {type(spec).__name__}")
            specs[name] = _plain_json(f"{label}.{name}", spec)
        return specs

    return check


def _array(*, dtypes: frozenset[str] | None = None, ndim: int | None = None, min_ndim: int = 0) -> Check:
    def check(label: str, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{label} must be an ndarray, got {type(value).__name__}")
        dtype = canonical_dtype(value.dtype)
        if dtype is None or (dtypes is not None and dtype.str not in dtypes):
            raise ValueError(f"{label} has dtype {value.dtype}, not allowed here")
        if (ndim is not None and value.ndim != ndim) or not min_ndim <= value.ndim <= MAX_ARRAY_RANK:
            expected = ndim if ndim is not None else f"{min_ndim} to {MAX_ARRAY_RANK}"
            raise ValueError(f"{label} has {value.ndim} dimensions, expected {expected}")
        return value

    return check


def _optional(inner: Check) -> Check:
    def check(label: str, value: Any) -> Any:
        return None if value is None else inner(label, value)

    return check


def _input_arrays() -> Check:
    key = _identifier()
    item = _array(min_ndim=1)

    def check(label: str, value: Any) -> dict[str, np.ndarray]:
        if not isinstance(value, Mapping):
            raise TypeError(f"{label} must map input names to arrays")
        return {key(f"{label} key", name): item(f"{label}.{name}", a) for name, a in value.items()}

    return check


def _key_text() -> Check:
    """An OpenSSH public key or certificate line: short, printable, one line."""

    def check(label: str, value: Any) -> str:
        text = _string(label, value, 0, MAX_KEY_TEXT)
        if not all(c.isprintable() for c in text):
            raise ValueError(f"{label} must be one printable line")
        return text

    return check


_REPORT_FIELDS = {"name": str, "state": str, "slots": int, "in_flight": int, "items_done": int, "errors": int}
_REPORT_KEYS = {*_REPORT_FIELDS, "via", "host_key"}


def _node_reports() -> Check:
    name = _name()
    names = _names()
    count = _integer(0, MAX_INDEX)
    key_line = _key_text()

    def check(label: str, value: Any) -> tuple[dict[str, object], ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{label} must be a list")
        if len(value) > MAX_SUBTREE:
            raise ValueError(f"{label} lists {len(value)} nodes, at most {MAX_SUBTREE}")
        reports = []
        for index, item in enumerate(value):
            where = f"{label}[{index}]"
            if not isinstance(item, Mapping) or set(item) != _REPORT_KEYS:
                raise ValueError(f"{where} must have exactly {', '.join(sorted(_REPORT_KEYS))}")
            report: dict[str, object] = {}
            for field_name, kind in _REPORT_FIELDS.items():
                check_field = name if kind is str else count
                report[field_name] = check_field(f"{where}.{field_name}", item[field_name])
            report["via"] = list(names(f"{where}.via", item["via"]))
            report["host_key"] = key_line(f"{where}.host_key", item["host_key"])
            reports.append(report)
        return tuple(reports)

    return check


def _key_lines() -> Check:
    line = _key_text()

    def check(label: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{label} must be a list of public key lines")
        if len(value) > MAX_NODE_KEYS:
            raise ValueError(f"{label} has {len(value)} entries, at most {MAX_NODE_KEYS}")
        return tuple(line(f"{label}[{i}]", key) for i, key in enumerate(value))

    return check


def _field(check: Check, **kwargs: Any) -> Any:
    """Declare a message field together with the check that validates and normalises it."""
    return field(metadata={"check": check}, **kwargs)


class _Message:
    """What every message shares: field checks on construction and the header mapping."""

    TYPE: ClassVar[str]
    # Declared so type checkers see every subclass as the dataclass it is.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    # Fields that travel as arrays in the payload rather than in the JSON header.
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            checked = spec.metadata["check"](spec.name, getattr(self, spec.name))
            # Frozen: normalised values (int for np.int64, tuple for list) go in this way.
            object.__setattr__(self, spec.name, checked)
        self._check_together()

    def _check_together(self) -> None:
        """Check rules that span several fields; none by default."""

    def _header_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {}
        for spec in dataclasses.fields(self):
            if spec.name not in self.PAYLOAD_FIELDS:
                value = getattr(self, spec.name)
                fields[spec.name] = list(value) if isinstance(value, tuple) else value
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
        header_specs = [f for f in dataclasses.fields(cls) if f.name not in cls.PAYLOAD_FIELDS]
        known = {f.name for f in header_specs}
        required = {f.name for f in header_specs if f.default is MISSING}
        if cls.PAYLOAD_FIELDS:
            known.add("arrays")
            required.add("arrays")
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
    protocol_version: int = _field(_integer(1, MAX_VERSION))
    name: str = _field(_name())
    slots: int = _field(_integer(0, MAX_COUNT))
    window: int = _field(_integer(0, MAX_COUNT))
    software: str = _field(_name(low=0), default="")
    via: tuple[str, ...] = _field(_names(), default=())
    host_key: str = _field(_key_text(), default="")
    """A chain link's public SSH host key (OpenSSH line), for the console to certify; "" if none."""


@dataclass(frozen=True)
class Welcome(_Message):
    """Front-end to node: the node is in; its id and the heartbeat timing to keep."""

    TYPE: ClassVar[str] = "welcome"
    protocol_version: int = _field(_integer(1, MAX_VERSION))
    node_id: str = _field(_name())
    heartbeat_interval_s: float = _field(_real(0.0, MAX_HEARTBEAT_S, low_open=True))
    heartbeat_timeout_s: float = _field(_real(0.0, MAX_HEARTBEAT_S, low_open=True))
    instance: str = _field(_name(low=0), default="")
    """Which run of the console issued this session's assignments: results kept across a
    reconnect are offered again only to the same instance."""
    host_certificate: str = _field(_key_text(), default="")
    """A chain link's host key certified by the console, so nodes behind it can trust it."""

    def _check_together(self) -> None:
        if self.heartbeat_timeout_s < self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must not be shorter than heartbeat_interval_s")


@dataclass(frozen=True)
class Reject(_Message):
    """Front-end to node: the node is refused (say, a protocol version it cannot speak)."""

    TYPE: ClassVar[str] = "reject"
    reason: str = _field(_text())
    protocol_version: int = _field(_integer(1, MAX_VERSION))


@dataclass(frozen=True)
class Credit(_Message):
    """Node to front-end: how many chunks the node now wants held at once (0: no more)."""

    TYPE: ClassVar[str] = "credit"
    window: int = _field(_integer(0, MAX_COUNT))
    slots: int | None = _field(_optional(_integer(0, MAX_COUNT)), default=None)
    """A chain link's slots now, counting the nodes behind it; None: unchanged."""


@dataclass(frozen=True, eq=False)
class Assign(_ArrayMessage):
    """Front-end to node: compute items [start, stop) of a task; one attempt at one chunk."""

    TYPE: ClassVar[str] = "assign"
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = ("arrays",)
    task_id: str = _field(_identifier())
    chunk: int = _field(_integer(0, MAX_INDEX))
    attempt: int = _field(_integer(0, MAX_INDEX))
    operation: str = _field(_identifier())
    start: int = _field(_integer(0, MAX_INDEX))
    stop: int = _field(_integer(0, MAX_INDEX))
    return_mode: str = _field(_choice(*RETURN_MODES))
    generated: Mapping[str, Mapping[str, object]] = _field(_generator_specs())
    arrays: Mapping[str, np.ndarray] = _field(_input_arrays())

    def _check_together(self) -> None:
        if self.start > self.stop:
            raise ValueError(f"start {self.start} is after stop {self.stop}")
        if both := self.generated.keys() & self.arrays.keys():
            raise ValueError(f"inputs {', '.join(sorted(both))} are both generated and arrays")
        if not self.generated and not self.arrays:
            raise ValueError("an assignment needs at least one input")
        for name, array in self.arrays.items():
            if array.shape[0] != self.stop - self.start:
                raise ValueError(
                    f"arrays.{name} holds {array.shape[0]} items, the chunk has {self.stop - self.start}"
                )

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
    task_id: str = _field(_identifier())
    chunk: int = _field(_integer(0, MAX_INDEX))
    attempt: int = _field(_integer(0, MAX_INDEX))
    ok: np.ndarray = _field(_array(dtypes=frozenset({"|b1"}), ndim=1))
    result: np.ndarray | None = _field(_optional(_array(min_ndim=1)))
    norms: np.ndarray | None = _field(_optional(_array(dtypes=frozenset({"<f8"}), ndim=1)))
    elapsed_s: float = _field(_real(0.0, math.inf))

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


@dataclass(frozen=True)
class Failed(_Message):
    """Node to front-end: one attempt at a chunk produced no result, and why."""

    TYPE: ClassVar[str] = "failed"
    task_id: str = _field(_identifier())
    chunk: int = _field(_integer(0, MAX_INDEX))
    attempt: int = _field(_integer(0, MAX_INDEX))
    reason: str = _field(_text())
    retryable: bool = _field(_flag(), default=True)


@dataclass(frozen=True)
class Heartbeat(_Message):
    """Node to front-end, every heartbeat interval: still alive, and how many chunks it holds."""

    TYPE: ClassVar[str] = "heartbeat"
    sent_at: float = _field(_real(-math.inf, math.inf))
    in_flight: int = _field(_integer(0, MAX_COUNT))


@dataclass(frozen=True)
class Cancel(_Message):
    """Front-end to node: drop one attempt at a chunk; no answer to it is wanted any more."""

    TYPE: ClassVar[str] = "cancel"
    task_id: str = _field(_identifier())
    chunk: int = _field(_integer(0, MAX_INDEX))
    attempt: int = _field(_integer(0, MAX_INDEX))


@dataclass(frozen=True)
class Drain(_Message):
    """Front-end to node: no new chunks will come; finish the ones held, then the session ends."""

    TYPE: ClassVar[str] = "drain"
    reason: str = _field(_text(), default="")


@dataclass(frozen=True)
class Bye(_Message):
    """Either way: the sender closes the session cleanly and sends nothing more."""

    TYPE: ClassVar[str] = "bye"
    reason: str = _field(_text(), default="")


@dataclass(frozen=True)
class Error(_Message):
    """Either way: the receiver broke the protocol; the sender closes the session next."""

    TYPE: ClassVar[str] = "error"
    code: str = _field(_identifier())
    message: str = _field(_text())


@dataclass(frozen=True)
class Subtree(_Message):
    """Chain link to its upstream: the nodes connected behind it, for the console to show."""

    TYPE: ClassVar[str] = "subtree"
    nodes: tuple[dict[str, object], ...] = _field(_node_reports())


@dataclass(frozen=True)
class Control(_Message):
    """Upstream to a chain link: drain, kick or release a node behind it."""

    TYPE: ClassVar[str] = "control"
    action: str = _field(_choice("drain", "kick", "release"))
    node: str = _field(_name())


@dataclass(frozen=True)
class HostCertificate(_Message):
    """Console down the chain: a link's host key, certified, routed to it by name like ``control``."""

    TYPE: ClassVar[str] = "host_certificate"
    node: str = _field(_name())
    certificate: str = _field(_key_text())


@dataclass(frozen=True)
class NodeKeys(_Message):
    """Console to a chain link, passed down by every link: the node keys enrolled at the console.

    A link lets in exactly these keys and closes the sessions of keys that left the list,
    so a node enrolled once is accepted anywhere in the chain and a removed key nowhere.
    """

    TYPE: ClassVar[str] = "node_keys"
    keys: tuple[str, ...] = _field(_key_lines())


Message: TypeAlias = (
    Hello | Welcome | Reject | Credit | Assign | Result | Failed | Heartbeat | Cancel | Drain | Bye | Error
    | Subtree | Control | HostCertificate | NodeKeys
)

MESSAGE_TYPES: dict[str, type[_Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Reject, Credit, Assign, Result, Failed, Heartbeat, Cancel, Drain, Bye, Error,
                Subtree, Control, HostCertificate, NodeKeys)
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
        reason = _FORBIDDEN_IN_TEXT.sub("?", f"bad {kind} message: {exc}")
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
