"""Protocol versions: a version-1 node keeps working; an unknown version is refused by name."""

from __future__ import annotations

import asyncio

import asyncssh
import numpy as np
import pytest

from console.engine.host import Host
from protocol.batching import join, split
from protocol.messages import (
    PROTOCOL_VERSION, SUPPORTED_VERSIONS, Assign, Assigns, Error, Hello, MessageReader, Reject, Result, Results,
    Welcome, encode_message,
)
from protocol.taskfile import parse_task
from tests.fake_node import _compute

pytestmark = pytest.mark.timeout(60)


class Wire:
    """A raw node channel: hello in, messages out."""

    def __init__(self, process: asyncssh.SSHClientProcess) -> None:
        self.process = process
        self.reader = MessageReader()

    def send(self, message: object) -> None:
        for part in encode_message(message):
            self.process.stdin.write(bytes(part))

    async def next(self) -> object | None:
        while (message := self.reader.next_message()) is None:
            data = await self.process.stdout.read(1 << 20)
            if not data:
                return None
            self.reader.feed(data)
        return message


async def _session(host: Host, hello: Hello):
    conn = await asyncssh.connect(*host.server.address, username="node", client_keys=[str(host.state.node_key)],
                                  known_hosts=None, config=None, agent_path=None, gss_host=None)
    wire = Wire(await conn.create_process(subsystem="chainconsole-node", encoding=None))
    wire.send(hello)
    return conn, wire, await asyncio.wait_for(wire.next(), 10)


async def test_an_unknown_version_is_refused_naming_the_versions_spoken(host: Host) -> None:
    conn, _, answer = await _session(host, Hello(PROTOCOL_VERSION + 1, "future", 1, 2))
    conn.close()
    assert isinstance(answer, Reject) and answer.protocol_version == PROTOCOL_VERSION
    assert f"versions {', '.join(map(str, SUPPORTED_VERSIONS))}" in answer.reason


async def test_a_version_1_node_is_welcomed_in_version_1_and_computes(host: Host) -> None:
    conn, wire, welcome = await _session(host, Hello(1, "old", 1, 2))
    try:
        assert isinstance(welcome, Welcome) and welcome.protocol_version == 1
        task_id = await host.frontend.submit(parse_task({"name": "v1", "operation": "det", "chunk_size": 4, "inputs": {
            "a": {"generate": {"count": 8, "shape": [3, 3], "seed": 5}}}}), "operator")
        answered = 0
        while answered < 2:  # two chunks of four
            message = await asyncio.wait_for(wire.next(), 10)
            assert not isinstance(message, Error), message
            if isinstance(message, Assign):
                wire.send(_compute(message))
                answered += 1
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 10)
        assert summary["state"] == "done" and summary["items_per_node"] == {"old": 8}
    finally:
        conn.close()


async def test_a_direct_node_may_not_claim_a_path(host: Host) -> None:
    conn, _, answer = await _session(host, Hello(PROTOCOL_VERSION, "sneak", 1, 2, via=("elsewhere",)))
    conn.close()
    assert isinstance(answer, Reject) and "via" in answer.reason


SHORT_CHUNKS = {"name": "short", "operation": "det", "chunk_size": 2, "inputs": {
    "a": {"generate": {"count": 40, "shape": [3, 3], "seed": 11}}}}


async def _answer_all(host: Host, wire: Wire, chunks: int, *, batch: bool) -> list[object]:
    """Compute every chunk assigned until ``chunks`` are answered; return the frames received."""
    frames, answered = [], 0
    while answered < chunks:
        frame = await asyncio.wait_for(wire.next(), 10)
        assert not isinstance(frame, Error), frame
        frames.append(frame)
        results = [_compute(m) for m in split(frame) if isinstance(m, Assign)]
        for message in join(results) if batch else results:
            wire.send(message)
        answered += len(results)
    return frames


async def test_a_version_4_node_gets_several_chunks_per_frame_and_may_answer_in_one(host: Host) -> None:
    conn, wire, welcome = await _session(host, Hello(4, "batched", 1, 12))
    try:
        assert isinstance(welcome, Welcome) and welcome.protocol_version == 4
        task = parse_task(SHORT_CHUNKS)
        task_id = await host.frontend.submit(task, "operator")
        frames = await _answer_all(host, wire, 20, batch=True)
        assert any(isinstance(f, Assigns) and len(f.chunks) > 1 for f in frames)  # the window's first fill
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 10)
        assert summary["state"] == "done" and summary["items_per_node"] == {"batched": 40}
        with np.load(host.frontend.result_file(task_id)) as data:
            assert np.allclose(data["result"], np.linalg.det(task.input_items("a", 0, 40)))
    finally:
        conn.close()


async def test_a_version_3_node_gets_single_assignments_and_may_not_send_a_batch(host: Host) -> None:
    conn, wire, welcome = await _session(host, Hello(3, "single", 1, 12))
    try:
        assert isinstance(welcome, Welcome) and welcome.protocol_version == 3
        await host.frontend.submit(parse_task(SHORT_CHUNKS), "operator")
        first = await asyncio.wait_for(wire.next(), 10)
        held = [first] + [await asyncio.wait_for(wire.next(), 10) for _ in range(11)]
        assert all(isinstance(m, Assign) for m in held)
        wire.send(Results.of([_compute(m) for m in held[:2]]))
        answer = await asyncio.wait_for(wire.next(), 10)
        while isinstance(answer, Assign):
            answer = await asyncio.wait_for(wire.next(), 10)
        assert isinstance(answer, Error) and "results needs protocol version 4" in answer.message
    finally:
        conn.close()


async def test_the_node_says_hello_again_in_version_3_to_an_older_front_end(host: Host, monkeypatch) -> None:
    import nodes.node_session as node_session
    from console.engine.host import start_local_node
    from tests.conftest import wait_until

    monkeypatch.setattr(node_session, "SUPPORTED_VERSIONS", (1, 2, 3))
    monkeypatch.setattr(node_session, "PROTOCOL_VERSION", 3)
    host.nodes.append(start_local_node(host.state, host.server.address, "falls-back"))
    await wait_until(lambda: any(r.name == "falls-back" for r in host.frontend.node_rows()), what="the node to join")
    (record,) = host.frontend.hub.nodes.values()
    assert record.protocol_version == 3
    task_id = await host.frontend.submit(parse_task(SHORT_CHUNKS), "operator")
    summary = await asyncio.wait_for(host.frontend.wait(task_id), 30)
    assert summary["state"] == "done" and summary["items_per_node"] == {"falls-back": 40}


def test_an_empty_computed_by_is_left_out_of_the_header() -> None:
    import numpy as np

    from protocol.frames import FrameDecoder

    plain = Result("t1", 0, 1, np.ones(2, bool), None, np.zeros(2), 0.1)
    stamped = Result("t1", 0, 1, np.ones(2, bool), None, np.zeros(2), 0.1, computed_by="b")
    headers = []
    for message in (plain, stamped):
        decoder = FrameDecoder()
        decoder.feed(b"".join(bytes(p) for p in encode_message(message)))
        headers.append(decoder.next_frame().header)
    assert "computed_by" not in headers[0] and headers[1]["computed_by"] == "b"
