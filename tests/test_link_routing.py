"""Where a chain link puts its upstream's chunks: while they are short, its own pool takes what
it has room for straight, as a plain node's pool does, and the hub has the rest, for the nodes
behind; while they are long, the hub has them all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from nodes.executor import Resized
from nodes.pool import ChunkDone, ChunkError, ChunkJob, compute_chunk
from nodes.relay import OWN_HUB_WINDOW_PER_SLOT, RELAY_ATTEMPTS, Relay, RelaySettings
from nodes.work import LocalWork, key_of
from protocol.messages import Assign, Failed, Result
from tests.conftest import wait_until
from tests.reference import expected_item

pytestmark = pytest.mark.timeout(30)

TASK = "tq3x7kd2m5vbn"
DOCUMENT = {"name": "t", "operation": "det", "inputs": {"a": {"generate": {"count": 1000, "shape": [4, 4], "seed": 3}}}}
GENERATED = {"a": {**DOCUMENT["inputs"]["a"]["generate"], "distribution": "normal", "dtype": "float64"}}


def assignment(chunk: int, operation: str = "det") -> Assign:
    return Assign(TASK, chunk, 1, operation, chunk * 10, chunk * 10 + 10, "full", GENERATED, {})


class HeldExecutor:
    """One slot that computes in this process, with the real kernels, when the test lets it."""

    slots = 1

    def __init__(self) -> None:
        self.submitted: list[list[ChunkJob]] = []
        self._answers: dict[int, asyncio.Future] = {}

    async def start(self, resized: Resized) -> None:
        pass

    def submit(self, jobs: Sequence[ChunkJob]) -> object:
        self.submitted.append(list(jobs))
        handle = len(self.submitted)
        self._answers[handle] = asyncio.get_running_loop().create_future()
        return handle

    def cancel(self, handle: object) -> bool:
        return False

    async def result(self, handle: object) -> list[ChunkDone | ChunkError]:
        return await self._answers[handle]

    def release(self) -> None:
        """Answer every group submitted so far."""
        for handle, answer in self._answers.items():
            if not answer.done():
                jobs = self.submitted[handle - 1]
                answer.set_result([compute_chunk(job) if job.operation == "det" else ChunkError("no such kernel")
                                   for job in jobs])

    async def close(self) -> None:
        pass


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[tuple[Relay, HeldExecutor, list[object]]]:
    """A started link with no nodes behind it, over a ``HeldExecutor`` that holds 2 chunks beyond its slot."""
    executor = HeldExecutor()
    relay = Relay(RelaySettings("A", ("127.0.0.1", 0), tmp_path / "link_host_key"), LocalWork(executor, prefetch=2))
    upstream: list[object] = []
    relay.attach(upstream.append)
    await relay.start()
    try:
        yield relay, executor, upstream
    finally:
        await relay.close()


async def settled(executor: HeldExecutor, upstream: list[object], count: int) -> None:
    """Let the executor answer until ``count`` messages went upstream."""
    async def answered() -> bool:
        while len([m for m in upstream if isinstance(m, (Result, Failed))]) < count:
            executor.release()
            await asyncio.sleep(0.01)
        return True
    await asyncio.wait_for(answered(), 10)


def measured_short(relay: Relay) -> None:
    """The own pool has found the task's chunks short: its window widens, and it takes chunks straight."""
    relay.local._measured(TASK, 0.0001)
    relay.local._resize_window()


def results(upstream: list[object]) -> dict[int, Result]:
    return {m.chunk: m for m in upstream if isinstance(m, Result)}


async def test_long_chunks_all_go_through_the_hub(link) -> None:
    relay, executor, upstream = link
    assert relay.window == relay.local.window == 3  # the own pool's, at the hub: one slot and two beyond
    for chunk in range(3):
        relay.assign(assignment(chunk))
    assert not relay._straight and len(relay._by_task) == 3
    await settled(executor, upstream, 3)
    assert sorted(results(upstream)) == [0, 1, 2]


async def test_the_own_pool_takes_short_chunks_it_has_room_for_straight_and_the_hub_the_rest(link) -> None:
    relay, executor, upstream = link
    measured_short(relay)
    room = relay.local.window
    assert room > 3
    assert relay.window == room + OWN_HUB_WINDOW_PER_SLOT * executor.slots  # what the upstream is told
    for chunk in range(room + 3):
        relay.assign(assignment(chunk))
    assert sorted(key[1] for key in relay._straight) == list(range(room))
    assert len(relay._by_task) == 3  # through the hub: to the own pool too, as nobody else is there
    assert relay.held == room + 3
    await settled(executor, upstream, room + 3)
    answered = results(upstream)
    assert sorted(answered) == list(range(room + 3))
    for chunk, result in answered.items():
        assert result.computed_by == "" and result.ok.all()
        expected = [expected_item(DOCUMENT, i) for i in range(chunk * 10, chunk * 10 + 10)]
        np.testing.assert_allclose(result.result, expected)
    await wait_until(lambda: relay.held == 0, 5, "the link to forget what it answered")


async def test_what_the_hub_hands_the_own_pool_goes_before_what_it_took_straight(link) -> None:
    relay, executor, upstream = link
    measured_short(relay)
    for chunk in range(3):
        relay.assign(assignment(chunk))  # two computing (a job each), one queued
    relay._through_hub(assignment(3))  # as when the own pool is full
    executor.release()
    await wait_until(lambda: len(executor.submitted) >= 3, 5, "the next job")
    assert [job.start for job in executor.submitted[2]][:2] == [30, 20]


async def test_a_cancel_or_a_lost_upstream_reaches_the_chunks_taken_straight(link) -> None:
    relay, executor, upstream = link
    measured_short(relay)
    for chunk in range(3):
        relay.assign(assignment(chunk))  # 0 and 1 computing, 2 queued
    relay.cancel(key_of(assignment(2)))
    relay.cancel(key_of(assignment(0)))  # computing: it finishes, and nobody above wants it
    await settled(executor, upstream, 1)
    await asyncio.sleep(0.1)
    assert sorted(results(upstream)) == [1]
    assert [job.start for group in executor.submitted for job in group] == [0, 10]  # 2 never computed

    for chunk in range(3, 6):
        relay.assign(assignment(chunk))
    relay.upstream_lost()
    assert relay.held == 0
    executor.release()
    await asyncio.sleep(0.1)
    assert sorted(results(upstream)) == [1]


async def test_a_chunk_taken_straight_that_fails_gets_the_hubs_tries_before_it_is_failed_upstream(link) -> None:
    relay, executor, upstream = link
    measured_short(relay)
    relay.assign(assignment(0, operation="no-such-operation"))
    await settled(executor, upstream, 1)
    failed = [m for m in upstream if isinstance(m, Failed)]
    assert [key_of(m) for m in failed] == [key_of(assignment(0))]
    assert "no such kernel" in failed[0].reason and failed[0].retryable
    tries = [job for group in executor.submitted for job in group]
    assert len(tries) == 1 + RELAY_ATTEMPTS  # straight, then the hub's tries (on the own pool: nobody is behind)
    await wait_until(lambda: relay.held == 0, 5, "the link to forget the chunk")
