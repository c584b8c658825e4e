"""Protocol versions: a version-1 node keeps working; an unknown version is refused by name."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from console.engine.host import Host
from protocol.messages import (
    PROTOCOL_VERSION, SUPPORTED_VERSIONS, Assign, Error, Hello, MessageReader, Reject, Result, Welcome,
    encode_message,
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
