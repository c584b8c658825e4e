"""The frame codec: bytes to frames and back, with no I/O (sans-I/O, like h11).

A frame is a fixed 12-byte prefix, a UTF-8 JSON object (the header) and a raw binary
payload. Arrays travel in the payload, described by metadata in the header; they never
travel as JSON lists.

    offset  size  field
    0       2     magic b"CC"
    2       1     frame format version, 1
    3       1     reserved, 0
    4       4     header length, uint32 big-endian
    8       4     payload length, uint32 big-endian
    12      H     header: UTF-8 JSON object
    12+H    P     payload

Rules of this module:

- Every length is checked against a limit as soon as the prefix is in, so an oversized
  frame is refused before any of it is buffered.
- Whatever the peer sends can only ever raise `RemoteProtocolError`; whatever we are asked
  to send that breaks the rules raises `LocalProtocolError`.
- The payload is copied exactly once, from the fed bytes into one buffer, and decoded
  arrays are zero-copy views of that buffer. The buffer grows as bytes arrive, never
  from the announced length alone, so a peer that announces a huge payload and sends
  little costs little.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from protocol import strict_json
from protocol.errors import LocalProtocolError, RemoteProtocolError

Buffer: TypeAlias = bytes | bytearray | memoryview

MAGIC = b"CC"
FRAME_VERSION = 1
DEFAULT_MAX_HEADER = 64 * 1024
DEFAULT_MAX_PAYLOAD = 512 * 1024 * 1024

# Lengths on the wire are uint32, so a limit can never exceed what the prefix can say.
_UINT32_MAX = 2**32 - 1
_PREFIX = struct.Struct(">2sBBII")
PREFIX_SIZE = _PREFIX.size

# The canonical wire spelling of each allowed dtype: explicit little-endian numpy `str`.
ARRAY_DTYPES: dict[str, np.dtype] = {
    np.dtype(name).newbyteorder("<").str: np.dtype(name).newbyteorder("<")
    for name in ("float64", "float32", "bool", "int64", "uint8")
}
_CANONICAL: dict[np.dtype, np.dtype] = {
    **{np.dtype(name): dtype for name, dtype in ARRAY_DTYPES.items()},
    **{dtype.newbyteorder(">"): dtype for dtype in ARRAY_DTYPES.values()},
    **{np.dtype(dtype.name): dtype for dtype in ARRAY_DTYPES.values()},
}
"""Every spelling of an allowed dtype, to its wire dtype (looked up per array, so a dict)."""
MAX_ARRAY_RANK = 8
MAX_ARRAY_NAME = 128
# A zero-size array may still have huge other dimensions; numpy refuses shapes whose
# extent overflows, so bound it ourselves and report a clear reason instead.
_MAX_ARRAY_EXTENT = 2**62


_HEADER_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
"""Built once: json.dumps with these arguments would build an encoder on every call."""


def short_repr(value: object, limit: int = 40) -> str:
    """A repr cut to `limit` characters, for error messages about whatever a peer sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its JSON header and its raw payload."""

    header: dict[str, object]
    payload: memoryview | bytes


def encode_frame(
    header: Mapping[str, object],
    payload_parts: Sequence[Buffer] = (),
    *,
    max_header: int = DEFAULT_MAX_HEADER,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> list[Buffer]:
    """Return the pieces to write for one frame; payload parts are passed through uncopied."""
    if not all(isinstance(key, str) for key in header):
        raise LocalProtocolError("frame header keys must be strings")
    try:
        text = _HEADER_ENCODER.encode(dict(header))
        header_bytes = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"frame header is not plain finite JSON: {exc}") from None
    try:
        # A byte view makes len() the byte count, whatever the shape of the source buffer.
        parts = [memoryview(part).cast("B") for part in payload_parts]
    except TypeError as exc:
        raise LocalProtocolError(f"payload part is not a contiguous buffer: {exc}") from None
    payload_size = sum(part.nbytes for part in parts)
    if len(header_bytes) > max_header:
        raise LocalProtocolError(f"frame header of {len(header_bytes)} bytes exceeds {max_header}")
    if payload_size > max_payload:
        raise LocalProtocolError(f"frame payload of {payload_size} bytes exceeds {max_payload}")
    prefix = _PREFIX.pack(MAGIC, FRAME_VERSION, 0, len(header_bytes), payload_size)
    return [prefix + header_bytes, *(part for part in parts if part.nbytes)]


JOIN_LIMIT = 256 * 1024
"""Small pieces are joined into writes of up to this size: an SSH channel sends each write
as its own packet (with its own encryption and system call), so many small frames in one
write cost a fraction of a write each."""
LARGE_PIECE = 64 * 1024
"""A piece at least this large is written on its own, uncopied."""


def join_pieces(pieces: Sequence[Buffer], limit: int = JOIN_LIMIT, large: int = LARGE_PIECE) -> list[Buffer]:
    """The pieces of one or more frames as few writes: runs of small pieces joined, large ones as they are."""
    out: list[Buffer] = []
    run: list[Buffer] = []
    size = 0
    for piece in pieces:
        n = memoryview(piece).nbytes
        if n >= large or size + n > limit:
            if run:
                out.append(run[0] if len(run) == 1 else b"".join(run))
                run, size = [], 0
            if n >= large:
                out.append(piece)
                continue
        run.append(piece)
        size += n
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out


class _Stage(enum.Enum):
    """Which part of a frame the decoder is collecting."""

    PREFIX = enum.auto()
    HEADER = enum.auto()
    PAYLOAD = enum.auto()


class FrameDecoder:
    """Turn a byte stream into frames; feed bytes in, take frames out.

    Errors are reported in stream order: frames completed before the fault are returned
    by `next_frame` first, then it raises `RemoteProtocolError` (and keeps raising it).
    """

    def __init__(
        self, *, max_header: int = DEFAULT_MAX_HEADER, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        for name, limit in (("max_header", max_header), ("max_payload", max_payload)):
            if not 0 <= limit <= _UINT32_MAX:
                raise ValueError(f"{name} must be between 0 and {_UINT32_MAX}, got {limit}")
        self._max_header = max_header
        self._max_payload = max_payload
        self._frames: deque[Frame] = deque()
        self._error: RemoteProtocolError | None = None
        self._closed = False
        self._stage = _Stage.PREFIX
        # Prefix and header bytes, bounded by the header limit; payloads never go here.
        self._head = bytearray()
        self._header_size = 0
        self._payload_size = 0
        self._header: dict[str, object] = {}
        self._payload = bytearray()
        self._payload_filled = 0

    @property
    def payload_buffer_size(self) -> int:
        """Bytes held for the payload being collected: grows with what arrived, not what was announced."""
        return len(self._payload)

    def feed(self, data: Buffer) -> None:
        """Take the next bytes of the stream; parse as far as they go."""
        if self._closed:
            raise LocalProtocolError("feed() after close()")
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view) and self._error is None:
            if self._stage is _Stage.PAYLOAD:
                pos = self._fill_payload(view, pos)
            else:
                pos = self._fill_head(view, pos)

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None when more data is needed."""
        if self._frames:
            return self._frames.popleft()
        if self._error is not None:
            raise self._error
        return None

    def close(self) -> None:
        """Mark the end of the stream; raise if it ended in the middle of a frame."""
        self._closed = True
        if self._error is not None:
            return  # already reported by next_frame, in stream order
        if self._stage is _Stage.PAYLOAD:
            self._error = RemoteProtocolError(
                f"stream ended inside a frame payload ({self._payload_filled} of "
                f"{self._payload_size} bytes)"
            )
        elif self._head:
            self._error = RemoteProtocolError(
                f"stream ended inside a frame ({len(self._head)} bytes of prefix and header)"
            )
        if self._error is not None:
            raise self._error

    def _fill_head(self, view: memoryview, pos: int) -> int:
        """Collect prefix or header bytes from view[pos:]; return the new position."""
        wanted = PREFIX_SIZE if self._stage is _Stage.PREFIX else PREFIX_SIZE + self._header_size
        take = min(wanted - len(self._head), len(view) - pos)
        self._head += view[pos : pos + take]
        if len(self._head) == wanted:
            try:
                if self._stage is _Stage.PREFIX:
                    self._read_prefix()
                else:
                    self._read_header()
            except RemoteProtocolError as exc:
                self._error = exc
        return pos + take

    def _read_prefix(self) -> None:
        magic, version, reserved, header_size, payload_size = _PREFIX.unpack(self._head)
        if magic != MAGIC:
            raise RemoteProtocolError(f"bad frame magic {bytes(magic)!r}, expected {MAGIC!r}")
        if version != FRAME_VERSION:
            raise RemoteProtocolError(f"unsupported frame version {version}")
        if reserved != 0:
            raise RemoteProtocolError(f"reserved frame byte is {reserved}, expected 0")
        if header_size > self._max_header:
            raise RemoteProtocolError(
                f"frame header of {header_size} bytes exceeds the limit of {self._max_header}"
            )
        if payload_size > self._max_payload:
            raise RemoteProtocolError(
                f"frame payload of {payload_size} bytes exceeds the limit of {self._max_payload}"
            )
        if header_size == 0:
            raise RemoteProtocolError("frame header is empty")
        self._header_size = header_size
        self._payload_size = payload_size
        self._stage = _Stage.HEADER

    def _read_header(self) -> None:
        self._header = _parse_header(self._head[PREFIX_SIZE:])
        self._head.clear()
        self._stage = _Stage.PAYLOAD
        # Never allocated from the announced length alone: the buffer grows as bytes come.
        self._payload = bytearray()
        self._payload_filled = 0
        if not self._payload_size:
            self._finish_frame()

    def _fill_payload(self, view: memoryview, pos: int) -> int:
        """Append payload bytes from view[pos:] to the frame's buffer; return the new position."""
        take = min(self._payload_size - self._payload_filled, len(view) - pos)
        # Appending grows the bytearray in place (realloc with headroom, mremap for large
        # ones): one copy of what arrived, and never more memory than arrived plus an eighth.
        self._payload += view[pos : pos + take]
        self._payload_filled += take
        if self._payload_filled == self._payload_size:
            self._finish_frame()
        return pos + take

    def _finish_frame(self) -> None:
        self._frames.append(Frame(self._header, memoryview(self._payload)))
        # Let go of the payload: the frame's owner decides how long it lives.
        self._header = {}
        self._payload = bytearray()
        self._stage = _Stage.PREFIX


