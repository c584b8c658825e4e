"""Tests of the frame codec and of arrays in payloads: bytes in, frames out, no sockets."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.frames import (
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    encode_frame,
    join_pieces,
    pack_arrays,
    unpack_arrays,
)

MiB = 1024 * 1024


def wire(pieces: list) -> bytes:
    """Join the pieces encode_frame returns, as a socket would carry them."""
    return b"".join(bytes(piece) for piece in pieces)


def prefix(header_size: int, payload_size: int, magic: bytes = b"CC", version: int = 1, reserved: int = 0) -> bytes:
    return magic + bytes([version, reserved]) + struct.pack(">II", header_size, payload_size)


def raw_frame(header: bytes, payload: bytes = b"") -> bytes:
    return prefix(len(header), len(payload)) + header + payload


def decode_all(data: bytes, **limits: int) -> list[Frame]:
    decoder = FrameDecoder(**limits)
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    decoder.close()
    return frames


def first_error(data: bytes, **limits: int) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_all(data, **limits)
    return caught.value


# --- encoding -------------------------------------------------------------------------


def test_frame_layout_is_byte_exact() -> None:
    data = wire(encode_frame({"type": "x", "n": 1}, [b"abc", b"de"]))
    header = b'{"type":"x","n":1}'
    assert data == b"CC\x01\x00" + struct.pack(">II", len(header), 5) + header + b"abcde"


def test_header_is_utf8_json_not_ascii_escaped() -> None:
    data = wire(encode_frame({"name": "nœud"}))
    assert data[12:] == '{"name":"nœud"}'.encode()


def test_payload_parts_are_not_copied() -> None:
    array = np.arange(12.0).reshape(3, 4)
    pieces = encode_frame({}, [memoryview(array)])
    assert np.shares_memory(np.frombuffer(pieces[1], dtype=array.dtype), array)
    # A 2-D view's len() is its row count; the prefix must count bytes.
    assert struct.unpack(">I", bytes(pieces[0][8:12]))[0] == array.nbytes


@pytest.mark.parametrize(
    "header",
    [{"x": float("nan")}, {"x": float("inf")}, {"x": object()}, {1: "int key"}, {"x": "\ud800"}],
    ids=["nan", "inf", "object", "int-key", "lone-surrogate"],
)
def test_encoding_refuses_headers_that_are_not_plain_json(header: dict) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(header)


def test_encoding_refuses_frames_over_the_limits() -> None:
    with pytest.raises(LocalProtocolError, match="header"):
        encode_frame({"x": "a" * 100}, max_header=50)
    with pytest.raises(LocalProtocolError, match="payload"):
        encode_frame({}, [b"a" * 60, b"b" * 60], max_payload=100)


def test_encoding_refuses_non_contiguous_payload_parts() -> None:
    with pytest.raises(LocalProtocolError, match="contiguous"):
        encode_frame({}, [memoryview(np.arange(10.0)[::2])])


# --- decoding -------------------------------------------------------------------------


def test_decodes_several_frames_fed_at_once() -> None:
    data = wire(encode_frame({"a": 1}, [b"xyz"])) + wire(encode_frame({"b": [1, 2.5, None]}))
    frames = decode_all(data)
    assert [f.header for f in frames] == [{"a": 1}, {"b": [1, 2.5, None]}]
    assert [bytes(f.payload) for f in frames] == [b"xyz", b""]


def test_next_frame_waits_for_the_whole_frame() -> None:
    data = wire(encode_frame({"a": 1}, [b"payload"]))
    decoder = FrameDecoder()
    decoder.feed(data[:-1])
    assert decoder.next_frame() is None
    decoder.feed(data[-1:])
    assert bytes(decoder.next_frame().payload) == b"payload"
    assert decoder.next_frame() is None


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=10), max_size=4),
            st.binary(max_size=300),
        ),
        min_size=1,
        max_size=5,
    ),
    data=st.data(),
)
def test_any_split_of_the_stream_decodes_the_same(frames: list, data: st.DataObject) -> None:
    stream = b"".join(wire(encode_frame(header, [payload])) for header, payload in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
    decoder = FrameDecoder()
    decoded = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)]):
        decoder.feed(stream[start:stop])
        while (frame := decoder.next_frame()) is not None:
            decoded.append((frame.header, bytes(frame.payload)))
    decoder.close()
    assert decoded == frames


def test_one_byte_at_a_time() -> None:
    stream = wire(encode_frame({"k": "v"}, [b"\x00\x01\x02"])) * 3
    decoder = FrameDecoder()
    decoded = []
    for byte in stream:
        decoder.feed(bytes([byte]))
        while (frame := decoder.next_frame()) is not None:
            decoded.append(bytes(frame.payload))
    assert decoded == [b"\x00\x01\x02"] * 3


def test_truncated_stream_raises_at_close_at_every_cut() -> None:
    stream = wire(encode_frame({"k": "v"}, [b"12345"]))
    for cut in range(1, len(stream)):
        decoder = FrameDecoder()
        decoder.feed(stream[:cut])
        assert decoder.next_frame() is None
        with pytest.raises(RemoteProtocolError, match="ended inside a frame"):
            decoder.close()


def test_close_between_frames_is_clean_and_later_feeds_are_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(wire(encode_frame({"a": 1})))
    decoder.close()
    assert decoder.next_frame().header == {"a": 1}
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"CC")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (prefix(2, 0, magic=b"XX") + b"{}", "magic"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "magic"),
        (prefix(2, 0, version=2) + b"{}", "version"),
        (prefix(2, 0, reserved=1) + b"{}", "reserved"),
        (prefix(0, 0), "empty"),
        (raw_frame(b"\xff\xfe{}"), "UTF-8"),
        (raw_frame(b'{"a": '), "not valid JSON"),
        (raw_frame(b"[1, 2]"), "not an object"),
        (raw_frame(b'"text"'), "not an object"),
        (raw_frame(b"null"), "not an object"),
        (raw_frame(b'{"a": NaN}'), "NaN"),
        (raw_frame(b'{"a": Infinity}'), "Infinity"),
        (raw_frame(b'{"a": -Infinity}'), "Infinity"),
        (raw_frame(b'{"a": 1e999}'), "out of range"),
        (raw_frame(b'{"a": 1, "a": 2}'), "repeats the key"),
        (raw_frame(b"[" * 5000 + b"]" * 5000), "nested too deeply|not an object"),
        (raw_frame(b'{"a": ' + b"9" * 5000 + b"}"), "not valid JSON"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bad_frames_raise_remote_protocol_error(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_all(data)


def test_oversized_header_is_refused_from_the_prefix_alone() -> None:
    decoder = FrameDecoder()
    decoder.feed(prefix(DEFAULT_MAX_HEADER + 1, 0))
    with pytest.raises(RemoteProtocolError, match="header of 65537 bytes exceeds"):
        decoder.next_frame()


def test_oversized_payload_is_refused_from_the_prefix_alone() -> None:
    decoder = FrameDecoder()
    decoder.feed(prefix(2, DEFAULT_MAX_PAYLOAD + 1))
    with pytest.raises(RemoteProtocolError, match="payload of 536870913 bytes exceeds"):
        decoder.next_frame()


def test_limits_are_configurable() -> None:
    fits = wire(encode_frame({"a": 1}, [b"x" * 10]))
    assert len(decode_all(fits, max_header=7, max_payload=10)) == 1
    assert "header" in str(first_error(fits, max_header=6))
    assert "payload" in str(first_error(fits, max_payload=9))
    with pytest.raises(ValueError):
        FrameDecoder(max_payload=2**32)


def test_frames_before_a_fault_come_first_and_the_fault_sticks() -> None:
    good = wire(encode_frame({"n": 1}))
    decoder = FrameDecoder()
    decoder.feed(good + b"XX garbage after a good frame")
    assert decoder.next_frame().header == {"n": 1}
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="magic"):
            decoder.next_frame()
    decoder.feed(good)  # a broken stream stays broken
    with pytest.raises(RemoteProtocolError, match="magic"):
        decoder.next_frame()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(1, 50), max_size=10))
def test_arbitrary_bytes_only_ever_raise_remote_protocol_error(data: bytes, sizes: list[int]) -> None:
    decoder = FrameDecoder(max_payload=1024)
    try:
        pos = 0
        for size in [*sizes, len(data)]:
            decoder.feed(data[pos : pos + size])
            pos += size
            while decoder.next_frame() is not None:
                pass
        decoder.close()
    except RemoteProtocolError:
        pass


def test_a_large_payload_in_small_pieces_arrives_whole() -> None:
    # That it is copied once, not per piece, is the next test's (by memory, not by time).
    payload = np.arange(128 * MiB, dtype=np.uint8)
    stream = memoryview(wire(encode_frame({"big": True}, [payload])))
    decoder = FrameDecoder()
    piece = 64 * 1024
    for pos in range(0, len(stream), piece):
        decoder.feed(stream[pos : pos + piece])
    frame = decoder.next_frame()
    received = np.frombuffer(frame.payload, dtype=np.uint8)
    # A prime stride samples every piece at a different offset, without a slow full compare.
    assert len(received) == len(payload) and np.array_equal(received[::4099], payload[::4099])


@pytest.mark.parametrize("piece", [256 * 1024, None], ids=["pieces", "whole"])
def test_decoding_a_64_mib_payload_copies_it_once(piece: int | None) -> None:
    size = 64 * MiB
    stream = memoryview(wire(encode_frame({"n": 1}, [b"\x07" * size])))
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        step = piece or len(stream)
        for pos in range(0, len(stream), step):
            decoder.feed(stream[pos : pos + step])
        frame = decoder.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frame is not None and len(frame.payload) == size
    assert peak < 1.5 * size


def test_a_frame_announcing_a_huge_payload_holds_only_what_arrived() -> None:
    """A 12-byte prefix that announces 512 MiB must not make the decoder allocate 512 MiB."""
    header = b'{"n":1}'
    decoder = FrameDecoder(max_payload=512 * MiB)
    decoder.feed(struct.pack(">2sBBII", b"CC", 1, 0, len(header), 512 * MiB) + header)
    assert decoder.payload_buffer_size == 0 and decoder._payload.__alloc__() < 1024
    decoder.feed(b"\x01" * 1000)
    assert decoder.payload_buffer_size == 1000 and decoder._payload.__alloc__() < 2 * 1000 + 1024
    for _ in range(64):
        decoder.feed(b"\x02" * 64 * 1024)
    received = 1000 + 64 * 64 * 1024
    assert decoder.payload_buffer_size == received
    assert decoder._payload.__alloc__() < 1.25 * received
    assert decoder.next_frame() is None
    with pytest.raises(RemoteProtocolError, match=f"{received} of {512 * MiB} bytes"):
        decoder.close()


def test_a_grown_payload_arrives_whole_and_in_order() -> None:
    payload = bytes(range(256)) * 5000
    stream = wire(encode_frame({"n": 2}, [payload]))
    decoder = FrameDecoder()
    for pos in range(0, len(stream), 777):
        decoder.feed(stream[pos : pos + 777])
    frame = decoder.next_frame()
    assert frame is not None and bytes(frame.payload) == payload and decoder.payload_buffer_size == 0


# --- arrays in payloads --------------------------------------------------------------

SAMPLE_ARRAYS = {
    "f8": np.linspace(-1, 1, 12).reshape(3, 4),
    "f4": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b1": np.array([True, False, True]),
    "i8": np.array([-(2**62), 0, 2**62], dtype=np.int64),
    "u1": np.arange(256, dtype=np.uint8),
    "empty": np.zeros((0, 5)),
    "scalar": np.array(2.5),
    "nan": np.array([np.nan, np.inf, -0.0]),
}


def round_trip(arrays: dict[str, np.ndarray]) -> tuple[list[dict], dict[str, np.ndarray]]:
    meta, parts = pack_arrays(arrays)
    payload = memoryview(bytearray(b"".join(bytes(part) for part in parts)))
    json.dumps(meta)  # the metadata must be plain JSON
    return meta, unpack_arrays(meta, payload)


def test_pack_describes_arrays_in_order_with_canonical_dtypes() -> None:
    meta, _ = pack_arrays({"x": np.zeros((2, 3)), "ok": np.ones(2, bool), "n": np.zeros(1, np.int64)})
    assert meta == [
        {"name": "x", "dtype": "<f8", "shape": [2, 3]},
        {"name": "ok", "dtype": "|b1", "shape": [2]},
        {"name": "n", "dtype": "<i8", "shape": [1]},
    ]


def test_arrays_round_trip_with_dtype_shape_and_bits() -> None:
    _, decoded = round_trip(SAMPLE_ARRAYS)
    assert list(decoded) == list(SAMPLE_ARRAYS)
    for name, original in SAMPLE_ARRAYS.items():
        assert decoded[name].dtype == original.dtype, name
        assert decoded[name].shape == original.shape, name
        assert decoded[name].tobytes() == original.tobytes(), name


def test_unpacked_arrays_are_views_of_the_payload() -> None:
    meta, parts = pack_arrays({"a": np.arange(4.0), "b": np.arange(3.0)})
    payload = memoryview(bytearray(b"".join(bytes(part) for part in parts)))
    decoded = unpack_arrays(meta, payload)
    whole = np.frombuffer(payload, dtype=np.uint8)
    assert all(np.shares_memory(array, whole) for array in decoded.values())


def test_pack_makes_big_endian_and_strided_arrays_canonical() -> None:
    strided = np.arange(20.0).reshape(4, 5)[:, ::2]
    big_endian = np.arange(3, dtype=">i8")
    meta, decoded = round_trip({"s": strided, "b": big_endian})
    assert [m["dtype"] for m in meta] == ["<f8", "<i8"]
    assert np.array_equal(decoded["s"], strided) and np.array_equal(decoded["b"], big_endian)


def test_pack_does_not_copy_contiguous_arrays() -> None:
    array = np.arange(10.0)
    _, parts = pack_arrays({"a": array})
    assert np.shares_memory(np.frombuffer(parts[0], dtype=np.float64), array)


@pytest.mark.parametrize(
    "arrays",
    [
        {"a": np.array([1 + 2j])},
        {"a": np.zeros(2, dtype=np.float16)},
        {"a": np.zeros(2, dtype=np.int32)},
        {"a": np.array(["text"])},
        {"a": np.array([None], dtype=object)},
        {"a": [1.0, 2.0]},
        {"a": np.zeros((1,) * 9)},
        {"": np.zeros(1)},
        {"a" * 129: np.zeros(1)},
    ],
    ids=["complex", "float16", "int32", "unicode", "object", "list", "rank9", "no-name", "long-name"],
)
def test_pack_refuses_what_the_wire_does_not_allow(arrays: dict) -> None:
    with pytest.raises(LocalProtocolError):
        pack_arrays(arrays)


def entry(name: object = "a", dtype: object = "<f8", shape: object = (2,)) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape}


@pytest.mark.parametrize(
    ("meta", "payload", "reason"),
    [
        ({"name": "a"}, b"", "not a list"),
        (["a"], b"", "must be an object"),
        ([{"name": "a", "dtype": "<f8"}], b"", "must be an object"),
        ([{**entry(), "extra": 1}], bytes(16), "must be an object"),
        ([entry(name="")], bytes(16), "name"),
        ([entry(name=7)], bytes(16), "name"),
        ([entry(name="a" * 129)], bytes(16), "name"),
        ([entry(dtype=">f8")], bytes(16), "dtype"),
        ([entry(dtype="float64")], bytes(16), "dtype"),
        ([entry(dtype="<f2")], bytes(4), "dtype"),
        ([entry(dtype="|O")], bytes(16), "dtype"),
        ([entry(dtype=["<f8"])], bytes(16), "dtype"),
        ([entry(shape="2")], bytes(16), "shape"),
        ([entry(shape=(-1,))], bytes(16), "non-negative"),
        ([entry(shape=(True,))], bytes(8), "non-negative ints"),
        ([entry(shape=(2.0,))], bytes(16), "non-negative ints"),
        ([entry(shape=(1,) * 9)], bytes(8), "at most 8"),
        ([entry(shape=(3,))], bytes(16), "needs 24 bytes"),
        ([entry(shape=(2**20, 2**20))], bytes(16), "needs 8796093022208 bytes"),
        ([entry(shape=(2**40, 2**40))], bytes(16), "too large"),
        ([entry(shape=(0, 2**62))], b"", "too large"),
        ([entry(shape=(1,))], bytes(16), "8 bytes beyond"),
        ([], b"x", "1 bytes beyond"),
        ([entry(), entry()], bytes(32), "twice"),
        ([entry(dtype="|b1", shape=(3,))], b"\x00\x01\x02", "other than 0 and 1"),
    ],
)
def test_unpack_refuses_metadata_that_does_not_fit(meta: object, payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        unpack_arrays(meta, memoryview(payload))


@settings(max_examples=300, deadline=None)
@given(
    meta=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=12,
    )
    | st.lists(
        st.fixed_dictionaries(
            {
                "name": st.text(max_size=3),
                "dtype": st.sampled_from(["<f8", "<f4", "|b1", "<i8", "|u1", "<c16", "f8"]),
                "shape": st.lists(st.integers(-2, 5), max_size=3),
            }
        ),
        max_size=3,
    ),
    payload=st.binary(max_size=64),
)
def test_unpack_only_ever_raises_remote_protocol_error(meta: object, payload: bytes) -> None:
    try:
        arrays = unpack_arrays(meta, memoryview(payload))
    except RemoteProtocolError:
        return
    assert sum(array.nbytes for array in arrays.values()) == len(payload)


def test_small_frames_are_joined_into_one_write_and_large_pieces_go_alone_uncopied() -> None:
    small = encode_frame({"type": "x"}, [b"a" * 10, b"b" * 5])
    assert len(small) > 1
    (joined,) = join_pieces(small)
    assert bytes(joined) == b"".join(bytes(p) for p in small)
    big = memoryview(bytes(300 * 1024))
    large = encode_frame({"type": "x"}, [big])
    head, body = join_pieces(large)
    assert body is large[1] and bytes(head) == bytes(large[0])


def test_many_frames_join_in_order_into_writes_within_the_limit() -> None:
    frames = [encode_frame({"type": "x", "n": n}, [bytes([n]) * (n * 100)]) for n in range(60)]
    pieces = [piece for frame in frames for piece in frame]
    writes = join_pieces(pieces, limit=16 * 1024, large=8 * 1024)
    assert b"".join(bytes(w) for w in writes) == b"".join(bytes(p) for p in pieces)
    assert all(len(w) <= 16 * 1024 for w in writes)
    assert len(writes) < len(pieces) / 4
    decoder = FrameDecoder()
    for write in writes:
        decoder.feed(write)
    assert [decoder.next_frame().header["n"] for _ in frames] == list(range(60))
