"""Drain, kick, poison chunks and stragglers, end to end with real and scripted nodes."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from console.engine.host import Host
from protocol.taskfile import parse_task
from tests.conftest import wait_until
from tests.fake_node import FakeNode, fail_chunk_zero, never_answer
from tests.reference import check_npz, expected_item
from tests.test_clients import _cli

pytestmark = pytest.mark.timeout(120)


def _task(count: int, seed: int, chunk: int = 10, n: int = 64) -> dict:
    return {"name": f"ctl-{seed}", "operation": "invert", "chunk_size": chunk, "return": "norms",
            "inputs": {"a": {"generate": {"count": count, "shape": [n, n], "seed": seed}}}}


def _fake(host: Host, name: str, tamper) -> FakeNode:
    return FakeNode(host.server.address, host.state.node_key, host.state.host_key.with_name("host_key.pub"),
                    name=name, tamper=tamper)


def _state(host: Host) -> list[str]:
    return ["--state-dir", str(host.state.root)]


async def test_drain_and_kick_from_the_cli(host: Host, nodes) -> None:
    drained = nodes("drained")
    kicked = nodes("kicked")
    nodes("stays")
    document = _task(6000, 81)
    task_id = await host.frontend.submit(parse_task(document), "operator")
    await wait_until(lambda: all(r.items_done > 0 for r in host.frontend.node_rows()) and
                     len(host.frontend.node_rows()) == 3, timeout=60, what="three busy nodes")

    status, out, err = await _cli("drain", "drained", *_state(host))
    assert status == 0, err
    assert await asyncio.to_thread(drained.wait, 30) == 0  # finished what it held, said bye, exited 0
    status, out, err = await _cli("kick", "kicked", *_state(host))
    assert status == 0, err
    assert await asyncio.to_thread(kicked.wait, 30) == 0  # told to leave: it does not come back

    summary = await asyncio.wait_for(host.frontend.wait(task_id), 100)
    assert summary["state"] == "done" and summary["ok_items"] == 6000
    kinds = [(e.kind, e.node_id) for e in host.frontend.events]
    assert ("drain", "drained") in kinds and ("kick", "kicked") in kinds
    status, _, err = await _cli("kick", "nobody", *_state(host))
    assert status == 2 and "no connected node" in err


async def test_a_poison_chunk_fails_alone_and_the_task_ends_failed(host: Host, tmp_path) -> None:
    fakes = [_fake(host, f"fragile{i}", fail_chunk_zero) for i in (1, 2)]
    for fake in fakes:
        await fake.start()
    try:
        document = {**_task(200, 82, chunk=20), "max_attempts": 3}
        (tmp_path / "poison.json").write_text(json.dumps(document))
        status, out, err = await _cli("submit", str(tmp_path / "poison.json"), "--wait", "--json",
                                      "-o", str(tmp_path / "out.npz"), *_state(host))
        assert status == 1, err  # ended with failed items
        summary = json.loads(out)
        assert summary["state"] == "failed" and summary["failed_items"] == 20 and summary["ok_items"] == 180
        with np.load(tmp_path / "out.npz") as data:
            assert not data["ok"][:20].any() and np.isnan(data["norms"][:20]).all()
            assert data["ok"][20:].all()
            for i in range(20, 200, 17):
                np.testing.assert_allclose(data["norms"][i], np.linalg.norm(expected_item(document, i)), rtol=1e-7)
        abandoned = [e for e in host.frontend.events if e.kind == "abandon"]
        assert len(abandoned) == 1 and "simulated" in abandoned[0].message
    finally:
        for fake in fakes:
            await fake.close()


@pytest.mark.timeout(90)
async def test_an_overdue_chunk_is_reissued_and_the_first_answer_wins(host: Host, nodes) -> None:
    sitter = _fake(host, "sitter", never_answer)
    await sitter.start()
    try:
        document = {**_task(40, 83, chunk=10, n=16), "return": "full"}
        task_id = await host.frontend.submit(parse_task(document), "operator")
        await wait_until(lambda: any(r.name == "sitter" and r.in_flight > 0 for r in host.frontend.node_rows()),
                         what="the sitter to take chunks and sit on them")
        nodes("worker")
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 60)
        assert summary["state"] == "done" and summary["ok_items"] == 40
        assert set(summary["items_per_node"]) == {"worker"}
        assert any(e.kind == "requeue" and e.node_id == "sitter" for e in host.frontend.events)
        assert not any(e.kind == "lost" and e.node_id == "sitter" for e in host.frontend.events)
        check_npz(host.frontend.result_file(task_id), document, rtol=1e-8)
    finally:
        await sitter.close()