def _parse_header(raw: bytes | bytearray) -> dict[str, object]:
    """Decode a frame header: a UTF-8 JSON object with finite numbers and no repeated keys."""
    try:
        value = strict_json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"frame header is not UTF-8: {exc.reason}") from None
    except RecursionError:
        raise RemoteProtocolError("frame header JSON is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError and StrictJsonError
        raise RemoteProtocolError(f"frame header is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"frame header is a JSON {type(value).__name__}, not an object")
    return value


def canonical_dtype(dtype: np.dtype) -> np.dtype | None:
    """Return the wire dtype for an allowed dtype of either byte order, else None."""
    try:
        return _CANONICAL[dtype]
    except KeyError:
        return ARRAY_DTYPES.get(dtype.newbyteorder("<").str)
    except TypeError:  # not hashable: not a dtype we know
        return None


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[list[dict], list[memoryview]]:
    """Describe arrays for a header and return their bytes as payload parts, in order."""
    meta: list[dict] = []
    parts: list[memoryview] = []
    for name, array in arrays.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_ARRAY_NAME:
            raise LocalProtocolError(f"array name {short_repr(name)} must be 1 to {MAX_ARRAY_NAME} chars")
        if not isinstance(array, np.ndarray):
            raise LocalProtocolError(f"array {name!r} is a {type(array).__name__}, not an ndarray")
        dtype = canonical_dtype(array.dtype)
        if dtype is None:
            raise LocalProtocolError(f"array {name!r} has dtype {array.dtype}, not allowed on the wire")
        if array.ndim > MAX_ARRAY_RANK:
            raise LocalProtocolError(f"array {name!r} has rank {array.ndim} > {MAX_ARRAY_RANK}")
        # Copies only when the array is not already C-contiguous little-endian.
        contiguous = np.asarray(array, dtype=dtype, order="C")
        meta.append({"name": name, "dtype": dtype.str, "shape": list(contiguous.shape)})
        # memoryview refuses to cast zero-size arrays; they contribute no bytes anyway.
        parts.append(memoryview(contiguous).cast("B") if contiguous.size else memoryview(b""))
    return meta, parts


def unpack_arrays(meta: object, payload: memoryview | bytes) -> dict[str, np.ndarray]:
    """Return the arrays a header's metadata describes, as zero-copy views of the payload."""
    if not isinstance(meta, list):
        raise RemoteProtocolError("array metadata is not a list")
    view = memoryview(payload).cast("B")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for index, entry in enumerate(meta):
        name, dtype, shape = _array_entry(index, entry)
        if name in arrays:
            raise RemoteProtocolError(f"array {name!r} appears twice")
        count = math.prod(shape)
        size = count * dtype.itemsize
        if size > len(view) - offset:
            raise RemoteProtocolError(
                f"array {name!r} needs {size} bytes, only {len(view) - offset} left in the payload"
            )
        array = np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)
        if dtype.kind == "b" and count and array.view(np.uint8).max() > 1:
            # Any byte other than 0 and 1 would be a bool that is neither True nor False.
            raise RemoteProtocolError(f"bool array {name!r} holds bytes other than 0 and 1")
        arrays[name] = array
        offset += size
    if offset != len(view):
        raise RemoteProtocolError(f"payload has {len(view) - offset} bytes beyond its arrays")
    return arrays


def _array_entry(index: int, entry: object) -> tuple[str, np.dtype, tuple[int, ...]]:
    """Validate one array's metadata: name, dtype and shape."""
    if not isinstance(entry, dict) or entry.keys() != {"name", "dtype", "shape"}:
        raise RemoteProtocolError(f"array metadata #{index} must be an object of name, dtype, shape")
    name, dtype_name, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_ARRAY_NAME:
        raise RemoteProtocolError(f"array #{index} name must be a string of 1 to {MAX_ARRAY_NAME} chars")
    if not isinstance(dtype_name, str) or dtype_name not in ARRAY_DTYPES:
        raise RemoteProtocolError(
            f"array {name!r} dtype {short_repr(dtype_name)} is not one of {', '.join(ARRAY_DTYPES)}"
        )
    if not isinstance(shape, list) or len(shape) > MAX_ARRAY_RANK:
        raise RemoteProtocolError(f"array {name!r} shape must be a list of at most {MAX_ARRAY_RANK} ints")
    if not all(type(dim) is int and dim >= 0 for dim in shape):
        raise RemoteProtocolError(f"array {name!r} shape {short_repr(shape)} must hold non-negative ints")
    dtype = ARRAY_DTYPES[dtype_name]
    if math.prod(max(dim, 1) for dim in shape) * dtype.itemsize > _MAX_ARRAY_EXTENT:
        raise RemoteProtocolError(f"array {name!r} shape {short_repr(shape)} is too large")
    return name, dtype, tuple(shape)
