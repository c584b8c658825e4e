"""Where the shell runs a result's check: on the event loop once checks of its kind are known
to be quick, on a thread until then — the same for its own computation of a held result's
chunk; a trusted result (a link's own pool) is settled at once, unless it must be compared
— and a chain link counts all of an upstream task's chunks as one kind, though each is a
task of its own there."""

from __future__ import annotations

import types

import pytest

import nodes.hub_shell as hub_shell
from nodes.kernels import compute
from nodes.relay import Relay
from protocol.messages import Assign, Result
from protocol.taskfile import parse_task

TASK = parse_task({"name": "small", "operation": "det", "chunk_size": 10,
                   "inputs": {"a": {"generate": {"count": 40, "shape": [4, 4], "seed": 3}}}})


def result(chunk: int) -> Result:
    start = chunk * 10
    out = compute("det", {"a": TASK.input_items("a", start, start + 10)}, "full")
    return Result("t", chunk, 1, out.ok, out.result, out.norms, 0.001)


@pytest.fixture
def threaded(monkeypatch) -> list:
    """What the shell hands to a thread, in order; every check measured at 10 µs of CPU (a
    process's first calls into LAPACK can take longer than the 1 ms that decides)."""
    handed = []
    real = hub_shell.asyncio.to_thread

    async def counted(function, *args, **kwargs):
        handed.append(function)
        return await real(function, *args, **kwargs)

    monkeypatch.setattr(hub_shell.asyncio, "to_thread", counted)
    monkeypatch.setattr(hub_shell, "_timed", lambda check, *args, **kwargs: (check(*args, **kwargs), 1e-5))
    return handed


async def test_a_kind_of_check_goes_to_a_thread_once_then_stays_on_the_loop(threaded) -> None:
    shell = hub_shell.HubShell()
    for chunk in range(4):
        assert await shell._judge("one kind", TASK, chunk * 10, chunk * 10 + 10, result(chunk)) is None
    assert len(threaded) == 1  # the first, while its cost was unknown
    assert await shell._judge("another kind", TASK, 0, 10, result(0)) is None
    assert len(threaded) == 2


async def test_the_shell_computes_a_held_chunk_on_a_thread_until_it_knows_that_is_quick(threaded, monkeypatch) -> None:
    shell = hub_shell.HubShell()
    verdicts = []
    monkeypatch.setattr(shell, "face_check_target", lambda chunk: (TASK, chunk[1] * 10, chunk[1] * 10 + 10))
    monkeypatch.setattr(shell.hub, "held_checked", lambda *args, valid, **kwargs: verdicts.append((args[1], valid)) or [])
    for chunk in range(4):
        held = result(chunk)
        if chunk == 3:  # a lie: found on the loop as on a thread
            held.result[4] += 1.0
        shell._held[("t", chunk)] = (1, "n1", held)
        await shell.confirm_held("t", chunk, 1)
    assert verdicts == [(0, True), (1, True), (2, True), (3, False)]
    assert threaded == [hub_shell._timed]  # the first, while its cost was unknown


def test_a_link_counts_an_upstream_tasks_chunks_as_one_kind() -> None:
    generated = {"a": {"count": 40, "shape": [4, 4], "seed": 3, "distribution": "normal", "dtype": "float64"}}
    link = types.SimpleNamespace(_by_task={
        f"u{n}": Assign("tq3x7kd2m5vbn", n, 1, "det", n * 10, n * 10 + 10, "full", generated, {}) for n in range(3)})
    kinds = {Relay.face_check_kind(link, f"u{n}") for n in range(3)}  # type: ignore[arg-type]
    assert kinds == {"tq3x7kd2m5vbn"}
    assert Relay.face_check_kind(link, "gone") == "gone"  # type: ignore[arg-type]


def test_a_trusted_result_is_settled_at_once_unless_a_held_result_waits_to_be_compared(monkeypatch) -> None:
    shell = hub_shell.HubShell()
    settled = []
    monkeypatch.setattr(shell.hub, "wants", lambda *chunk: True)
    monkeypatch.setattr(shell, "settle", lambda node_id, chunk, result, **kwargs: settled.append((chunk, kwargs)))
    assert shell.settle_trusted("own", result(0))
    assert settled == [(("t", 0, 1), {"trusted": True})]  # no check, no task, no wait
    shell._held[("t", 1)] = (2, "n1", result(1))  # another node's result, held for a second computation
    assert not shell.settle_trusted("own", result(1))  # for ``result``, which compares the two
    assert len(settled) == 1
