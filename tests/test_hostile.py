"""Hostile input against a running front-end: fuzzed frames, junk commands, a lying node.

The front-end runs in a background thread's event loop for the whole module, so
hypothesis can drive it from plain test functions. After every test no handler may have
crashed (a crash shows as an "error" event). A real node computes a real task
throughout; when the module ends — whatever order its tests ran in — that task must be
done and right: nobody else was affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import threading
from types import SimpleNamespace

import asyncssh
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.engine.host import Host, start_local_node
from console.engine.keys import Role, initialize
from console.ssh.server import ServerSettings
from console.engine.statedir import StateDir
from protocol.frames import encode_frame
from protocol.messages import PROTOCOL_VERSION, Hello, Result, encode_message
from protocol.taskfile import parse_task
from tests.fake_node import FakeNode, NodeRejected, corrupt
from tests.reference import check_npz

pytestmark = pytest.mark.timeout(300)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
BACKGROUND_TASK = {"name": "background", "operation": "invert", "chunk_size": 20, "return": "norms",
                   "inputs": {"a": {"generate": {"count": 4000, "shape": [48, 48], "seed": 61}}}}
TRIED = {"frames": 0, "commands": 0}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    state = StateDir(tmp_path_factory.mktemp("hostile") / "state")
    initialize(state)
    host = Host(state, ServerSettings(port=0, max_auth_failures=10_000))
    call(host.start())
    crashes: list = []
    host.frontend.on_event(lambda event: crashes.append(event) if event.kind == "error" else None)
    host.nodes.append(start_local_node(state, host.server.address, "steady"))
    task_id = call(_submit(host, BACKGROUND_TASK))
    try:
        yield SimpleNamespace(host=host, call=call, task_id=task_id, crashes=crashes)
        _check_background_task(host, call, task_id)
    finally:
        call(host.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        print(f"\nhostile input: {TRIED['frames']} fuzzed node streams, {TRIED['commands']} junk commands, "
              f"{len(crashes)} crashes")


@pytest.fixture(autouse=True)
def no_handler_crashed(live):
    """A handler that crashes logs an "error" event: none may, whatever the input."""
    yield
    assert not live.crashes, "handlers crashed: " + "; ".join(e.message for e in live.crashes)


def _check_background_task(host: Host, call, task_id: str) -> None:
    """The real work that ran alongside the hostile input finished, on the steady node, right."""
    summary = call(host.frontend.wait(task_id), timeout=200)
    assert summary["state"] == "done" and summary["ok_items"] == 4000
    assert set(summary["items_per_node"]) == {"steady"}
    with np.load(host.frontend.result_file(task_id)) as data:
        assert data["ok"].all()
        from tests.reference import expected_item
        for i in range(0, 4000, 97):
            np.testing.assert_allclose(data["norms"][i], np.linalg.norm(expected_item(BACKGROUND_TASK, i)),
                                       rtol=1e-7)


async def _submit(host: Host, document: dict) -> str:
    return await host.frontend.submit(parse_task(document), "operator")


async def _connect(host: Host, key, username: str) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        *host.server.address, username=username, client_keys=[str(key)],
        known_hosts=([str(host.state.host_key) + ".pub"], [], []), config=None, agent_path=None, gss_host=None)


async def _feed_node_channel(host: Host, data: bytes) -> None:
    """Open the node subsystem, send ``data``, and wait for the front-end to close on us."""
    async with await _connect(host, host.state.node_key, "node") as conn:
        process = await conn.create_process(subsystem="chainconsole-node", encoding=None)
        with contextlib.suppress(BrokenPipeError, asyncssh.Error, ConnectionError):
            process.stdin.write(data)
            process.stdin.write_eof()
        with contextlib.suppress(asyncssh.Error, ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(process.stdout.read(), 15)


def _frame(header: dict, payload: bytes = b"") -> bytes:
    return b"".join(bytes(p) for p in encode_frame(header, [payload] if payload else []))


HELLO = b"".join(bytes(p) for p in encode_message(Hello(PROTOCOL_VERSION, "fuzz", 1, 2)))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
MESSAGE_TYPES = ["hello", "welcome", "reject", "credit", "assign", "result", "failed", "heartbeat", "cancel",
                 "drain", "bye", "error", "nonsense"]


def _check_alive(live) -> None:
    """The front-end still answers, and still knows its background task."""
    assert live.call(_still_serving(live.host))


async def _still_serving(host: Host) -> bool:
    async with await _connect(host, host.state.operator_key, "user") as conn:
        result = await conn.run("tasks", check=True)
        return any(row["name"] == "background" for row in json.loads(result.stdout))


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_on_the_node_channel(live, data: bytes) -> None:
    live.call(_feed_node_channel(live.host, data))
    TRIED["frames"] += 1


@FUZZ
@given(kind=st.sampled_from(MESSAGE_TYPES), fields=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
       hello_first=st.booleans(), payload=st.binary(max_size=64))
def test_frames_with_wrong_types_or_out_of_order(live, kind, fields, hello_first, payload) -> None:
    frame = _frame({"type": kind, **fields}, payload)
    live.call(_feed_node_channel(live.host, (HELLO if hello_first else b"") + frame))
    TRIED["frames"] += 1


@FUZZ
@given(cut=st.integers(min_value=1, max_value=len(HELLO) - 1), header_len=st.integers(0, 2**32 - 1),
       payload_len=st.integers(0, 2**32 - 1))
def test_truncated_and_oversized_frames(live, cut, header_len, payload_len) -> None:
    live.call(_feed_node_channel(live.host, HELLO[:cut]))
    lying_prefix = b"CC\x01\x00" + struct.pack(">II", header_len, payload_len) + b"{}"
    live.call(_feed_node_channel(live.host, HELLO + lying_prefix))
    TRIED["frames"] += 2


async def _valid_out_of_order(host: Host) -> None:
    stray = Result("t1", 0, 1, np.ones(20, bool), None, np.zeros(20), 0.1)
    for data in (b"".join(bytes(p) for p in encode_message(stray)),  # a result before hello
                 HELLO + HELLO,  # hello twice
                 HELLO + b"".join(bytes(p) for p in encode_message(stray))):  # a result never assigned
        await _feed_node_channel(host, data)


def test_valid_frames_out_of_order(live) -> None:
    live.call(_valid_out_of_order(live.host))
    TRIED["frames"] += 3
    _check_alive(live)


async def _run_command(host: Host, command: str, stdin: bytes) -> int:
    async with await _connect(host, host.state.operator_key, "user") as conn:
        process = await conn.create_process(command, encoding=None)
        with contextlib.suppress(BrokenPipeError, asyncssh.Error, ConnectionError):
            process.stdin.write(stdin)
            process.stdin.write_eof()
        await asyncio.wait_for(process.wait_closed(), 30)
        return process.exit_status


@FUZZ
@given(command=st.text(max_size=60), stdin=st.binary(max_size=512))
def test_junk_user_commands(live, command: str, stdin: bytes) -> None:
    if command.split()[:1] in (["submit"], ["cancel"], ["kick"], ["drain"]):
        command = "x" + command  # never cancel the background task or touch the steady node by luck
    status = live.call(_run_command(live.host, command, stdin))
    assert status in (0, 1, 2)
    TRIED["commands"] += 1


def test_junk_task_documents_are_refused(live) -> None:
    for stdin in (b"", b"[]", b"null", b"{" * 100_000, json.dumps({"operation": "invert"}).encode(),
                  b"CC\x01\x00\x00\x00\x00\x02\x00\x00\x00\x00{}", b"\xff\xfe" * 1000):
        assert live.call(_run_command(live.host, "submit --detach", stdin)) == 2
        TRIED["commands"] += 1
    _check_alive(live)


def test_oversized_stdin_is_refused(live) -> None:
    big = b" " * (65 * 1024 * 1024)
    assert live.call(_run_command(live.host, "submit --detach", big), timeout=120) == 2
    TRIED["commands"] += 1


def test_a_lying_node_is_caught_quarantined_and_the_results_stay_right(live, tmp_path) -> None:
    host = live.host
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(tmp_path / "liar")
    host.frontend.registry.add(Role.NODE, key.export_public_key().decode(), "liar")
    document = {"name": "lied-to", "operation": "invert", "chunk_size": 5,
                "inputs": {"a": {"generate": {"count": 1000, "shape": [24, 24], "seed": 62}}}}

    def liar() -> FakeNode:
        return FakeNode(host.server.address, tmp_path / "liar", host.state.host_key.with_name("host_key.pub"),
                        name="liar", tamper=corrupt)

    first = liar()
    live.call(first.start())
    try:
        task_id = live.call(_submit(host, document))
        summary = live.call(host.frontend.wait(task_id), timeout=120)
        assert summary["state"] == "done"
        assert "liar" not in summary["items_per_node"]  # not one of its answers was accepted
        liar_row = next(r for r in host.frontend.node_rows() if r.name == "liar")
        assert liar_row.state == "quarantined" and liar_row.errors >= 1
        assert first.results_sent >= liar_row.errors
        check_npz(host.frontend.result_file(task_id), document, rtol=1e-8)
    finally:
        live.call(first.close())

    # Reconnecting does not wash the slate clean; an operator's release does.
    with pytest.raises(NodeRejected, match="quarantined"):
        live.call(liar().start())
    host.frontend.release("liar")
    again = liar()
    live.call(again.start())
    live.call(again.close())
