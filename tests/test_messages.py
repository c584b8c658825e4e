"""Tests of the protocol messages: round trips, strict decoding, and garbage in."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.frames import Frame, encode_frame
from protocol.messages import (
    MAX_COUNT,
    MAX_INDEX,
    MAX_TEXT,
    MESSAGE_TYPES,
    Rejected,
    PROTOCOL_VERSION,
    Assign,
    Assigns,
    Bye,
    Cancel,
    Credit,
    Drain,
    Control,
    Error,
    Failed,
    Heartbeat,
    Hello,
    Message,
    MessageReader,
    Reject,
    Result,
    Results,
    HostCertificate,
    NodeKeys,
    Submit,
    Subtree,
    Welcome,
    decode_message,
    encode_message,
)

GENERATED = {"a": {"count": 1000, "shape": [4, 4], "seed": 7, "distribution": "normal", "dtype": "float64"}}
rng = np.random.default_rng(1)

SAMPLES: list[Message] = [
    Hello(PROTOCOL_VERSION, "gpu01", slots=4, window=6),
    Hello(PROTOCOL_VERSION, "nœud 2", 0, 0, software="chainconsole 0.1.0", via=("relay-a", "relay-b")),
    Hello(7, "future-node", 1, 1),
    Welcome(PROTOCOL_VERSION, "SHA256:abc+/=", heartbeat_interval_s=1.0, heartbeat_timeout_s=5.5),
    Reject("protocol version 7 is not supported", PROTOCOL_VERSION),
    Credit(0),
    Credit(MAX_COUNT),
    Assign("t-1", 0, 0, "invert", 0, 10, "full", GENERATED, {}),
    Assign("t-1", MAX_INDEX, MAX_INDEX, "det", MAX_INDEX - 1, MAX_INDEX, "norms", {}, {"a": rng.standard_normal((1, 3, 3))}),
    Assign(
        "t.2", 3, 1, "solve", 30, 32, "full", GENERATED,
        {"b": rng.standard_normal((2, 4)).astype(np.float32), "c": np.arange(2, dtype=np.int64)},
    ),
    Assign("t_3", 0, 0, "matmul", 5, 5, "full", {}, {"a": np.zeros((0, 2, 2)), "b": np.zeros((0, 2), np.uint8)}),
    Result("t-1", 0, 0, np.array([True, False]), np.stack([np.eye(3), np.full((3, 3), np.nan)]), None, 0.25),
    Result("t-1", 1, 2, np.array([True, True, True]), np.arange(3, dtype=np.float32), None, 0.0),
    Result("t-1", 2, 0, np.array([True, False]), None, np.array([1.5, np.nan]), 12.0),
    Result("t-1", 3, 0, np.zeros(0, bool), None, np.zeros(0), 0.0),
    Result("t-1", 4, 0, np.ones(2, bool), np.array([[1, 2], [3, 4]], dtype=np.int64), None, 1e-6),
    Assigns("t-1", "invert", "full", GENERATED, ((0, 0, 0, 10), (3, 1, 30, 40)), {}),
    Assigns("t-2", "solve", "norms", GENERATED, ((7, 0, 70, 71), (8, 2, 80, 82)), {"b": rng.standard_normal((3, 4))}),
    Results("t-1", ((0, 0, 2, 0.25), (5, 1, 1, 0.0)), np.array([True, False, True]), np.zeros((3, 2, 2)), None),
    Results("t-1", ((2, 0, 1, 1e-6),), np.ones(1, bool), None, np.ones(1), computed_by=("behind",)),
    Failed("t-1", 0, 1, "worker process died\nexit code -9"),
    Failed("t-1", 0, 1, "unknown operation 'fft'", retryable=False),
    Rejected("t-1", 0, 1, "item 3: invert check failed (residual 1e-3 > bound 1e-9)", 1.5e-14),
    Rejected("t-1", 4, 2, "item 7: marked ok but not finite"),
    Heartbeat(12345.678, 3),
    Heartbeat(-1.0, 0),
    Cancel("t-1", 4, 2),
    Drain(),
    Drain("operator asked"),
    Bye(),
    Bye("shutting down"),
    Error("bad-message", "bad assign message: missing task_id"),
    Subtree(()),
    Subtree(({"name": "b", "state": "busy", "slots": 2, "in_flight": 3, "items_done": 40, "errors": 0,
              "via": ["link-a"], "host_key": ""},)),
    HostCertificate("link-b", "ssh-ed25519-cert-v01@openssh.com AAAA link-b"),
    Control("drain", "b"),
    Control("kick", "nœud 2"),
    NodeKeys(("ssh-ed25519 AAAAC3Nza one", "ssh-ed25519 AAAAC3Nzb two")),
    Credit(7, slots=5),
    Hello(PROTOCOL_VERSION, "link", 2, 3, host_key="ssh-ed25519 AAAAC3Nza link"),
    Welcome(PROTOCOL_VERSION, "link", 1.0, 5.0, instance="f3a9", host_certificate="ssh-ed25519-cert-v01@openssh.com AAAA"),
    Submit("solve-file", "solve", GENERATED, {"b": rng.standard_normal((1000, 4))}, "full", 3),
    Submit("inline", "invert", {}, {"a": np.eye(2)[None].astype(np.float32)}, "norms", 1, chunk_size=10),
]


def stream_of(messages: list[Message]) -> bytes:
    return b"".join(bytes(piece) for msg in messages for piece in encode_message(msg))


def read_all(data: bytes) -> list[Message]:
    reader = MessageReader()
    reader.feed(data)
    messages = []
    while (msg := reader.next_message()) is not None:
        messages.append(msg)
    reader.close()
    return messages


def frame(header: dict, payload: bytes = b"") -> Frame:
    return Frame(header, memoryview(payload))


def wire_header(msg: Message) -> dict:
    data = stream_of([msg])
    return json.loads(data[12 : 12 + int.from_bytes(data[4:8], "big")])


# --- round trips ---------------------------------------------------------------------


def test_every_message_type_is_sampled() -> None:
    assert {type(msg) for msg in SAMPLES} == set(MESSAGE_TYPES.values())
    assert set(MESSAGE_TYPES) == {
        "hello", "welcome", "reject", "credit", "assign", "assigns", "result", "results",
        "failed", "rejected", "heartbeat", "cancel", "drain", "bye", "error", "subtree", "control", "host_certificate",
        "node_keys",
        "submit",
    }


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda msg: msg.TYPE)
def test_round_trip(msg: Message) -> None:
    (decoded,) = read_all(stream_of([msg]))
    assert type(decoded) is type(msg)
    assert decoded == msg
    for spec in dataclasses.fields(msg):
        mine, theirs = getattr(msg, spec.name), getattr(decoded, spec.name)
        if isinstance(mine, np.ndarray):
            assert (theirs.dtype, theirs.shape) == (mine.dtype, mine.shape)
            assert np.array_equal(theirs, mine, equal_nan=mine.dtype.kind == "f")


def test_assign_input_arrays_keep_dtype_and_values() -> None:
    msg = SAMPLES[9]
    (decoded,) = read_all(stream_of([msg]))
    for name, array in msg.arrays.items():
        assert decoded.arrays[name].dtype == array.dtype
        assert np.array_equal(decoded.arrays[name], array)
    assert decoded.generated == GENERATED


def test_headers_carry_type_and_fields_exactly() -> None:
    assert wire_header(Credit(3)) == {"type": "credit", "window": 3, "slots": None}
    assert wire_header(Hello(1, "n", 2, 3, via=("r",))) == {
        "type": "hello", "protocol_version": 1, "name": "n", "slots": 2, "window": 3,
        "software": "", "via": ["r"], "host_key": "",
    }
    assert wire_header(SAMPLES[13]) == {
        "type": "result", "task_id": "t-1", "chunk": 2, "attempt": 0, "elapsed_s": 12.0,
        "arrays": [{"name": "norms", "dtype": "<f8", "shape": [2]}, {"name": "ok", "dtype": "|b1", "shape": [2]}],
    }


def test_optional_fields_may_be_left_out_on_the_wire() -> None:
    assert decode_message(frame({"type": "bye"})) == Bye()
    assert decode_message(frame({"type": "failed", "task_id": "t", "chunk": 0, "attempt": 0, "reason": "x"})) == Failed(
        "t", 0, 0, "x", retryable=True
    )
    assert decode_message(frame({"type": "hello", "protocol_version": 1, "name": "n", "slots": 1, "window": 2})) == Hello(
        1, "n", 1, 2
    )


def test_decoded_arrays_are_views_of_the_frame_payload() -> None:
    msg = Result("t", 0, 0, np.ones(4, bool), rng.standard_normal((4, 8, 8)), None, 0.1)
    pieces = encode_message(msg)
    payload = memoryview(bytearray(b"".join(bytes(piece) for piece in pieces[1:])))
    header = json.loads(bytes(pieces[0][12:]))
    decoded = decode_message(Frame(header, payload))
    assert np.shares_memory(decoded.result, np.frombuffer(payload, dtype=np.uint8))


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=6),
    data=st.data(),
)
def test_any_split_of_a_message_stream_reads_the_same(messages: list[Message], data: st.DataObject) -> None:
    stream = stream_of(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    reader = MessageReader()
    decoded = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)]):
        reader.feed(stream[start:stop])
        while (msg := reader.next_message()) is not None:
            decoded.append(msg)
    reader.close()
    assert decoded == messages


def test_every_sample_one_byte_at_a_time() -> None:
    reader = MessageReader()
    decoded = []
    for byte in stream_of(SAMPLES):
        reader.feed(bytes([byte]))
        while (msg := reader.next_message()) is not None:
            decoded.append(msg)
    assert decoded == SAMPLES


# str.isprintable() admits the ASCII space but no other separator.
printable = st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" ")
names = st.text(printable, min_size=1, max_size=40)
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]) | st.sampled_from("\n\t"), max_size=200)
identifiers = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True)
indexes = st.integers(0, MAX_INDEX)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.builds(Hello, st.integers(1, 65535), names, st.integers(0, MAX_COUNT), st.integers(0, MAX_COUNT),
                  st.text(printable, max_size=20),
                  st.lists(names, max_size=4).map(tuple)),
        st.builds(Failed, identifiers, indexes, indexes, texts, st.booleans()),
        st.builds(Heartbeat, st.floats(allow_nan=False, allow_infinity=False), st.integers(0, MAX_COUNT)),
        st.builds(Error, identifiers, texts),
        st.builds(Reject, texts, st.integers(1, 65535)),
    )
)
def test_valid_field_values_round_trip(msg: Message) -> None:
    assert read_all(stream_of([msg])) == [msg]


# --- construction ---------------------------------------------------------------------


def test_numpy_scalars_and_lists_are_normalised() -> None:
    hello = Hello(np.int64(1), "n", np.int32(2), np.uint8(3), via=["r"])
    assert [type(hello.protocol_version), type(hello.slots), hello.via] == [int, int, ("r",)]
    welcome = Welcome(1, "id", 1, np.float32(2.5))
    assert type(welcome.heartbeat_interval_s) is float and welcome.heartbeat_timeout_s == 2.5
    assign = Assign("t", 0, 0, "det", 0, 1, "full", {"a": {"shape": (2, 2)}}, {})
    assert assign.generated == {"a": {"shape": [2, 2]}}


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Hello(1, "n", True, 1), TypeError),
        (lambda: Hello(1, "n", 1.0, 1), TypeError),
        (lambda: Hello(1, "n", -1, 1), ValueError),
        (lambda: Hello(0, "n", 1, 1), ValueError),
        (lambda: Hello(1, "", 1, 1), ValueError),
        (lambda: Hello(1, "x" * 129, 1, 1), ValueError),
        (lambda: Hello(1, "evil\x1b[2J", 1, 1), ValueError),
        (lambda: Hello(1, "n", 1, 1, via="relay"), TypeError),
        (lambda: Hello(1, "n", 1, 1, via=("ok",) * 33), ValueError),
        (lambda: Welcome(1, "id", 0.0, 1.0), ValueError),
        (lambda: Welcome(1, "id", 2.0, 1.0), ValueError),
        (lambda: Welcome(1, "id", math.nan, 1.0), ValueError),
        (lambda: Welcome(1, "id", 1.0, math.inf), ValueError),
        (lambda: Welcome(1, "id", 1.0, 10**400), ValueError),
        (lambda: Credit(MAX_COUNT + 1), ValueError),
        (lambda: Credit("3"), TypeError),
        (lambda: Failed("t", 0, 0, "x" * (MAX_TEXT + 1)), ValueError),
        (lambda: Failed("t", 0, 0, "bell\x07"), ValueError),
        (lambda: Failed("t", 0, 0, "x", retryable=1), TypeError),
        (lambda: Failed("../etc", 0, 0, "x"), ValueError),
        (lambda: Cancel("t", -1, 0), ValueError),
        (lambda: Cancel("t", 0, MAX_INDEX + 1), ValueError),
        (lambda: Heartbeat(math.nan, 0), ValueError),
        (lambda: Error("has space", "m"), ValueError),
        (lambda: Assign("t", 0, 0, "det", 2, 1, "full", GENERATED, {}), ValueError),
        (lambda: Assign("t", 0, 0, "det", 0, 1, "raw", GENERATED, {}), ValueError),
        (lambda: Assign("t", 0, 0, "det", 0, 1, "full", {}, {}), ValueError),
        (lambda: Assign("t", 0, 0, "det", 0, 1, "full", GENERATED, {"a": np.zeros((1, 2))}), ValueError),
        (lambda: Assign("t", 0, 0, "det", 0, 2, "full", {}, {"a": np.zeros((3, 2))}), ValueError),
        (lambda: Assign("t", 0, 0, "det", 0, 1, "full", {}, {"a": np.zeros((1, 2), np.int32)}), ValueError),
        (lambda: Assign("t", 0, 0, "det", 0, 1, "full", {}, {"a": [[1.0]]}), TypeError),
        (lambda: Assign("t", 0, 0, "det", 0, 1, "full", {"a": {"seed": math.nan}}, {}), ValueError),
        (lambda: Assign("t", 0, 0, "det", 0, 1, "full", {"a": {"seed": {1, 2}}}, {}), TypeError),
        (lambda: Assign("t", 0, 0, "det", 0, 1, "full", {"a": [1]}, {}), TypeError),
        (lambda: Result("t", 0, 0, np.ones(2, bool), np.zeros(2), np.zeros(2), 0.0), ValueError),
        (lambda: Result("t", 0, 0, np.ones(2, bool), None, None, 0.0), ValueError),
        (lambda: Result("t", 0, 0, np.ones(2, bool), np.zeros(3), None, 0.0), ValueError),
        (lambda: Result("t", 0, 0, np.ones(2), np.zeros(2), None, 0.0), ValueError),
        (lambda: Result("t", 0, 0, np.ones((2, 1), bool), np.zeros(2), None, 0.0), ValueError),
        (lambda: Result("t", 0, 0, np.ones(2, bool), None, np.zeros(2, np.float32), 0.0), ValueError),
        (lambda: Result("t", 0, 0, np.ones(2, bool), np.zeros(2, complex), None, 0.0), ValueError),
        (lambda: Result("t", 0, 0, np.ones(2, bool), np.zeros(2), None, -1.0), ValueError),
    ],
)
def test_constructors_refuse_bad_values(build, error: type[Exception]) -> None:
    with pytest.raises(error):
        build()


def test_array_messages_compare_by_content() -> None:
    msg = SAMPLES[11]
    same = Result("t-1", 0, 0, msg.ok.copy(), msg.result.copy(), None, 0.25)
    changed = Result("t-1", 0, 0, msg.ok.copy(), msg.result * 2, None, 0.25)
    assert msg == same and msg != changed and msg != SAMPLES[12]


def test_encoding_refuses_non_messages_and_oversized_frames() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message({"type": "hello"})  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="payload"):
        encode_message(SAMPLES[11], max_payload=100)


# --- strict decoding -------------------------------------------------------------------

CANCEL = {"type": "cancel", "task_id": "t", "chunk": 1, "attempt": 0}
ASSIGN = {
    "type": "assign", "task_id": "t", "chunk": 0, "attempt": 0, "operation": "det", "start": 0,
    "stop": 2, "return_mode": "full", "generated": {}, "arrays": [{"name": "a", "dtype": "<f8", "shape": [2]}],
}
RESULT = {
    "type": "result", "task_id": "t", "chunk": 0, "attempt": 0, "elapsed_s": 0.5,
    "arrays": [{"name": "result", "dtype": "<f8", "shape": [2]}, {"name": "ok", "dtype": "|b1", "shape": [2]}],
}
RESULT_PAYLOAD = bytes(16) + b"\x01\x00"


def with_arrays(header: dict, *entries: dict) -> dict:
    return {**header, "arrays": list(entries)}


@pytest.mark.parametrize(
    ("header", "payload", "reason"),
    [
        ({}, b"", "unknown message type None"),
        ({"type": "launch"}, b"", "unknown message type 'launch'"),
        ({"type": ["hello"]}, b"", "unknown message type"),
        ({"type": "Hello"}, b"", "unknown message type"),
        ({k: v for k, v in CANCEL.items() if k != "chunk"}, b"", "missing chunk"),
        ({**CANCEL, "reason": "x"}, b"", "unexpected 'reason'"),
        ({**CANCEL, "arrays": []}, b"", "unexpected 'arrays'"),
        ({**CANCEL, "chunk": "1"}, b"", "chunk must be an int, got str"),
        ({**CANCEL, "chunk": True}, b"", "chunk must be an int, got bool"),
        ({**CANCEL, "chunk": 1.0}, b"", "chunk must be an int, got float"),
        ({**CANCEL, "chunk": None}, b"", "chunk must be an int"),
        ({**CANCEL, "chunk": -1}, b"", "chunk must be between"),
        ({**CANCEL, "chunk": 2**64}, b"", "chunk must be between"),
        ({**CANCEL, "task_id": "a/b"}, b"", "task_id"),
        (CANCEL, b"\x00", "carries no payload"),
        ({"type": "credit", "window": [1]}, b"", "window must be an int"),
        ({"type": "heartbeat", "sent_at": "now", "in_flight": 0}, b"", "sent_at must be a number"),
        ({"type": "heartbeat", "sent_at": 1.0, "in_flight": False}, b"", "in_flight must be an int"),
        ({"type": "failed", "task_id": "t", "chunk": 0, "attempt": 0, "reason": "x", "retryable": 0}, b"", "retryable must be a bool"),
        ({"type": "welcome", "protocol_version": 1, "node_id": "n", "heartbeat_interval_s": 5, "heartbeat_timeout_s": 1}, b"", "shorter"),
        ({"type": "hello", "protocol_version": 1, "name": "n", "slots": 1, "window": 1, "via": "r"}, b"", "via must be a list"),
        ({"type": "hello", "protocol_version": 1, "name": "\u202e", "slots": 1, "window": 1}, b"", "printable"),
        ({"type": "error", "code": "x", "message": "\x1b[31m"}, b"", "control characters"),
        ({k: v for k, v in ASSIGN.items() if k != "arrays"}, bytes(16), "missing arrays"),
        ({**ASSIGN, "start": 3}, bytes(16), "start 3 is after stop 2"),
        ({**ASSIGN, "stop": 3}, bytes(16), "holds 2 items, the chunk has 3"),
        ({**ASSIGN, "generated": {"a": {}}}, bytes(16), "both generated and arrays"),
        ({**ASSIGN, "generated": {"b": 1}}, bytes(16), "generated.b must be an object"),
        ({**ASSIGN, "generated": []}, bytes(16), "generated must map"),
        ({**ASSIGN, "return_mode": "all"}, bytes(16), "return_mode must be one of full, norms"),
        (with_arrays(ASSIGN), b"", "at least one input"),
        (ASSIGN, bytes(24), "8 bytes beyond"),
        (ASSIGN, bytes(8), "needs 16 bytes"),
        (with_arrays(ASSIGN, {"name": "a", "dtype": "<c16", "shape": [2]}), bytes(32), "dtype"),
        (with_arrays(ASSIGN, {"name": "a/b", "dtype": "<f8", "shape": [2]}), bytes(16), "arrays key"),
        (RESULT, RESULT_PAYLOAD[:-1], "needs 2 bytes"),
        (RESULT, RESULT_PAYLOAD[:-2] + b"\x01\x02", "other than 0 and 1"),
        (with_arrays(RESULT, RESULT["arrays"][0]), bytes(16), "missing the ok array"),
        (with_arrays(RESULT, *RESULT["arrays"], {"name": "norms", "dtype": "<f8", "shape": [2]}), RESULT_PAYLOAD + bytes(16), "exactly one"),
        (with_arrays(RESULT, *RESULT["arrays"], {"name": "extra", "dtype": "<f8", "shape": [0]}), RESULT_PAYLOAD, "unexpected arrays extra"),
        (with_arrays(RESULT, {"name": "result", "dtype": "<f8", "shape": [3]}, RESULT["arrays"][1]), bytes(24) + b"\x01\x00", "3 items for 2 ok"),
        (with_arrays(RESULT, {"name": "norms", "dtype": "<f4", "shape": [2]}, RESULT["arrays"][1]), bytes(8) + b"\x01\x00", "norms has dtype float32"),
        (with_arrays(RESULT, RESULT["arrays"][0], {"name": "ok", "dtype": "|u1", "shape": [2]}), RESULT_PAYLOAD, "ok has dtype uint8"),
        ({**RESULT, "elapsed_s": -0.5}, RESULT_PAYLOAD, "elapsed_s must be a finite number"),
    ],
)
def test_decode_refuses_invalid_messages(header: dict, payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason.replace("[", r"\[")):
        decode_message(frame(header, payload))


def test_decode_errors_are_short_plain_text() -> None:
    too_deep = [[[[[[[[[[1]]]]]]]]]]
    header = {**ASSIGN, "generated": {"b": {"\x1b[2J" + "k" * 3000: too_deep}}}
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(frame(header, bytes(16)))
    text = str(caught.value)
    assert text.startswith("bad assign message: generated.b.?[2Jkkk")
    assert len(text) <= 1000
    Error("bad-message", text)


def test_valid_hand_built_headers_decode() -> None:
    assign = decode_message(frame(ASSIGN, np.array([1.0, 2.0]).tobytes()))
    assert isinstance(assign, Assign) and assign.arrays["a"].tolist() == [1.0, 2.0]
    result = decode_message(frame(RESULT, RESULT_PAYLOAD))
    assert isinstance(result, Result) and result.ok.tolist() == [True, False]


def test_non_finite_numbers_never_reach_a_message() -> None:
    header = b'{"type":"heartbeat","sent_at":NaN,"in_flight":0}'
    data = b"CC\x01\x00" + len(header).to_bytes(4, "big") + bytes(4) + header
    with pytest.raises(RemoteProtocolError, match="NaN"):
        read_all(data)


def test_reader_delivers_messages_before_a_fault_and_stays_broken() -> None:
    reader = MessageReader()
    reader.feed(stream_of([Credit(1)]) + b"".join(bytes(p) for p in encode_frame({"type": "nope"})) + stream_of([Credit(2)]))
    assert reader.next_message() == Credit(1)
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="unknown message type 'nope'"):
            reader.next_message()


def test_reader_raises_at_close_on_a_truncated_message() -> None:
    reader = MessageReader()
    reader.feed(stream_of([SAMPLES[11]])[:-1])
    assert reader.next_message() is None
    with pytest.raises(RemoteProtocolError, match="ended inside a frame"):
        reader.close()


def test_reader_applies_its_frame_limits() -> None:
    reader = MessageReader(max_payload=16)
    reader.feed(stream_of([SAMPLES[11]]))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 16"):
        reader.next_message()


# --- garbage in: only RemoteProtocolError ever escapes -----------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_names = sorted({spec.name for cls in MESSAGE_TYPES.values() for spec in dataclasses.fields(cls)} | {"arrays"})


def survives(data: bytes) -> None:
    """Read data as a stream; a RemoteProtocolError is fine, anything else fails the test."""
    try:
        for msg in read_all(data):
            encode_message(msg)  # a message that decoded is a valid message
    except RemoteProtocolError as exc:
        Error("bad-message", str(exc))  # the reason can always be sent back to the peer


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    survives(data)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=8),
    fields=st.dictionaries(st.sampled_from(field_names), json_values, max_size=10),
    payload=st.binary(max_size=64),
)
def test_arbitrary_json_headers(kind: str, fields: dict, payload: bytes) -> None:
    survives(b"".join(bytes(piece) for piece in encode_frame({"type": kind, **fields}, [payload])))


@settings(max_examples=300, deadline=None)
@given(
    msg=st.sampled_from(SAMPLES),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_valid_streams(msg: Message, edits: list[tuple[int, int]]) -> None:
    data = bytearray(stream_of([msg]))
    for position, value in edits:
        data[position % len(data)] = value
    survives(bytes(data))


@settings(max_examples=300, deadline=None)
@given(
    msg=st.sampled_from([m for m in SAMPLES if isinstance(m, (Assign, Result))]),
    field=st.sampled_from(["task_id", "chunk", "attempt", "operation", "start", "stop", "return_mode", "generated", "elapsed_s", "arrays"]),
    value=json_values,
)
def test_array_messages_with_one_field_replaced(msg: Message, field: str, value: object) -> None:
    header = wire_header(msg)
    header[field] = value
    payload = b"".join(bytes(piece) for piece in encode_message(msg)[1:])
    survives(b"".join(bytes(piece) for piece in encode_frame(header, [payload])))


# --- docs/protocol.md stays true -------------------------------------------------------

PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_every_documented_header_example_decodes() -> None:
    blocks = re.findall(r"```json\n(\{\"type\".*?)\n```", PROTOCOL_DOC.read_text(), re.S)
    examples = list(map(json.loads, blocks))
    for header in examples:
        sizes = [np.dtype(a["dtype"]).itemsize * math.prod(a["shape"]) for a in header.get("arrays", [])]
        decode_message(frame(header, bytes(sum(sizes))))
    assert {header["type"] for header in examples} == set(MESSAGE_TYPES)


def test_every_message_type_has_a_section() -> None:
    documented = set(re.findall(r"^### (\w+) — ", PROTOCOL_DOC.read_text(), re.M))
    assert documented == set(MESSAGE_TYPES)


def test_a_bad_entry_of_a_batch_is_named_by_its_index() -> None:
    ok, values = np.ones(2, bool), np.ones(2)
    with pytest.raises(TypeError, match=r"chunks\[1\] must be an int"):
        Results("t-1", ((0, 0, 1, 0.1), (1, "2", 1, 0.1)), ok, values, None)
    with pytest.raises(ValueError, match=r"computed_by\[1\]"):
        Results("t-1", ((0, 0, 1, 0.1), (1, 0, 1, 0.1)), ok, values, None, computed_by=("a", "b\x1b"))
